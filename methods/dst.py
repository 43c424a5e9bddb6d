"""Dynamic Sparse Training. J. Liu, Z. Xu, R. Shi, R. C. C. Cheung and H. K.-H. So, "Dynamic Sparse
Training: Find Efficient Sparse Network From Scratch With Trainable Masked Layers", ICLR 2020
(arXiv 2005.06870). Authors' code: junjieliu2910/DynamicSparseTraining@595c91e97d (PyTorch).

Every prunable layer gets a trainable threshold vector t, one threshold per output neuron (Linear) or
filter (Conv2d). With the weight flattened to c_out x z, Q_ij = |W_ij| - t_i and the mask is the unit
step M = S(Q) = 1[Q > 0]; the layer computes with W * M (exact zeros), its bias is not masked. The
step is trained through the long-tailed derivative estimator H(x) = 2 - 4|x| for |x| <= 0.4, 0.4 for
0.4 < |x| <= 1, 0 otherwise. The loss adds alpha * sum over layers and thresholds of exp(-t), summed,
not normalised, which pushes every threshold up; weights that the task loss needs grow past their
threshold again, so pruning and recovery run continuously, from scratch, in one phase.

The gradients (g = dL/d(W * M)). As in the authors' code (MaskedMLP / MaskedConv2d.forward), the step
function's input is |W| - t and its output multiplies W, and autograd differentiates that composition:
- dL/dW_ij = g_ij M_ij + g_ij W_ij H(Q_ij) d|W_ij|/dW_ij = g_ij M_ij + g_ij W_ij sign(W_ij) H(Q_ij)
           = g_ij M_ij + g_ij |W_ij| H(Q_ij).
  The second term, the "structure gradient", reaches masked weights too. It has the sign of g: kept
  weights get g (1 + |W| H), masked ones g |W| H, a straight-through gradient rescaled, not a push
  towards or away from zero. So METHODS.md sec. 5's g * |W| * H(Q) is right, and the sign(W)
  that differentiating through |W| produces is absorbed by the W in front of the mask. At W = 0 both
  forms are 0 (torch's abs has derivative 0 at 0).
- dL/dt_i = sum_j g_ij W_ij H(Q_ij) dQ_ij/dt_i = -sum_j g_ij W_ij H(Q_ij).
Here the same composition is written out (`unit_step` is the code's BinaryStep) and autograd does the
chain rule (the plain path); tests/test_dst.py checks both terms against the closed forms above.

Cost (issue 18). The floor beyond a dense step, per prunable weight: forward one compare-and-multiply
(|W| - t > 0); backward one elementwise pass for dL/dW (g M + g |W| H(Q)) and the row sums of g W H(Q)
for dL/dt; the penalty over c_out thresholds per layer is negligible. The fused path (`DSTMasked`) does
exactly that: one compiled pass forward, one compiled pass backward giving both gradients, where the
plain path's autograd graph takes about fifteen elementwise passes (abs, subtract, compare, the three
pieces of H, the products, the broadcast's reduction). PRUNEBENCH_FUSED=0 forces the plain path.

Method card (where each value comes from):
- one threshold per output neuron / filter, weight flattened to c_out x z, M = 1[|W| - t > 0], W * M
  in the layer, biases not masked: paper (METHODS.md sec. 5) and code mnist/model/binarization.py [V].
- H(x) with the breakpoints 0.4 and 1 and the tail value 0.4: paper and code BinaryStep [V].
  At |x| = 0.4 both pieces give 0.4; at |x| = 1 the tail value applies (code: |x| <= 1).
- penalty alpha * sum exp(-t), added to the batch-mean task loss: paper and code mnist/trainer/trainer.py
  (loss_val += alpha * sum(exp(-layer.threshold)) per masked layer, after the mean cross-entropy) [V].
- alpha = 5e-4 (dataclass default): the authors' MNIST setting for both LeNets, with SGD lr 0.01,
  momentum 0.9, batch 64, 20 epochs (code mnist/train_argument.py, mnist/train.py) [V]. Our MNIST
  protocol is Adam lr 1e-3, batch 100; Adam normalises each threshold's step, so alpha only matters
  relative to the task-loss gradient reaching each threshold, and per-task values in
  prunebench/tasks.py are our own choices [I].
- thresholds start at 0 and are not constrained (they may go negative, which keeps the whole row):
  code reset_parameters [V]. Weights start from the task protocol's init (MNIST: truncated normal,
  std 0.01), not the code's Kaiming-uniform, so that every method shares one init [I].
- threshold_reset (OFF by default): the code, not the paper, resets a layer's thresholds to 0 when its
  keep ratio is <= 1% (reset_keep_ratio = 0.01) in a forward pass [V, code only]. Off by default
  because the paper does not describe it [I]. When on, the check runs in `after_step`, on the
  parameters the next forward pass (training step or evaluation) will see, where the code's check
  would fire: the same resets, and the forward pass stays free of side effects [I]. The optimizer
  state of the thresholds is kept, as in the code [V]. The keep ratio is kept count / numel exactly,
  so 1 of 100 weights (1%) resets.
- schedule: one phase from scratch with the task protocol's optimizer, lr, batch and iterations (the
  paper trains for the dense model's number of epochs), so budgets "equal" and "paper" are the same run
  [V for the principle; the MNIST protocol itself is the suite's, not the code's 20 SGD epochs].
- the authors' trainer keeps "best accuracy" / "best keep ratio" checkpoints chosen on the test set
  [V]; the harness measures the final network, as for every method [I]. Their protocol as their code runs it
  (PyTorch's default init `--init default`, `threshold_reset`, SGD lr 0.01 batch 64, 20 epochs) gives 12.0x
  at +0.25 pp on LeNet-300-100 (3 seeds, issue 31), against the published ~40x; the DT-paper report reads
  their two checkpoint rules on a validation split (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from prunebench.methods._common import fusable, fused, fused_paths
from torch import nn

from prunebench.knob import CompressionKnob
from prunebench.pruner import Hyperparameters, Pruner, parametrize_weights, prunable_layers, register

if TYPE_CHECKING:
    from prunebench.tasks import Task

THRESHOLD_INIT = 0.0
PEAK_HALF_WIDTH = 0.4  # H(x) = 2 - 4|x| for |x| <= 0.4
TAIL_VALUE = 0.4  # H(x) = 0.4 for 0.4 < |x| <= 1
TAIL_END = 1.0  # H(x) = 0 for |x| > 1


def long_tailed_derivative(x: torch.Tensor) -> torch.Tensor:
    """H(x): the estimator of the unit step's derivative (code BinaryStep.backward)."""
    a = x.abs()
    tail = torch.where(a <= TAIL_END, torch.full_like(a, TAIL_VALUE), torch.zeros_like(a))
    return torch.where(a <= PEAK_HALF_WIDTH, 2.0 - 4.0 * a, tail)


class UnitStep(torch.autograd.Function):
    """Forward 1[x > 0]; backward grad * H(x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * long_tailed_derivative(x)


def unit_step(x: torch.Tensor) -> torch.Tensor:
    return UnitStep.apply(x)


def row_view(threshold: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """t (c_out,) shaped to broadcast over W (c_out, ...): one threshold per row of W flattened to c_out x z."""
    return threshold.view(-1, *([1] * (weight.dim() - 1)))


def structure_input(weight: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Q = |W| - t, per row."""
    return weight.abs() - row_view(threshold, weight)


def dst_mask(weight: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """M = S(|W| - t), differentiable through H (to W via |W| and to t)."""
    return unit_step(structure_input(weight, threshold))


def masked_weight(weight: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """W * M, the weight the layer computes with (the code's `self.weight * mask`)."""
    return weight * dst_mask(weight, threshold)


@fusable(lambda x: (x, x[0]))
def fused_forward(weight: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """W * S(|W| - t), t (c_out,), in one pass."""
    return weight * (structure_input(weight, threshold) > 0)


@fusable(lambda x: (x, x[0], x))
def fused_backward(weight: torch.Tensor, threshold: torch.Tensor,
                   grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dW = g M + g W H(Q) sign(W) and dL/dt = -sum_row g W H(Q), in one pass, in the order of
    operations autograd takes through `masked_weight`."""
    q = structure_input(weight, threshold)
    structure = grad * weight * long_tailed_derivative(q)
    grad_weight = grad * (q > 0) + structure * torch.sign(weight)
    return grad_weight, -structure.flatten(1).sum(1)


class DSTMasked(torch.autograd.Function):
    """`masked_weight` fused: forward `fused_forward`, backward `fused_backward` (same gradients)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, threshold)
        return fused(fused_forward, weight.numel())(weight, threshold)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, threshold = ctx.saved_tensors
        return fused(fused_backward, weight.numel())(weight, threshold, grad.contiguous())


class TrainableMask(nn.Module):
    """Parametrisation of a layer's weight: W -> W * S(|W| - t), with t one threshold per output row."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.full((weight.shape[0],), THRESHOLD_INIT, dtype=weight.dtype,
                                                 device=weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if fused_paths():
            return DSTMasked.apply(weight, self.threshold)
        return masked_weight(weight, self.threshold)


@dataclass
class DSTHparams(Hyperparameters):
    alpha: float = field(default=5e-4, metadata={
        "help": "alpha of the threshold penalty alpha*sum(exp(-t)), summed over all thresholds (>= 0)", "min": 0})
    threshold_reset: bool = field(default=False, metadata={
        "help": "authors' code only: reset a layer's thresholds to 0 when its keep ratio <= reset_keep_ratio"})
    reset_keep_ratio: float = field(default=0.01, metadata={
        "help": "keep ratio at or below which threshold_reset resets a layer (code: 0.01; in [0, 1))",
        "min": 0, "lt": 1})


@register("dst")
class DynamicSparseTraining(Pruner):
    citation = ("Liu, Xu, Shi, Cheung & So, Dynamic Sparse Training: Find Efficient Sparse Network From Scratch "
                "With Trainable Masked Layers, ICLR 2020")
    hparams_class = DSTHparams
    knob = CompressionKnob("alpha", raises=True, low=1e-6, high=1.0,
        note="weight of the threshold penalty alpha*sum(exp(-t)) that raises the trainable thresholds")
    hp: DSTHparams
    provenance = "paper"

    def __init__(self, hparams: DSTHparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        self.layers: list[tuple[str, nn.Module]] = []
        #: (step, layer name) of every threshold reset (only with threshold_reset).
        self.resets: list[tuple[int, str]] = []

    def attach(self, model: nn.Module) -> nn.Module:
        self.layers = [(name, m) for name, m, _ in parametrize_weights(model, lambda m: TrainableMask(m.weight))]
        return model

    # -- the method's state ----------------------------------------------------------------------
    @staticmethod
    def weight_of(module: nn.Module) -> torch.Tensor:
        """The dense W of a parametrised layer."""
        return module.parametrizations.weight.original

    @staticmethod
    def threshold_of(module: nn.Module) -> nn.Parameter:
        """The layer's threshold vector t, shape (c_out,)."""
        return module.parametrizations.weight[0].threshold

    @torch.no_grad()
    def mask_of(self, module: nn.Module) -> torch.Tensor:
        """M = 1[|W| - t > 0], shaped like the weight."""
        weight = self.weight_of(module)
        return (structure_input(weight, self.threshold_of(module)) > 0).to(weight.dtype)

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: self.mask_of(module) for name, module in prunable_layers(model)}

    # -- hooks -----------------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor | None:
        if self.hp.alpha == 0:
            return None
        return self.hp.alpha * sum(torch.exp(-self.threshold_of(m)).sum() for _, m in self.layers)

    def state_dict(self) -> dict[str, Any]:
        return {"resets": list(self.resets)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resets = [tuple(reset) for reset in state["resets"]]

    def after_step(self, step: int) -> None:
        if self.hp.threshold_reset:
            for name in self.reset_collapsed_layers():
                self.resets.append((step, name))

    @torch.no_grad()
    def reset_collapsed_layers(self) -> list[str]:
        """The code's safety valve: thresholds of every layer with keep ratio <= reset_keep_ratio set to 0."""
        reset = []
        for name, module in self.layers:
            mask = self.mask_of(module)
            if int(mask.sum()) / mask.numel() <= self.hp.reset_keep_ratio:  # exact ratio, as a double
                self.threshold_of(module).fill_(THRESHOLD_INIT)
                reset.append(name)
        return reset

    def deployed(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            weights = {name: self.weight_of(m) * self.mask_of(m) for name, m in prunable_layers(model)}
        return self.export(model, weights=weights)

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """|W| - t: positive exactly where the mask keeps the weight."""
        with torch.no_grad():
            return {name: structure_input(self.weight_of(m), self.threshold_of(m)).clone()
                    for name, m in prunable_layers(model)}

    def thresholds(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The threshold vector t of each layer (one per output neuron / filter, shape (c_out,), on |W|;
        unconstrained, so it may be negative), detached copies."""
        return {name: self.threshold_of(m).detach().clone() for name, m in prunable_layers(model)}
