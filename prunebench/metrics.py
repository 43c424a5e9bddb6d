"""Shared measurement of deployed networks: accuracy, compression (paper convention), per-layer non-zeros."""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def top5_correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of examples whose target is among the 5 highest logits, as a 0-d tensor."""
    return (output.topk(5, dim=1).indices == target[:, None]).any(dim=1).sum()


@torch.no_grad()
def evaluate_batches(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], correct_fn,
                     top5: bool = False, autocast: str = "off") -> tuple[float, float | None]:
    """(top-1, top-5 or None) of `net` in eval mode over the evaluation batches; one host sync at the
    end. `autocast` "bf16" runs the forward pass under CUDA autocast."""
    was_training = net.training
    net.eval()
    correct = correct5 = None
    count = 0
    try:
        for x, y in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast == "bf16"):
                output = net(x)
            batch_correct = correct_fn(output, y)
            correct = batch_correct if correct is None else correct + batch_correct
            if top5:
                batch5 = top5_correct(output, y)
                correct5 = batch5 if correct5 is None else correct5 + batch5
            count += y.shape[0]
    finally:
        net.train(was_training)
    if count == 0:
        raise ValueError("the evaluation set is empty")
    return float(correct.item()) / count, (float(correct5.item()) / count if top5 else None)


def accuracy_at_compressions(pruner: Pruner, model: nn.Module, evaluate: Callable[[nn.Module], float],
                             ratios: tuple[float, ...]) -> dict[str, float] | None:
    """"Accuracy at a target compression" (DT paper Fig. 1's markers for sparse VD): for each ratio, the
    trained weights (`pruner.export(model)`, no mask) with all but the top `pruner.scores` zeroed so that
    exactly total / ratio weights remain, measured by `evaluate` (the harness's test-set accuracy). None
    when the method has no scores. Keys are the ratios formatted with "%g" (JSON keys)."""
    scores = pruner.scores(model)
    if scores is None:
        return None
    return {f"{ratio:g}": evaluate(keep_top_scores(pruner.export(model), scores, ratio)) for ratio in ratios}


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


#: `threshold_distribution`'s histogram: fixed log10-spaced edges from 1e-4 to 1e1 (4 bins per decade,
#: 20 bins), the same for every evaluation, run and method, so histograms align. A threshold below 1e-4
#: (zero and negative ones included: DST's thresholds may go negative) is counted in the first bin, one
#: at or above 1e1 in the last; `below` / `above` say how many of them lie outside the range.
THRESHOLD_LOG10_RANGE: tuple[float, float] = (-4.0, 1.0)
THRESHOLD_BINS_PER_DECADE = 4
THRESHOLD_QUANTILES: tuple[int, ...] = (5, 25, 50, 75, 95)


def _sig(value: float) -> float:
    """`value` to 6 significant digits (a compact JSON number)."""
    return float(f"{value:.6g}")


def _quantile_sorted(values: torch.Tensor, q: float) -> float:
    """The q-quantile (0 <= q <= 1) of sorted `values`, interpolated linearly between order statistics
    (numpy's default). Works past `torch.quantile`'s input size limit (AlexNet has 61M thresholds)."""
    position = q * (values.numel() - 1)
    lo = int(position)
    hi = min(lo + 1, values.numel() - 1)
    low, high = float(values[lo]), float(values[hi])
    return low + (high - low) * (position - lo)


@torch.no_grad()
def threshold_distribution(thresholds: dict[str, torch.Tensor]) -> dict:
    """A small JSON-able summary of all the network's pruning thresholds (DT paper Fig. 5), from
    `Pruner.thresholds(model)`: {layer: tensor of any shape}, every element one threshold.

    Returns {"count", "mean", "min", "max", "quantiles": {"5", "25", "50", "75", "95"},
    "hist": {"log10_range": [-4.0, 1.0], "bins_per_decade": 4, "counts": [20 ints], "below", "above"},
    "nonfinite", "layer_median": {layer: median}}. Statistics are over the finite thresholds (NaN / inf
    ones are only counted in "nonfinite"); quantiles interpolate linearly between order statistics (as
    numpy's default); bin k of "counts" holds [10^(-4 + k/4), 10^(-4 + (k+1)/4)), the end bins also
    hold the values outside the range ("below" < 1e-4, "above" >= 1e1). Numbers have 6 significant
    digits; statistics of no thresholds are None."""
    lo, hi = THRESHOLD_LOG10_RANGE
    n_bins = round((hi - lo) * THRESHOLD_BINS_PER_DECADE)
    layers: dict[str, torch.Tensor] = {}
    nonfinite = 0
    for name, tensor in thresholds.items():
        values = tensor.detach().flatten().float()
        finite = torch.isfinite(values)
        nonfinite += int((~finite).sum())
        layers[name] = torch.sort(values[finite]).values
    layer_median = {name: _sig(_quantile_sorted(v, 0.5)) if v.numel() else None for name, v in layers.items()}
    values = torch.sort(torch.cat(list(layers.values()))).values if layers else torch.zeros(0)
    count = values.numel()
    counts = [0] * n_bins
    below = above = 0
    if count:
        edges = torch.tensor([10.0 ** (lo + k / THRESHOLD_BINS_PER_DECADE) for k in range(n_bins + 1)],
                             dtype=values.dtype, device=values.device)
        # bucketize(right=True) against the inner edges: index k for edge_k <= v < edge_{k+1}, the end
        # bins open-ended.
        index = torch.bucketize(values, edges[1:-1], right=True)
        counts = [int(c) for c in torch.bincount(index, minlength=n_bins).tolist()]
        below = int((values < edges[0]).sum())
        above = int((values >= edges[-1]).sum())

    def stat(value: float) -> float | None:
        return _sig(value) if count else None

    return {
        "count": count,
        "mean": stat(float(values.double().mean()) if count else 0.0),
        "min": stat(float(values[0]) if count else 0.0),
        "max": stat(float(values[-1]) if count else 0.0),
        "quantiles": {str(q): stat(_quantile_sorted(values, q / 100) if count else 0.0) for q in THRESHOLD_QUANTILES},
        "hist": {"log10_range": [lo, hi], "bins_per_decade": THRESHOLD_BINS_PER_DECADE, "counts": counts,
                 "below": below, "above": above},
        "nonfinite": nonfinite,
        "layer_median": layer_median,
    }
