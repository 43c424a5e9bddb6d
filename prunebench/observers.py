"""Observers of a training run: what the harness tells the outside (progress bars, TensorBoard, stops in
tests) and what they add to each evaluation point's `extra` (`measure`), such as Fig. 4's thresholds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunebench.data import TensorDataset
from prunebench.evaluation import Evaluation
from prunebench.pruner import Pruner, prunable_layers
from prunebench.request import RunSpec


class Observer:
    """Follows one run at a time: `start`, `resumed` (when it continues from a checkpoint), each `step`, each
    `evaluation` point, `end` (also when it failed or stopped). `measure(pruner, model, data)` returns extras
    stored in each evaluation point's `extra`; `data` is the task's resident dataset (None when streamed)."""

    def start(self, spec: RunSpec, total_steps: int) -> None: ...
    def resumed(self, step: int) -> None: ...
    def step(self, step: int) -> None: ...
    def evaluation(self, point: Evaluation) -> None: ...
    def end(self) -> None: ...

    def measure(self, pruner: Pruner, model: nn.Module, data: TensorDataset | None) -> dict[str, Any]:  # noqa: ARG002
        return {}


class Observers(Observer):
    """Several observers as one (the harness takes one), called in order; None entries are left out."""

    def __init__(self, *observers: Observer | None) -> None:
        self.observers = [o for o in observers if o is not None]

    def start(self, spec: RunSpec, total_steps: int) -> None:
        for o in self.observers:
            o.start(spec, total_steps)

    def resumed(self, step: int) -> None:
        for o in self.observers:
            o.resumed(step)

    def step(self, step: int) -> None:
        for o in self.observers:
            o.step(step)

    def evaluation(self, point: Evaluation) -> None:
        for o in self.observers:
            o.evaluation(point)

    def end(self) -> None:
        for o in self.observers:
            o.end()

    def measure(self, pruner: Pruner, model: nn.Module, data: TensorDataset | None) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for o in self.observers:
            extra.update(o.measure(pruner, model, data))
        return extra


class Measure(Observer):
    """`fn(pruner, model, data) -> dict` as an observer's `measure`; it needs resident data."""

    def __init__(self, fn: Callable[[Pruner, nn.Module, TensorDataset], dict[str, Any]]) -> None:
        self.fn = fn

    def measure(self, pruner: Pruner, model: nn.Module, data: TensorDataset | None) -> dict[str, Any]:
        if data is None:
            raise ValueError("evaluation extras need resident data; this task streams its data")
        return self.fn(pruner, model, data)


class ThresholdRecorder(Observer):
    """DT Fig. 4/5 for methods with learned thresholds (`threshold_of`, as dynthresh): at each evaluation,
    {"weights": {layer: signed weights}, "thresholds": {layer: thresholds broadcast to the weight's shape}}
    as nested lists, for every prunable layer (the trained, unpruned weights)."""

    def measure(self, pruner: Pruner, model: nn.Module, data: TensorDataset | None) -> dict[str, Any]:  # noqa: ARG002
        threshold_of = getattr(pruner, "threshold_of", None)
        if threshold_of is None:
            raise TypeError(f"recording thresholds needs a pruner with learned thresholds (threshold_of), such as "
                            f"dynthresh; got {type(pruner).__name__}")
        weights: dict[str, Any] = {}
        thresholds: dict[str, Any] = {}
        with torch.no_grad():
            for name, module in prunable_layers(model):
                weight = _raw_weight(module).detach()
                weights[name] = weight.cpu().tolist()
                thresholds[name] = threshold_of(module).detach().expand_as(weight).cpu().tolist()
        return {"weights": weights, "thresholds": thresholds}


def _raw_weight(module: nn.Module) -> torch.Tensor:
    """The trained (unpruned) weight: the parametrisation's original when the layer is parametrised."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight
