"""Training checkpoints: what the harness saves at each evaluation so that a stopped run continues.

A checkpoint holds everything the next step depends on: the model's, the optimizer's and the method's
state (`Pruner.state_dict`), the random number generators (the global one, which noisy methods draw
from, and the data-order one with its position in the current epoch) and the harness's counters. A run
continued from one is bit-for-bit the run that was never stopped (on the same device and thread count;
`tests/test_resume.py` checks every method). Checkpoints live in a directory, by default beside the
result store (`<store>.checkpoints/<run_id>.pt`; a sweep over several machines puts them where every
worker sees them, `--checkpoint-dir`), are written atomically and are deleted when the run finishes.
Each also carries the run's record so far (its row and trajectory points, `prunebench.records`), so a
worker that takes up a run another worker left behind continues it without reading the store. The harness
takes them through a `Checkpointer`, which keeps that record in memory as points are added.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunebench.errors import AGAIN, CheckpointError, disk_full, is_disk_full
from prunebench.records import snapshot

FORMAT = 1


def checkpoint_dir(store_path: Path) -> Path:
    """`runs.sqlite` -> `runs.checkpoints/` (ignored by git: `*.checkpoints/`)."""
    return store_path.with_name(store_path.stem + ".checkpoints")


@dataclass
class Checkpoint:
    run_id: str
    step: int                    #: global optimizer steps done
    phase_index: int             #: the phase that step belongs to
    phase_steps: int             #: steps of that phase done
    model: dict[str, Any]
    optimizer: dict[str, Any]
    pruner: dict[str, Any]
    rng: dict[str, Any]          #: "torch", "cuda" (or None), "data" (the data-order generator and position)
    #: train_seconds, eval_seconds. Taken right after an evaluation, so the running loss sum is empty and no
    #: non-finite loss is pending (the evaluation would have raised): neither is stored.
    counters: dict[str, Any]
    phases: list[list[Any]]      #: [name, iterations, lr] of every phase: a checkpoint of another schedule is not used
    record: dict[str, Any] | None = None  #: the run's row and points so far (`records.snapshot`)


def checkpoint_path(directory: Path, run_id: str) -> Path:
    return Path(directory) / f"{run_id}.pt"


def save_atomically(blob: Any, path: Path, what: str, then: str = AGAIN) -> Path:
    """`torch.save(blob)` to `path` atomically: a stop while writing leaves the previous file intact. A full
    disk raises `DiskFullError` (naming the file, `what` it is and `then` what to do) with the previous file
    kept and the partial one removed. (The blob is serialised in memory first: torch.save writing to a full
    disk reports an iostream error, not ENOSPC.)"""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two writers never share a temporary file
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, what, then, buffer.getbuffer().nbytes, exc) from None
        raise
    return path


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write atomically (`save_atomically`): a full disk keeps the previous checkpoint, which the same command
    continues from once there is room."""
    path = checkpoint_path(directory, checkpoint.run_id)
    then = "it continues from its last checkpoint, kept" if path.exists() else "it had no checkpoint yet"
    return save_atomically({"format": FORMAT, **checkpoint.__dict__}, path, "the checkpoint", f"{AGAIN} ({then})")


def load_checkpoint(directory: Path, run_id: str) -> Checkpoint | None:
    """The run's checkpoint, or None when there is none (or it is of another format or run). Raises
    `CheckpointError` when the file is there but unreadable: continuing silently from scratch would hide
    the loss, and guessing is worse, so the user decides (`--force` starts over)."""
    path = checkpoint_path(directory, run_id)
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged file
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {reason}); run with --force "
                              "to start this run over, or delete the file") from exc
    if not isinstance(blob, dict):
        raise CheckpointError(f"checkpoint {path} is not a prunebench checkpoint; run with --force to start this "
                              "run over, or delete the file")
    if blob.pop("format", None) != FORMAT or blob.get("run_id") != run_id:
        return None
    return Checkpoint(**blob)


def delete_checkpoint(directory: Path, run_id: str) -> None:
    checkpoint_path(directory, run_id).unlink(missing_ok=True)


class Checkpointer:
    """One run's checkpoints in `directory`, of its `model`, `pruner` (the method's state), data `source` and
    random number generators. The `writer` (rank 0) alone saves (`save`: at an evaluation, once `seconds` of
    wall-clock passed since the last; 0: at every evaluation; None: never) and deletes them. The record a
    checkpoint carries is taken from the store once (`follow`, when the run starts or continues) and then
    kept in memory as points are added (`add`), so checkpointing never reads the store back."""

    def __init__(self, directory: Path, run_id: str, seconds: float | None, writer: bool, *, model: Any, pruner: Any,
                 source: Any, device: torch.device, phases: list[list[Any]]) -> None:
        self.directory, self.run_id, self.seconds, self.writer = Path(directory), run_id, seconds, writer
        self.saves = writer and seconds is not None
        self.model, self.pruner, self.source, self.device, self.phases = model, pruner, source, device, phases
        self.record: dict[str, Any] = {"run": {}, "points": []}
        self.last = 0.0

    def load(self, resume: bool) -> Checkpoint | None:
        """The run's checkpoint to continue from, when `resume` and it is of this run's phases ([name, iterations,
        lr] each; the method's schedule may have changed since); any other is deleted: the run starts again."""
        checkpoint = load_checkpoint(self.directory, self.run_id) if resume else None
        if checkpoint is None or checkpoint.phases != self.phases:
            self.delete()
            return None
        return checkpoint

    def delete(self) -> None:
        if self.writer:
            delete_checkpoint(self.directory, self.run_id)

    def restore(self, checkpoint: Checkpoint) -> None:
        """The model's, the method's and the data order's state, and the random number generators."""
        self.model.load_state_dict(checkpoint.model)
        self.pruner.load_state_dict(checkpoint.pruner)
        self.source.load_state_dict(checkpoint.rng["data"])
        torch.set_rng_state(checkpoint.rng["torch"])
        if self.device.type == "cuda" and checkpoint.rng["cuda"] is not None:
            torch.cuda.set_rng_state(checkpoint.rng["cuda"], self.device)

    def follow(self, store: Any) -> None:
        """Take the run's record so far from `store` (a `ResultStore` or `RecordingStore`) as it starts or
        continues; the wall-clock to the first checkpoint starts now."""
        if self.saves:
            self.record = snapshot(store, self.run_id)
        self.last = time.perf_counter()

    def add(self, row: dict[str, Any]) -> None:
        """A trajectory row the store was given."""
        if self.saves:
            self.record["points"].append(row)

    def save(self, step: int, phase_index: int, phase_steps: int, counters: dict[str, Any], optimizer: Any) -> None:
        """Checkpoint after `step` (`phase_steps` into phase `phase_index`) when it is time to."""
        if not self.saves or time.perf_counter() - self.last < self.seconds:
            return
        rng = {"torch": torch.get_rng_state(), "data": self.source.state_dict(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        save_checkpoint(self.directory, Checkpoint(
            self.run_id, step, phase_index, phase_steps, self.model.state_dict(), optimizer.state_dict(),
            self.pruner.state_dict(), rng, counters, self.phases, self.record))
        self.last = time.perf_counter()
