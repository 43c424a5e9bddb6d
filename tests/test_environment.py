"""What a run records about where it ran, and the torch notice a CPU run must not show."""

from __future__ import annotations

import logging
import re

import torch

from prunebench.environment import device_name, quiet_cuda_home_notice


def test_a_cpu_device_names_the_instruction_set_and_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        name = device_name(torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    capability = torch.backends.cpu.get_cpu_capability()
    assert re.fullmatch(rf"cpu \(.+, {re.escape(capability)}, 1 threads\)", name), name


def test_the_cuda_home_notice_is_dropped_and_nothing_else(caplog):
    logger = logging.getLogger("torch.utils.cpp_extension")
    quiet_cuda_home_notice()
    quiet_cuda_home_notice()  # idempotent: one filter
    assert len(logger.filters) == len(set(map(id, logger.filters)))
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("Error checking compiler version for %s", "c++")
    assert [r.getMessage() for r in caplog.records] == ["Error checking compiler version for c++"]
