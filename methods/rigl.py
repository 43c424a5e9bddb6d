"""RigL. U. Evci, T. Gale, J. Menick, P. S. Castro and E. Elsen, "Rigging the Lottery: Making All Tickets
Winners", ICML 2020 (arXiv 1911.11134). Authors' code: google-research/rigl (TensorFlow).

The network is sparse from its first step, at a fixed overall sparsity S spread over the layers (by
Erdos-Renyi-Kernel by default) with random initial masks. Every dT steps until T_end the mask of each layer
changes: the fraction f_t = alpha/2 (1 + cos(pi t / T_end)) of its active weights with the smallest
magnitude is dropped, and as many connections are grown where the magnitude of the dense gradient
dL/d(W * M) of that step is largest; grown weights and their optimizer state start at zero. The number of
active weights never changes, so neither does the compression.

Method card (where each value comes from; "code" is google-research/rigl as summarised in METHODS.md
sec. 12):
- drop n = int(n_active f_t) per layer (floor) by |W * M| plus N(0, noise_std^2) tie-breaking noise,
  noise_std 1e-5; grow n where |dL/d(W * M)| is largest among the connections not kept by the drop, so a
  just-dropped connection may be grown again (it then keeps its weight and optimizer state, as in the code,
  where only connections inactive before the update are reset): code `sparse_optimizers_base.py`
  (`_get_update_op`, RigL's `generic_mask_update`) [V]. The drop ranks only the active weights, where the
  code ranks every entry's |W * M| + noise: the same unless an active weight is below the noise's scale
  (1e-5) [I]. Ties in the grow ranking are broken by position (a stable sort) [I].
- f_t = alpha/2 (1 + cos(pi t / T_end)) (cosine anneal), alpha = 0.3, dT = 100: paper and the code's MNIST
  settings (drop fraction 0.3, cosine, updates every 100 steps) [V]. t counts the steps done before the
  current one (TensorFlow's global step), so the first update is on the first step, t = 0, as in the code,
  whose updates run at every global step t with t % dT == 0 and t <= T_end [V].
- on an update step the optimizer applies no weight update: the step's gradient serves the mask update
  alone (code: a conditional between the mask update and the optimizer's apply_gradients) [V]. Here
  `skips_optimizer_step` tells the harness; the dense gradient is the step's ordinary backward pass, read
  from `.grad` only on update steps.
- T_end = `end` x iterations; end = 0.75 the paper's default for its image tasks [R] (the code's MNIST run:
  50,000 of 120,000 steps, 0.42) [V]; the LeNet defaults were chosen on the validation split
  (docs/validation.md).
- ERK (`distribution` "erk"): layer l's density proportional to (sum of its weight's dimensions) /
  (number of its weights), scaled so that the kept weights total (1 - S) N; a layer whose density would
  pass 1 is made dense and the scale recomputed: code `sparse_utils.get_sparsities_erdos_renyi` (power 1)
  [V]. "uniform": every layer at S [V]. "mnist-map": the code's LeNet-300-100 map, layer 1 at S, layer 2 at
  0.9 S, the output layer dense [V]; defined for 3-layer networks only (refused on others) [I]. A layer
  keeps max(round(size x density), 1) weights [I].
- random initial masks with exactly that many weights per layer (the code's random masks) [V], drawn
  from the global generator at `attach` (so every DDP rank draws the same); the weights start from the
  protocol's initialisation, zeroed where masked [I].
- grown weights start at zero with zero optimizer state (the code's default grow init "zeros", its
  momentum reset with initial_acc_scale 0) [V]. Pruned weights stay exactly zero: the masks are applied
  to the weights and their optimizer state after every step (`MaskedPruner`) [I for the mechanism].
- one phase from scratch with the task's protocol; budgets "equal" and "paper" are the same run (the
  code's MNIST budget is 200 epochs of SGD, the suite trains every method under one protocol) [I].
- the overall sparsity S is the compression knob: with ERK and uniform it sets the compression 1/(1 - S)
  by construction (up to rounding per layer), so `prunebench curve` lands with one probe.
- biases are not pruned (the suite's choice for every method).

Cost. Every step here runs the ordinary dense backward pass (pruned weights are stored as zeros), so the
dense gradient an update step needs costs nothing extra; a sparse kernel would compute weight gradients
only for active weights and pay a dense weight-gradient pass 1 step in dT. Beyond a dense step: the mask
multiply per prunable weight, and every dT steps a sort of each layer's magnitudes and of its gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from prunebench.methods._common import top_k_mask
from torch import nn

from prunebench.knob import CompressionKnob
from prunebench.protocol import Phase, Protocol
from prunebench.pruner import Hyperparameters, MaskedPruner, prunable_layers, register

if TYPE_CHECKING:
    from prunebench.tasks import Task

DISTRIBUTIONS: tuple[str, ...] = ("erk", "uniform", "mnist-map")
#: The code's LeNet-300-100 map: layer 2 at this factor times the overall sparsity.
MNIST_MAP_SECOND_LAYER = 0.9


def erk_densities(shapes: list[tuple[int, ...]], sparsity: float) -> list[float]:
    """Erdos-Renyi-Kernel densities of layers with weights of `shapes`, kept weights totalling (1 - sparsity) N.

    Raw score of a layer: sum(shape) / prod(shape); densities = eps x raw score, with eps set by the total;
    a layer whose density would exceed 1 is made dense and eps recomputed over the others."""
    sizes = [math.prod(shape) for shape in shapes]
    raw = [sum(shape) / size for shape, size in zip(shapes, sizes, strict=True)]
    dense: set[int] = set()
    if sparsity == 0:
        return [1.0] * len(shapes)
    while True:
        sparse = [i for i in range(len(shapes)) if i not in dense]
        budget = (1 - sparsity) * sum(sizes) - sum(sizes[i] for i in dense)
        eps = budget / sum(raw[i] * sizes[i] for i in sparse)
        if all(eps * raw[i] <= 1 for i in sparse):
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.add(max(sparse, key=lambda i: raw[i]))


def layer_densities(shapes: list[tuple[int, ...]], sparsity: float, distribution: str) -> list[float]:
    """Each layer's density under `distribution` (DISTRIBUTIONS) at overall sparsity `sparsity`."""
    if distribution == "erk":
        return erk_densities(shapes, sparsity)
    if distribution == "uniform":
        return [1.0 - sparsity] * len(shapes)
    if len(shapes) != 3:
        raise ValueError(f"rigl: distribution 'mnist-map' is the authors' LeNet-300-100 map (3 layers); this "
                         f"network has {len(shapes)} prunable layers")
    return [1.0 - sparsity, 1.0 - MNIST_MAP_SECOND_LAYER * sparsity, 1.0]


def drop_fraction_at(t: int, alpha: float, end: int) -> float:
    """The cosine-annealed drop fraction alpha/2 (1 + cos(pi t / T_end))."""
    return alpha / 2 * (1 + math.cos(math.pi * t / end))


def drop_and_grow(mask: torch.Tensor, weight: torch.Tensor, gradient: torch.Tensor, fraction: float,
                  noise: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """One RigL update of a layer's 0/1 `mask`: drop int(n_active x fraction) active weights of smallest |w|
    (+ `noise`), grow as many of largest |gradient| among those not kept. Returns (new mask, n)."""
    active = mask > 0
    n_active = int(active.sum())
    n = int(n_active * fraction)
    score = weight.detach().abs() if noise is None else weight.detach().abs() + noise
    kept = top_k_mask(torch.where(active, score, -math.inf), n_active - n)
    grow_score = torch.where(kept > 0, -math.inf, gradient.abs())
    grown = top_k_mask(grow_score, n)
    return (kept + grown).to(mask.dtype), n


@dataclass
class RigLHparams(Hyperparameters):
    sparsity: float = field(default=0.9, metadata={
        "help": "overall sparsity S of the prunable weights (compression 1/(1 - S) with erk or uniform), in "
        "[0, 1)", "min": 0, "lt": 1})
    distribution: str = field(default="erk", metadata={"choices": DISTRIBUTIONS, "help":
        "how S spreads over the layers: 'erk' (Erdos-Renyi-Kernel), 'uniform' (every layer at S), 'mnist-map' "
        "(the authors' LeNet-300-100 map: S, 0.9 S, dense output layer)"})
    drop_fraction: float = field(default=0.3, metadata={
        "help": "alpha: fraction of each layer's active weights replaced at the first update, annealed by "
        "cosine to 0 at T_end, in (0, 1]", "gt": 0, "max": 1})
    update_every: int = field(default=100, metadata={"help": "steps dT between mask updates (>= 1)", "min": 1})
    end: float = field(default=0.75, metadata={
        "help": "T_end, the last mask update, as a fraction of the run's iterations, in (0, 1]", "gt": 0, "max": 1})
    noise_std: float = field(default=1e-5, metadata={
        "help": "std of the tie-breaking noise added to the drop scores |w| (>= 0)", "min": 0})


@register("rigl")
class RigL(MaskedPruner):
    citation = "Evci, Gale, Menick, Castro & Elsen, Rigging the Lottery: Making All Tickets Winners, ICML 2020"
    hparams_class = RigLHparams
    knob = CompressionKnob("sparsity", raises=True, low=0.1, high=0.999, sparsity=True, exact_cut=True,
        note="overall sparsity S: fixed from the first step, so the deployed network keeps 1 - S of the weights")
    hp: RigLHparams

    def __init__(self, hparams: RigLHparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        shapes = [tuple(m.weight.shape) for _, m in prunable_layers(task.architecture())]
        #: Each prunable layer's density (fraction of weights active), in definition order.
        self.densities = layer_densities(shapes, self.hp.sparsity, self.hp.distribution)
        #: T_end in steps (set by `phases`).
        self.end_step = 1
        #: Update steps done so far and weights moved in them (drop = grow), for tests and logs.
        self.updates: list[tuple[int, int]] = []

    def attach(self, model: nn.Module) -> nn.Module:
        """Random masks with each layer's number of active weights; the masked weights start at zero."""
        super().attach(model)
        for (name, module), density in zip(self.layers, self.densities, strict=True):
            size = module.weight.numel()
            keep = max(round(size * density), 1)
            mask = torch.zeros(size, dtype=module.weight.dtype)
            mask[torch.randperm(size)[:keep]] = 1
            self.keep[name] = mask.view_as(module.weight).to(module.weight.device)
        self.apply_masks()
        return model

    def phases(self, protocol: Protocol) -> list[Phase]:
        self.end_step = max(round(self.hp.end * protocol.iterations), 1)
        return [Phase("train", protocol.iterations, protocol.lr)]

    def on_phase_start(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().on_phase_start(phase, model, optimizer)
        self.keep = {name: self.keep[name].to(module.weight.device) for name, module in self.layers}

    def is_update_step(self, step: int) -> bool:
        """Whether global step `step` (1-based) updates the masks: t = step - 1 with t % dT == 0, t <= T_end."""
        t = step - 1
        return t % self.hp.update_every == 0 and t <= self.end_step

    def skips_optimizer_step(self, step: int) -> bool:
        return self.is_update_step(step)

    def after_step(self, step: int) -> None:
        if self.is_update_step(step):
            self.update_masks(step - 1)
        self.apply_masks()

    @torch.no_grad()
    def update_masks(self, t: int) -> None:
        """Drop and grow in every layer with the gradient of this step (in `.grad`)."""
        fraction = drop_fraction_at(t, self.hp.drop_fraction, self.end_step)
        moved = 0
        for name, module in self.layers:
            weight, gradient = module.weight, module.weight.grad
            if gradient is None:
                raise RuntimeError(f"rigl: no gradient for {name} on update step {t + 1}")
            noise = (torch.randn(weight.shape, device=weight.device, dtype=weight.dtype) * self.hp.noise_std
                     if self.hp.noise_std > 0 else None)
            self.keep[name], n = drop_and_grow(self.keep[name], weight, gradient, fraction, noise)
            moved += n
        self.updates.append((t + 1, moved))
