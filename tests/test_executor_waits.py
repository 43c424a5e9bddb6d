"""What a sweep waits for: `--executor ray --ray-address`, a cluster that does not answer is a one-line error within
`--ray-connect-timeout` (issue 32: an address where nothing listens used to hang for ever, deaf to SIGTERM),
and the sweep says what it is waiting for. The sweeps run as subprocesses: a real SIGTERM, and no Ray
session left in the test process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prunebench.errors import UserError
from prunebench.running.executors import _queue_line, ray_endpoint, wait_for_endpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def closed_port() -> int:
    """A local port where nothing listens (bound once to find it free, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def deaf_port() -> Iterator[int]:
    """A local port that accepts TCP connections (the kernel's backlog) but speaks no Ray."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def sweep_command(tmp_path: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prunebench", "sweep", "--methods", "magnitude", "--tasks", "xor",
            "--iterations", "50", "--db", str(tmp_path / "ray.sqlite"), "--data-dir", str(tmp_path),
            "--executor", "ray", "--ray-address", address, *extra]


def no_ray_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"COLUMNS": "400"}


@pytest.mark.parametrize(("address", "endpoint"), [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)),
    ("ray://head.cluster:10001", ("head.cluster", 10001)),
    ("ray://head", ("head", 10001)),
    ("[::1]:6380", ("::1", 6380)),
    ("auto", None),
    ("local", None),
])
def test_ray_endpoint(address, endpoint):
    assert ray_endpoint(address) == endpoint


@pytest.mark.parametrize("address", ["head", "head:port", ":6379"])
def test_malformed_ray_address(address):
    with pytest.raises(UserError, match="is not HOST:PORT"):
        ray_endpoint(address)


def test_wait_for_endpoint_gives_up_after_its_timeout(closed_port):
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"no Ray cluster answers at 127.0.0.1:{closed_port} \(Connection refused "
                                        r"for 1.5 s\)"):
        wait_for_endpoint(f"127.0.0.1:{closed_port}", 1.5)
    assert 1.5 <= time.monotonic() - start < 5


def test_wait_for_endpoint_returns_once_something_listens(deaf_port):
    start = time.monotonic()
    wait_for_endpoint(f"127.0.0.1:{deaf_port}", 30)
    assert time.monotonic() - start < 5


def refused_sweep(tmp_path, address: str, timeout: str) -> tuple[str, str]:
    """Run a Ray sweep at `address` that must fail as a usage of the user's setup: (its output, its last line)."""
    pytest.importorskip("ray")
    start = time.monotonic()
    done = subprocess.run(sweep_command(tmp_path, address, "--ray-connect-timeout", timeout),
                          capture_output=True, text=True, timeout=120, env=no_ray_env())
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - start < 60
    assert "Traceback" not in done.stderr
    return done.stdout + done.stderr, done.stderr.strip().splitlines()[-1]


def test_address_where_nothing_listens_is_one_line_within_the_timeout(closed_port, tmp_path):
    output, last = refused_sweep(tmp_path, f"127.0.0.1:{closed_port}", "3")
    assert f"connecting to Ray at 127.0.0.1:{closed_port}" in output  # what it waits for (item 4)
    assert last.startswith(f"error: no Ray cluster answers at 127.0.0.1:{closed_port} (Connection refused for 3 s)")
    assert "ray start --head" in last


def test_address_that_is_no_ray_head_times_out(deaf_port, tmp_path):
    _output, last = refused_sweep(tmp_path, f"127.0.0.1:{deaf_port}", "4")
    assert last.startswith(f"error: no Ray cluster answers at 127.0.0.1:{deaf_port} (it accepts connections but no "
                           "Ray head answered in 4 s)")


def test_sigterm_stops_a_sweep_waiting_for_its_cluster(closed_port, tmp_path):
    pytest.importorskip("ray")
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(sweep_command(tmp_path, f"127.0.0.1:{closed_port}"), stdout=out,
                                stderr=subprocess.STDOUT, env=no_ray_env())
        try:
            deadline = time.monotonic() + 60
            while "connecting to Ray" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "connecting to Ray" in log.read_text()
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=15)  # the default wait is 30 s: it stopped on the signal
        finally:
            if proc.poll() is None:
                proc.kill()
    assert returncode == 130, log.read_text()
    assert "Traceback" not in log.read_text()


class FakeJob:
    def __init__(self, job_id: str, state: str) -> None:
        self.job_id, self.state = job_id, state


def test_submitit_queue_line():
    """What a sweep shows while its submitit jobs wait: Slurm's queue, or the local slots."""
    handles = [FakeJob("4711_0", "PENDING"), FakeJob("4711_1", "RUNNING"), FakeJob("4711_2", "PENDING"),
               FakeJob("4712_0", "REQUEUED")]
    assert _queue_line("slurm", handles, 0) == "Slurm: 3 jobs queued, 1 running (job 4711, 4712)"
    assert _queue_line("slurm", handles[:2], 2) == "Slurm: 1 jobs queued, 1 running (job 4711), 2 to resubmit"
    local = [FakeJob("101", "RUNNING"), FakeJob("102", "RUNNING")]
    assert _queue_line("local", local, 3) == "submitit local: 2 jobs running, 3 waiting for a free slot"
