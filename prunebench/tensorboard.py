"""Live TensorBoard logs of runs (`--tensorboard DIR` on `prunebench run` and `prunebench sweep`).

`TensorBoardObserver` is a harness `Observer`: at every evaluation point (an `Evaluation`) it writes its scalars
(`point_scalars`) at the point's step, and flushes, so a TensorBoard watching DIR shows the run live. Each
run writes its own directory, `DIR/<task>/<method>/seed<k>-<run_id>` (`run_log_dir`), so sweep workers
never share a file; the run's identity, hyperparameters and protocol are recorded once, at step 0, as a
text summary ("run") and as the HParams dashboard's session start.

A run that continues from its checkpoint (`Observer.resumed(step)`) appends a new event file to the same
directory and opens it with TensorBoard's purge marker at step + 1 (`SummaryWriter(purge_step=...)`): the
points after the checkpoint that the stopped process had already written are evaluated again, and
TensorBoard hides the stopped process's copies, so each step shows once. A run that starts over in a
directory that already has events (`--force`, a failed run run again) purges from step 1: every earlier
point is hidden. The step-0 record is written once per directory, by its first writer, never again.

torch's `SummaryWriter` needs the `tensorboard` package, the extra `prunebench[tensorboard]`;
`require_tensorboard` says how to install it (`MissingExtraError`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from prunebench.errors import MissingExtraError
from prunebench.evaluation import Evaluation
from prunebench.observers import Observer
from prunebench.request import RunSpec

#: How to get the writer's dependency, named in the error when it is missing.
INSTALL_HINT = "pip install 'prunebench[tensorboard]'"


def require_tensorboard() -> type:
    """torch's `SummaryWriter` class, or `MissingExtraError` naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingExtraError(f"--tensorboard needs tensorboard: {INSTALL_HINT}") from None
    return SummaryWriter


def run_log_dir(root: Path | str, spec: RunSpec) -> Path:
    """`root/<task>/<method>/seed<k>-<run_id>`: readable, and unique per identity (the run_id)."""
    return Path(root) / spec.task.name / spec.method / f"seed{spec.seed}-{spec.run_id}"


def point_scalars(point: Evaluation) -> dict[str, float]:
    """The scalars of one evaluation point, by tag."""
    scalars = {"accuracy/top1": point.accuracy}
    for value, tag in ((point.top5, "accuracy/top5"), (point.trained_accuracy, "accuracy/trained")):
        if value is not None:
            scalars[tag] = value
    scalars["compression/weights"] = point.compression
    scalars["compression/all_parameters"] = point.compression_all
    for layer, (nonzero, total) in point.per_layer.items():
        scalars[f"kept/{layer}"] = nonzero / total
    scalars["loss/train"] = point.loss
    scalars["time/train_seconds"] = point.train_seconds
    if point.eval_seconds is not None:
        scalars["time/eval_seconds"] = point.eval_seconds
    return {tag: float(value) for tag, value in scalars.items()}


def run_hparams(spec: RunSpec) -> dict[str, Any]:
    """The run's identity, hyperparameters and protocol as flat HParams values (numbers, strings, bools)."""
    values: dict[str, Any] = {"run_id": spec.run_id, "task": spec.task.name, "method": spec.method,
                              "seed": spec.seed, "budget": spec.budget}
    values.update({f"hp/{k}": v for k, v in spec.hparams.as_dict().items()})
    values.update({f"protocol/{f.name}": getattr(spec.protocol, f.name) for f in dataclasses.fields(spec.protocol)})
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in values.items() if v is not None}


def _run_text(spec: RunSpec) -> str:
    rows = [("run_id", spec.run_id), ("task", spec.task.name), ("method", spec.method), ("seed", spec.seed),
            ("budget", spec.budget), ("hyperparameters", json.dumps(spec.hparams.as_dict())),
            ("protocol", json.dumps(dataclasses.asdict(spec.protocol)))]
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | `{value}` |" for key, value in rows)


def _has_events(path: Path) -> bool:
    return path.is_dir() and any(path.glob("events.out.tfevents.*"))


class TensorBoardObserver(Observer):
    """Writes each evaluation point of a run under `root` (see the module docstring). One instance may
    observe several runs one after another (a sweep in one process): each `start` opens that run's writer."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.writer_class = require_tensorboard()
        self.writer: Any = None
        self.spec: RunSpec | None = None
        self.resumed_at: int | None = None

    def start(self, spec: RunSpec, total_steps: int) -> None:
        self.end()
        self.spec, self.resumed_at = spec, None

    def resumed(self, step: int) -> None:
        self.resumed_at = step

    def _open(self) -> Any:
        """The writer, made at the run's first point (after `resumed`, which the harness calls after `start`)."""
        if self.writer is None:
            assert self.spec is not None, "evaluation before start"
            path = run_log_dir(self.root, self.spec)
            existing = _has_events(path)
            # Resumed: the points after the checkpoint are evaluated again. Started over: hide the earlier
            # attempt's points (from step 1: the step-0 record stays).
            purge = self.resumed_at + 1 if self.resumed_at is not None else (1 if existing else None)
            self.writer = self.writer_class(log_dir=str(path), purge_step=purge)
            if not existing:
                self._record_run(self.spec)
        return self.writer

    def _record_run(self, spec: RunSpec) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.writer.add_text("run", _run_text(spec), 0)
        _experiment, session_start, _session_end = hparams(run_hparams(spec), {})
        self.writer.file_writer.add_summary(session_start, 0)

    def evaluation(self, point: Evaluation) -> None:
        writer = self._open()
        for tag, value in point_scalars(point).items():
            writer.add_scalar(tag, value, point.step)
        writer.flush()

    def end(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
