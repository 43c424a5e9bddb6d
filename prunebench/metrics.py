"""Shared measurement of deployed networks: accuracy, compression (paper convention), per-layer non-zeros."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunebench.pruner import Pruner, prunable_layers


@dataclass(frozen=True)
class Compression:
    """Non-zero counts of a deployed network.

    Paper convention: conv + fc weights only (`weights_total / weights_nonzero`). The count over all
    parameters (biases included) is kept beside it."""

    weights_total: int
    weights_nonzero: int
    params_total: int
    params_nonzero: int
    per_layer: dict[str, tuple[int, int]]  # name -> (nonzero, total) of the layer's weight

    @property
    def compression(self) -> float:
        return self.weights_total / max(self.weights_nonzero, 1)

    @property
    def compression_all(self) -> float:
        return self.params_total / max(self.params_nonzero, 1)


def measure_compression(net: nn.Module, reference: nn.Module | None = None) -> Compression:
    """Non-zero weights of `net`. Totals come from `reference` (the task's dense architecture) when
    given, so a physically smaller network (channel pruning) is compared with the network it replaces;
    its layers must carry the reference's names."""
    nonzero = {name: int(torch.count_nonzero(m.weight)) for name, m in prunable_layers(net)}
    totals = {name: m.weight.numel() for name, m in prunable_layers(reference if reference is not None else net)}
    if set(nonzero) != set(totals):
        raise ValueError(f"deployed layers {sorted(nonzero)} differ from the reference's {sorted(totals)}")
    per_layer = {name: (nonzero[name], totals[name]) for name in totals}
    params_total = sum(p.numel() for p in (reference if reference is not None else net).parameters())
    params_nonzero = sum(int(torch.count_nonzero(p)) for p in net.parameters())
    return Compression(
        weights_total=sum(t for _, t in per_layer.values()),
        weights_nonzero=sum(n for n, _ in per_layer.values()),
        params_total=params_total,
        params_nonzero=params_nonzero,
        per_layer=per_layer,
    )


@dataclass(frozen=True)
class Flops:
    """Multiply-accumulates of the Linear/Conv2d weights for one input example (biases not counted)."""

    dense: int  # every weight of the network as built (what a dense kernel computes)
    nonzero: int  # only the non-zero weights (what an ideal sparse kernel computes)


@torch.no_grad()
def count_flops(net: nn.Module, example: torch.Tensor) -> Flops:
    """MACs of `net` on one example (`example` has no batch dimension). A conv weight is used once per
    output position, a linear weight once per leading position of its input."""
    dense = nonzero = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal dense, nonzero
        uses = output[0].numel() // module.weight.shape[0]  # output positions per output unit
        dense += module.weight.numel() * uses
        nonzero += int(torch.count_nonzero(module.weight)) * uses

    handles = [m.register_forward_hook(hook) for _, m in prunable_layers(net)]
    was_training = net.training
    try:
        net.eval()
        net(example.unsqueeze(0))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return Flops(dense=dense, nonzero=nonzero)


@torch.no_grad()
def evaluate_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, correct_fn, batch_size: int = 2000) -> float:
    """Fraction of correct predictions of `net` (in eval mode) on (x, y); one host sync at the end."""
    was_training = net.training
    net.eval()
    correct = torch.zeros((), device=x.device)
    for start in range(0, x.shape[0], batch_size):
        correct += correct_fn(net(x[start:start + batch_size]), y[start:start + batch_size])
    net.train(was_training)
    return float(correct.item()) / x.shape[0]


def accuracy_at_compressions(pruner: Pruner, model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct_fn,
                             ratios: tuple[float, ...]) -> dict[str, float] | None:
    """"Accuracy at a target compression" (DT paper Fig. 1's markers for sparse VD): for each ratio, the
    trained weights (`pruner.export(model)`, no mask) with all but the top `pruner.scores` zeroed so that
    exactly total / ratio weights remain, evaluated on (x, y). None when the method has no scores.
    Keys are the ratios formatted with "%g" (JSON keys)."""
    scores = pruner.scores(model)
    if scores is None:
        return None
    return {f"{ratio:g}": evaluate_accuracy(keep_top_scores(pruner.export(model), scores, ratio), x, y, correct_fn)
            for ratio in ratios}


def keep_top_scores(net: nn.Module, scores: dict[str, torch.Tensor], compression: float) -> nn.Module:
    """Zero all but the globally top-scoring weights of `net` so that total/nonzero == `compression`
    (rounded to whole weights). `net` is modified in place and returned."""
    layers = dict(prunable_layers(net))
    total = sum(m.weight.numel() for m in layers.values())
    keep = max(1, round(total / compression))
    flat = torch.cat([scores[name].flatten() for name in layers])
    if keep < flat.numel():
        cutoff = torch.topk(flat, keep, sorted=True).values[-1]
        # Ties at the cut-off are broken by order so that exactly `keep` weights survive.
        keep_mask = flat > cutoff
        ties = (flat == cutoff).nonzero().flatten()
        keep_mask[ties[: keep - int(keep_mask.sum())]] = True
    else:
        keep_mask = torch.ones_like(flat, dtype=torch.bool)
    offset = 0
    with torch.no_grad():
        for module in layers.values():
            n = module.weight.numel()
            module.weight.mul_(keep_mask[offset:offset + n].view_as(module.weight))
            offset += n
    return net
