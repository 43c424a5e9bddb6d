"""A sweep worker: trains one planned run and returns its record; it never opens the SQLite store.

The same function serves every executor: a local worker process (`python -m prunebench.running.worker JOB
OUT`), a Ray task and a submitit job (`prunebench.running.executors`). A `RunJob` carries only plain values
(a `RunRequest` and where it trains), so it pickles to any machine that has prunebench installed; the
worker resolves the request there and checks that it has the identity the driver planned (a node with
another version of the code would otherwise store a different run under the planned name).

A run whose checkpoint is in the shared checkpoint directory continues from it, whichever worker left
it there: the checkpoint carries the run's record so far. A finished run's record is also kept there
(`finished_record_path`) until the driver has stored it, so a worker asked for it again (a requeued
Slurm job, a Ray task re-executed after its result was lost with its node) returns it instead of
training again.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunebench import harness
from prunebench.checkpoint import load_checkpoint
from prunebench.environment import quiet_cuda_home_notice
from prunebench.errors import CheckpointError
from prunebench.records import RecordingStore, RunRecord
from prunebench.request import RunRequest

#: Set by the local executor to its own pid: the worker asks Linux for SIGTERM when that process dies.
PARENT_PID_ENV = "PRUNEBENCH_WORKER_PARENT"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_parent() -> bool:
    """When started by a local sweep driver (`PARENT_PID_ENV`), have Linux send this process SIGTERM when
    the driver dies, even by SIGKILL: the harness then stores the run as interrupted and keeps its
    checkpoint, where an orphan would go on training a run that the next sweep starts again beside it.
    False when the driver is already gone (the run must not start); True otherwise, or off Linux."""
    parent = os.environ.get(PARENT_PID_ENV)
    if parent is None or not sys.platform.startswith("linux"):
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return True  # no such guard here: the driver's own SIGTERM handling still stops this worker
    return os.getppid() == int(parent)  # it died before prctl: the signal will never come


@dataclass
class RunJob:
    """One run for a worker: the request, the run_id the driver planned, and where it trains (paths must be
    visible to the worker)."""

    run_id: str
    label: str
    request: RunRequest
    data_dir: str
    checkpoints: str
    device: str | None = None
    allow_unverified_data: bool = False
    checkpoint_seconds: float | None = harness.CHECKPOINT_SECONDS
    threads: int | None = None            #: torch CPU threads for the run (None: as the process has them)
    tensorboard: str | None = None        #: --tensorboard: root of the run's TensorBoard log directory
    extra: dict[str, Any] = field(default_factory=dict)


def finished_record_path(checkpoints: Path | str, run_id: str) -> Path:
    return Path(checkpoints) / f"{run_id}.finished.pkl"


def discard_finished_record(job: RunJob) -> None:
    """The driver has stored the run: its kept record is no longer needed."""
    finished_record_path(job.checkpoints, job.run_id).unlink(missing_ok=True)


def _keep(record: RunRecord, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(record))
    os.replace(tmp, path)


class WorkerError(RuntimeError):
    """The run could not start (data missing, another code version): nothing to record."""


def execute(job: RunJob) -> RunRecord:
    """Train `job` and return its record (finished, failed or interrupted). Raises `WorkerError` when
    the run could not start at all."""
    if job.threads:
        torch.set_num_threads(job.threads)
    spec = job.request.resolve()
    if spec.run_id != job.run_id:
        raise WorkerError(f"this worker resolves {job.label} to identity {spec.run_id}, the driver planned "
                          f"{job.run_id}: is the same prunebench version installed on every node?")
    kept = finished_record_path(job.checkpoints, job.run_id)
    if kept.exists():
        return pickle.loads(kept.read_bytes())
    observer = None
    if job.tensorboard:
        from prunebench.tensorboard import MissingExtraError, TensorBoardObserver

        try:
            observer = TensorBoardObserver(job.tensorboard)
        except MissingExtraError as exc:
            raise WorkerError(str(exc)) from None
    store = RecordingStore()
    try:
        checkpoint = load_checkpoint(Path(job.checkpoints), job.run_id)
    except CheckpointError as exc:  # a damaged file: the run cannot start, say so in one line
        raise WorkerError(str(exc)) from None
    if checkpoint is not None and checkpoint.record:
        store.restore(checkpoint.record)  # another worker's run: continue it
    try:
        harness.train(spec, store, Path(job.data_dir), device=job.device, checkpoints=Path(job.checkpoints),
                      checkpoint_seconds=job.checkpoint_seconds, allow_unverified_data=job.allow_unverified_data,
                      observer=observer)
    except KeyboardInterrupt:
        if store.status(job.run_id) is None:
            raise
    except Exception as exc:  # noqa: BLE001 - stored as the run's failure when the run had started
        if store.status(job.run_id) is None:
            raise WorkerError(f"{type(exc).__name__}: {exc}") from exc
    record = store.record(job.run_id)
    if record.status == "finished":
        _keep(record, kept)
    return record


def execute_all(jobs: list[RunJob]) -> list[RunRecord | str]:
    """Several short runs one after another in one worker (packing); a run that cannot start gives its
    error text in its place and the next run goes on."""
    out: list[RunRecord | str] = []
    for job in jobs:
        try:
            out.append(execute(job))
        except WorkerError as exc:
            out.append(str(exc))
    return out


def main(argv: list[str]) -> int:
    """`python -m prunebench.running.worker JOB.pkl OUT.pkl`: the local executor's worker process. Exit code 0
    with a record, 130 when the run was interrupted (SIGTERM), 3 when it could not start (the error in
    OUT)."""
    job_path, out_path = Path(argv[0]), Path(argv[1])
    quiet_cuda_home_notice()  # its stderr is the sweep's terminal
    job: RunJob = pickle.loads(job_path.read_bytes())
    if not stop_with_parent():
        return 3  # the sweep that started this worker is gone: nobody would store the run
    code = 0
    try:
        result: RunRecord | str = execute(job)
        if result.status == "interrupted":
            code = 130
    except (WorkerError, KeyboardInterrupt) as exc:
        result, code = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyboardInterrupt) else str(exc), 3
    tmp = out_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(result))
    os.replace(tmp, out_path)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
