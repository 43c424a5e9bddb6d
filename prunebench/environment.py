"""What a run records about where it ran: package versions, device, git commit."""

from __future__ import annotations

import logging
import platform
import subprocess
from pathlib import Path

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` if given ('cpu', 'cuda', 'cuda:1'), else CUDA when present, else CPU."""
    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown device {requested!r}: use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available here (torch "
                             f"{torch.__version__}, {torch.cuda.device_count()} GPUs visible): use --device cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {requested!r} is not supported: use cpu, cuda or cuda:N")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """The GPU's name; on CPU the architecture, the instruction set torch's kernels use (AVX2, AVX512: results
    and speed move with it) and the thread count, e.g. 'cpu (x86_64, AVX512, 2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    machine = platform.processor() or platform.machine()
    return f"cpu ({machine}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


def git_commit() -> str | None:
    """The commit of the source tree this package runs from (editable install), else of the working
    directory (a non-editable install run from a checkout), with '-dirty' for uncommitted changes."""
    package_root = Path(__file__).resolve().parent.parent
    root = package_root if (package_root / ".git").exists() else Path.cwd()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}{'-dirty' if dirty else ''}" if commit else None


def environment(device: torch.device) -> dict[str, str | None]:
    import numpy
    import torchvision

    import prunebench

    return {
        "prunebench": prunebench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "device": device_name(device),
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }


def _not_cuda_home_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No CUDA runtime is found")


def quiet_cuda_home_notice() -> None:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." (logged when torch.compile loads its C++
    toolchain on a CUDA build of torch without a GPU): on a CPU run it is noise in the middle of the progress
    bar. Every other message of that logger still shows."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if _not_cuda_home_notice not in logger.filters:
        logger.addFilter(_not_cuda_home_notice)
