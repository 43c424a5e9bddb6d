"""Selection on validation, never on test: the rule that picks an evaluation point of a run by accuracy.

A rule that needs accuracy (a method's best-epoch or plateau rule, a calibration towards a published loss,
early stopping) reads the accuracy on the validation split held out of the training set (`Protocol.validation`,
stored per evaluation as `validation_accuracy`); the test accuracy of the point it picks is then only the
reported number (issue 29, docs/validation.md). A run without a validation split cannot be selected on:
`NoValidationSplit`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prunebench.errors import UserError
from prunebench.store import ResultStore


class NoValidationSplit(UserError):
    """A selection rule was asked of a run trained without a validation split (no `validation_accuracy`)."""


@dataclass(frozen=True)
class Selected:
    """The evaluation point a rule picked: its step and validation accuracy (what the pick read), and its test
    accuracy and compression (what is reported)."""

    step: int
    validation_accuracy: float
    accuracy: float
    compression: float


def best_on_validation(trajectory: Iterable[Mapping[str, Any]], run_id: str = "this run") -> Selected:
    """The evaluation point of highest validation accuracy among a run's trajectory rows (`ResultStore.trajectory`);
    ties go to the higher compression, then the later step. The test accuracy is never compared: it is only
    carried to the answer. `NoValidationSplit` when no row has a validation accuracy."""
    rows = [row for row in trajectory if row.get("validation_accuracy") is not None]
    if not rows:
        raise NoValidationSplit(f"{run_id} has no validation accuracy: it was trained without a validation split "
                                "(train it with --validation IMAGES, e.g. --validation 5000 on MNIST)")
    best = max(rows, key=lambda row: (row["validation_accuracy"], row["compression"], row["step"]))
    return Selected(int(best["step"]), float(best["validation_accuracy"]), float(best["accuracy"]),
                    float(best["compression"]))


def best_step_of_run(store: ResultStore, run_id: str) -> Selected:
    """`best_on_validation` over the stored trajectory of `run_id`."""
    return best_on_validation(store.trajectory(run_id), f"run {run_id}")
