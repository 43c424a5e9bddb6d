"""Evaluation points: the deployed network measured alike for every method (`Evaluator`), and the record of
one point (`Evaluation`) that the store, the observers (TensorBoard, progress) and the final row share."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunebench import distributed as ddp
from prunebench.data import TensorDataset
from prunebench.metrics import (
    accuracy_at_compressions,
    count_flops,
    evaluate_batches,
    measure_compression,
    threshold_distribution,
)
from prunebench.pruner import Pruner
from prunebench.request import RunSpec
from prunebench.sources import DataSource

#: The columns of the final row that come from the last evaluation point.
FINAL_COLUMNS = ("accuracy", "compression", "weights_nonzero", "weights_total", "compression_all", "params_nonzero",
                 "params_total", "per_layer", "flops", "flops_nonzero")


@dataclass
class Evaluation:
    """One evaluation point of a run: the deployed network at `step`. The fields up to `eval_seconds` are its
    trajectory row; `per_layer` is {layer: (nonzero, total)}, `loss` the mean training loss since the last
    point, `extra` the evaluation-only measurements (at_compression, thresholds, observers' `measure`,
    mask_hash), the seconds cumulative."""

    step: int
    phase: str
    train_seconds: float
    loss: float
    accuracy: float
    compression: float
    weights_nonzero: int
    weights_total: int
    compression_all: float
    per_layer: dict[str, tuple[int, int]]
    flops: int
    flops_nonzero: int
    top5: float | None = None
    trained_accuracy: float | None = None  #: the network as trained, when it is not the deployed one
    extra: dict[str, Any] = field(default_factory=dict)
    eval_seconds: float | None = None
    params_nonzero: int | None = None  #: final row only
    params_total: int | None = None
    #: the deployed network's accuracy on the validation split held out of the training set (runs with one)
    validation_accuracy: float | None = None

    def row(self) -> dict[str, Any]:
        """The trajectory row the store writes (empty columns left out)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("params_nonzero", "params_total")}  # final row only
        if not self.extra:
            del row["extra"]
        return {k: v for k, v in row.items() if v is not None}

    def final(self, iterations: int, train_seconds: float, eval_seconds: float, flops_reference: int) -> dict[str, Any]:
        """The run's final row when this is its last point."""
        final = {"iterations": iterations, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                 **{k: getattr(self, k) for k in FINAL_COLUMNS}, "flops_reference": flops_reference}
        for optional in ("top5", "validation_accuracy"):
            if getattr(self, optional) is not None:
                final[optional] = getattr(self, optional)
        if self.extra:
            final["extra"] = self.extra
        return final


def check_plain(net: nn.Module, reference: nn.Module, method: str) -> None:
    """`TypeError` unless `net` is the task's plain architecture: `reference`'s modules (names and types) and
    parameters (names, and shapes no larger: a structured method deploys fewer units)."""
    plain = {name: type(m) for name, m in reference.named_modules()}
    sizes = {name: p.shape for name, p in reference.named_parameters()}
    differ = {name for name, m in net.named_modules() if plain.pop(name, None) is not type(m)} | set(plain)
    for name, p in net.named_parameters():
        size = sizes.pop(name, None)
        if size is None or p.dim() != len(size) or any(a > b for a, b in zip(p.shape, size, strict=True)):
            differ.add(name)
    if differ | set(sizes):
        raise TypeError(f"{method}'s deployed network is not the task's plain {type(reference).__name__} (it differs "
                        f"at {', '.join(name or 'the network itself' for name in sorted(differ | set(sizes))[:5])}): "
                        "`Pruner.deployed` must return the task's architecture")


def device_clock(device: torch.device) -> float:
    """`time.perf_counter()` once the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Evaluator:
    """Measures a run's deployed network (`Pruner.deployed`) at its evaluation points: compression and FLOPs
    against the task's dense architecture, accuracy on the test set (top-5 where the task has it), the trained
    network's accuracy where it differs, and the extras: accuracy `at_compressions`, the distribution of the
    method's learned thresholds, `measure(pruner, model, data)` (the observers'), and in a DDP run the mask's
    hash, checked equal on every rank. Where the source holds a validation split, the deployed network's accuracy
    on it too (for selection rules; the test accuracy stays the reported one). `seconds`: the time spent
    evaluating so far."""

    def __init__(self, spec: RunSpec, pruner: Pruner, model: nn.Module, source: DataSource, device: torch.device,
                 ctx: ddp.Context, measure: Callable[[Pruner, nn.Module, TensorDataset | None], dict[str, Any]],
                 at_compressions: tuple[float, ...] = (), channels_last: bool = False) -> None:
        self.spec, self.pruner, self.model, self.source, self.device = spec, pruner, model, source, device
        self.ctx, self.measure, self.at_compressions, self.seconds = ctx, measure, at_compressions, 0.0
        self.channels_last = channels_last  #: the deployed network in channels_last, as the model trains
        self.autocast = spec.protocol.autocast if device.type == "cuda" else "off"
        self.reference = spec.task.architecture().to(device)  # what every deployed network is measured against
        self.flops_reference = count_flops(self.reference, source.example).dense

    def accuracy(self, net: nn.Module) -> tuple[float, float | None]:
        return evaluate_batches(net, self.source.eval_batches(), self.spec.task.correct, top5=self.spec.task.top5,
                                autocast=self.autocast)

    def validation_accuracy(self, net: nn.Module) -> float:
        return evaluate_batches(net, self.source.validation_batches(), self.spec.task.correct,
                                autocast=self.autocast)[0]

    @torch.no_grad()
    def validation_loss(self, net: nn.Module) -> float:
        """The mean task loss of `net` (in eval mode) over the validation split: what `Pruner.after_evaluation`
        gives methods that decide on validation (`evaluate_batches` summing each batch's loss x its size)."""
        return evaluate_batches(net, self.source.validation_batches(),
                                lambda output, y: self.spec.task.loss(output, y).float() * y.shape[0],
                                autocast=self.autocast)[0]

    def __call__(self, step: int, phase: str, loss: float, train_seconds: float) -> Evaluation:
        t0 = time.perf_counter()
        pruner, model = self.pruner, self.model
        net = pruner.deployed(model)
        check_plain(net, self.reference, self.spec.method)
        mask = ddp.check_masks_agree(self.ctx, net) if self.ctx.active else None
        counts = measure_compression(net, self.reference)
        flops = count_flops(net, self.source.example)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        top1, top5 = self.accuracy(net)
        validation = self.validation_accuracy(net) if self.source.validation_size else None
        trained = self.accuracy(model)[0] if pruner.trained_network_differs else None
        extra = {}
        if self.at_compressions:
            at = accuracy_at_compressions(pruner, model, lambda n: self.accuracy(n)[0], self.at_compressions)
            if at is not None:
                extra["at_compression"] = at
        thresholds = pruner.thresholds(model)
        if thresholds is not None:
            extra["thresholds"] = threshold_distribution(thresholds)
        extra.update(self.measure(pruner, model, self.source.resident))
        if mask is not None:
            extra["mask_hash"] = mask  # the same on every rank (checked)
        self.seconds += device_clock(self.device) - t0
        return Evaluation(step, phase, train_seconds, loss, top1, counts.compression, counts.weights_nonzero,
                          counts.weights_total, counts.compression_all, counts.per_layer, flops.dense, flops.nonzero,
                          top5, trained, extra, self.seconds, counts.params_nonzero, counts.params_total, validation)
