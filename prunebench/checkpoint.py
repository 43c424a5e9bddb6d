"""Training checkpoints: what the harness saves at each evaluation so that a stopped run continues.

A checkpoint holds everything the next step depends on: the model's, the optimizer's and the method's
state (`Pruner.state_dict`), the random number generators (the global one, which noisy methods draw
from, and the data-order one with its position in the current epoch) and the harness's counters. A run
continued from one is bit-for-bit the run that was never stopped (on the same device and thread count;
`tests/test_resume.py` checks every method). Checkpoints live in a directory, by default beside the
result store (`<store>.checkpoints/<run_id>.pt`; a sweep over several machines puts them where every
worker sees them, `--checkpoint-dir`), are written atomically and are deleted when the run finishes.
Each also carries the run's record so far (its row and trajectory points, `prunebench.records`), so a
worker that takes up a run another worker left behind continues it without reading the store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunebench.errors import CheckpointError

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
    #: train_seconds, eval_seconds, last_point. Taken right after an evaluation, so the running loss sum is
    #: empty and no non-finite loss is pending (the evaluation would have raised): neither is stored.
    counters: dict[str, Any]
    phases: list[list[Any]]      #: [name, iterations, lr] of every phase: a checkpoint of another schedule is not used
    record: dict[str, Any] | None = None  #: the run's row and points so far (`records.snapshot`)


def checkpoint_path(directory: Path, run_id: str) -> Path:
    return Path(directory) / f"{run_id}.pt"


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write atomically (a stop while writing leaves the previous checkpoint intact)."""
    path = checkpoint_path(directory, checkpoint.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".pt.{os.getpid()}.tmp")  # two writers never share a temporary file
    torch.save({"format": FORMAT, **checkpoint.__dict__}, tmp)
    os.replace(tmp, path)
    return path


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
