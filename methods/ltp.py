"""Learned Threshold Pruning. K. Azarian, Y. Bhalgat, J. Lee and T. Blankevoort, "Learned Threshold
Pruning", arXiv 2003.00075 (v1 Feb 2020, v2 Mar 2021). No public code by the authors is known.

Start from a pretrained network and learn one scalar threshold tau_l per prunable layer on the
*squared* weights. During fine-tuning every weight is soft-pruned, v = w * sigmoid((w^2 - tau_l) / T_l),
and the loss adds a soft L0 penalty, the sigmoid summed over all weights (a differentiable count of the
weights that survive). The deployed network is hard-pruned: v = w * 1[w^2 > tau_l]. The backward pass
keeps dv/dtau = -(w / T) sigma (1 - sigma) but drops the term (2 w^2 / T) sigma (1 - sigma) of dv/dw,
treating the sigmoid as constant in w (dv/dw ~= sigma): per [S] the paper finds that the full term stalls
pruning.

Provenance: a reconstruction. The full text was not available; the rules come from the abstract, a
patent summary (US 11704571) and a third-party implementation that cites the paper's equations
(METHODS.md sec. 6). Every [S] item below must be checked against the PDF.

Method card (where each value comes from):
- soft pruning v = w * sigmoid((w^2 - tau_l) / T_l) in training, hard pruning v = w * 1[w^2 > tau_l] at
  deployment, one scalar tau_l per layer on the squared weights [S]. A weight with w^2 exactly equal
  to tau_l is pruned (strict >, so tau = 0 prunes only the exact zeros) [I].
- gradients: dv/dw := sigma (paper Eq. 14 per [S]), dv/dtau = -(w / T) sigma (1 - sigma) [S]. Implemented
  by `LTPSoftPrune`, a custom autograd Function; it equals autograd of w * sigmoid((w.detach()^2 - tau)/T)
  (the "detach trick") [I, implementation].
- soft L0 penalty lam * sum_l sum_k sigmoid((w_k^2 - tau_l) / T_l) [S], divided by N, the number of
  prunable weights of the network, so it lies in [0, lam] [I] (the patent normalises by a "pruning
  preference" value [S]; METHODS.md recommends the weight count [I]). The penalty is differentiated in
  full, with respect to both w and tau (the Eq. 14 approximation concerns v, not the penalty) [I].
  lam: not known for any task [I]; dataclass default 0.1 (XOR); MNIST task default 10, from a seed-0
  LeNet-300-100 sweep at budget "equal" (lam 1 / 3 / 10: 22.9x / 27.0x / 30.9x at -0.12 / -0.07 / +0.01 pp,
  prunebench/tasks.py) [I].
- temperature T_l = T0 * Var(|w_l|) (paper Eq. 15 per [S]): the population variance of the layer's weight
  magnitudes, measured once from the pretrained weights when the prune phase starts and fixed after [I]
  (the paper may recompute it; not known). T0: not known [I]; default 1.0, to be swept.
  A layer whose magnitudes have zero variance uses mean(w^2) (or 1 if that is 0 too) instead [I].
- tau_l starts at 0 (METHODS.md "suite starting point") [I]. It is stored as tau_l = u_l * s_l with
  u_l = Var(|w_l|) (the same pretrained statistic as T_l) and s_l the trained parameter, so thresholds
  are in each layer's own units and one learning rate fits every layer [I]. With `nonnegative_tau`
  (default), s_l is projected to >= 0 after every optimizer step: a negative threshold on squared
  weights prunes nothing and only inflates the soft weights, and at the start (where the sigmoid halves
  the small weights) the classification loss pushes tau below 0, which would delay pruning [I].
- the thresholds train in their own optimizer parameter group at lr * `threshold_lr_factor` (10) [I]:
  Adam moves a parameter by about its lr per step whatever the gradient's scale, and reaching 50-100x on
  a roughly Gaussian layer needs s ~ 15-20 (tau ~ 6.6 sigma^2 ~ 18 Var(|w|)) within a few thousand steps.
- thresholds are not trained or applied in the pretrain phase: the network is dense there (the
  parametrisation returns w unchanged, no graph reaches s, its grad stays None and Adam skips it), and
  the penalty is off [I].
- schedule: budget "paper": pretrain dense 10,000 iterations (the stock Caffe LeNet solver, as in
  dns/magnitude [R]), then fine-tune `finetune_iterations` = 14,000 with soft pruning [I]: the suite's
  choice, the post-pretraining budget of DNS on LeNet-300-100 (surgery 10,000 + frozen 4,000); LTP's own
  schedule is fine-tuning for under 30 ImageNet epochs (30 for ResNet50) [V, abstract]. Budget "equal":
  the same split scaled into the protocol's iterations (as dns.py). The fine-tune phase runs at the
  protocol lr * `finetune_lr_factor` (1) with a fresh optimizer (a new fine-tuning run) [I].
- cost (issue 18): beyond a dense step, per prunable weight after pretraining, one sigmoid and a
  multiply forward, one elementwise pass backward for dL/dw plus a reduction for dL/dtau, and the soft L0
  penalty's gradient (same sigmoid) in closed form. The fused path (`LTPFused`) does that in one
  compiled pass each way; the plain path (autograd through `soft_prune`, and `soft_l0` as a second
  sigmoid pass and its own backward) is kept as the reference (PRUNEBENCH_FUSED=0) [I, implementation].
- the paper picks an operating point from the trail of ever sparser networks; the suite reports the last
  evaluation (every evaluation is stored) [I]. Biases are not pruned (the suite's choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from prunebench.methods._common import FusedPenalty, PretrainThenPrune, fusable, fused
from torch import nn

from prunebench.knob import CompressionKnob
from prunebench.protocol import Phase
from prunebench.pruner import Hyperparameters, parametrised, parametrize_weights, register

if TYPE_CHECKING:
    from prunebench.tasks import Task

PRUNE = "prune"


class LTPSoftPrune(torch.autograd.Function):
    """Forward v = w * sigmoid((w^2 - tau) / T); backward with LTP's gradients:
    dv/dw := sigma (the 2 w^2 / T sigma (1 - sigma) term dropped) and dv/dtau = -(w / T) sigma (1 - sigma),
    summed to tau's shape (a scalar per layer)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, tau: torch.Tensor, temperature: float) -> torch.Tensor:
        gate = torch.sigmoid((weight * weight - tau) / temperature)
        ctx.save_for_backward(weight, gate)
        ctx.temperature = temperature
        ctx.tau_shape = tau.shape
        return weight * gate

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, gate = ctx.saved_tensors
        grad_weight = grad * gate if ctx.needs_input_grad[0] else None
        grad_tau = None
        if ctx.needs_input_grad[1]:
            grad_tau = (-(grad * weight * gate * (1 - gate)).sum() / ctx.temperature).reshape(ctx.tau_shape)
        return grad_weight, grad_tau, None


def soft_prune(weight: torch.Tensor, tau: torch.Tensor, temperature: float) -> torch.Tensor:
    """LTP's training-time pruning with LTP's gradients (see `LTPSoftPrune`)."""
    return LTPSoftPrune.apply(weight, tau, temperature)


def soft_prune_exact(weight: torch.Tensor, tau: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same forward with autograd's full derivative (for reference and tests; not used in training)."""
    return weight * torch.sigmoid((weight * weight - tau) / temperature)


def hard_mask(weight: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Keep mask 1[w^2 > tau] (bool); a weight with w^2 exactly tau is pruned."""
    weight = weight.detach()
    tau = tau.detach() if isinstance(tau, torch.Tensor) else tau
    return weight * weight > tau


def soft_l0(weight: torch.Tensor, tau: torch.Tensor, temperature: float) -> torch.Tensor:
    """The layer's soft count of surviving weights, sum_k sigmoid((w_k^2 - tau) / T) (full gradient)."""
    return torch.sigmoid((weight * weight - tau) / temperature).sum()


def magnitude_variance(weight: torch.Tensor) -> float:
    """Var(|w|) (population) of a layer; mean(w^2), else 1, when that is 0 (the unit of tau and of T)."""
    magnitude = weight.detach().abs().double()
    variance = float(magnitude.var(correction=0)) if magnitude.numel() > 1 else 0.0
    if variance > 0:
        return variance
    second_moment = float(magnitude.pow(2).mean())
    return second_moment if second_moment > 0 else 1.0


@fusable(lambda x: (x, *[torch.tensor(1.0)] * 2))
def fused_forward(weight: torch.Tensor, tau: torch.Tensor, inv_temperature: torch.Tensor):
    """v = w * sigma and sigma = sigmoid((w^2 - tau) / T), in one pass (sigma is kept for the backward)."""
    gate = torch.sigmoid((weight * weight - tau) * inv_temperature)
    return weight * gate, gate


@fusable(lambda x: (x, x * 0.5, x, *[torch.tensor(1.0)] * 2))
def fused_backward(weight: torch.Tensor, gate: torch.Tensor, grad: torch.Tensor, inv_temperature: torch.Tensor,
                   penalty_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dw and dL/dtau of one layer in one pass: LTP's gradients of v (`LTPSoftPrune`) plus those of the
    soft L0 penalty c * sum sigma in closed form (c = lam / N): c * sigma (1 - sigma) * 2 w / T for w,
    -c * sigma (1 - sigma) / T for tau."""
    slope = gate * (1 - gate) * inv_temperature
    grad_weight = grad * gate + penalty_scale * 2 * weight * slope
    return grad_weight, -((grad * weight + penalty_scale) * slope).sum()


class LTPFused(torch.autograd.Function):
    """Soft pruning with the penalty folded in: forward `fused_forward`, backward `fused_backward`. The
    temperature and the penalty's scale are 0-d tensors, so a compiled pass serves every layer and run."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, tau: torch.Tensor, inv_temperature: torch.Tensor,
                penalty_scale: torch.Tensor) -> torch.Tensor:
        out, gate = fused(fused_forward, weight.numel())(weight, tau, inv_temperature)
        ctx.save_for_backward(weight, gate, inv_temperature, penalty_scale)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, gate, inv_temperature, penalty_scale = ctx.saved_tensors
        grad_weight, grad_tau = fused(fused_backward, weight.numel())(weight, gate, grad.contiguous(),
                                                                       inv_temperature, penalty_scale)
        return grad_weight, grad_tau, None, None


class LearnedThreshold(nn.Module):
    """Parametrisation of a layer's weight: w -> w * sigmoid((w^2 - tau) / T) with tau = unit * s, once
    `activate` has fixed unit and T from the pretrained weight; w unchanged before that (dense)."""

    def __init__(self) -> None:
        super().__init__()
        # Frozen until `activate`: a parameter that takes no part in the loss would stall DDP's reducer.
        self.s = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.unit = 1.0  # u_l = Var(|w_l|) of the pretrained layer, set by `activate`
        self.temperature = 1.0  # T_l = T0 * u_l, set by `activate`
        self.active = False
        #: The fused path's constants as 0-d tensors (moved with the module): 1 / T_l, and c = lam / N, the
        #: scale of the soft L0 penalty whose gradient the fused backward adds (`LTPFused`).
        self.register_buffer("inv_temperature", torch.ones(()), persistent=False)
        self.register_buffer("penalty_scale", torch.zeros(()), persistent=False)
        self.fused = False

    def activate(self, weight: torch.Tensor, t0: float) -> None:
        self.unit = magnitude_variance(weight)
        self.set_temperature(t0 * self.unit)
        self.active = True
        self.s.requires_grad_(True)

    def set_temperature(self, temperature: float) -> None:
        self.temperature = temperature
        self.inv_temperature.fill_(1.0 / temperature)

    def tau(self) -> torch.Tensor:
        return self.unit * self.s

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return weight
        if self.fused:
            return LTPFused.apply(weight, self.tau(), self.inv_temperature, self.penalty_scale)
        return soft_prune(weight, self.tau(), self.temperature)


@dataclass
class LTPHparams(Hyperparameters):
    lam: float = field(default=0.1, metadata={
        "help": "lambda of the soft L0 penalty lam * sum_l sum_k sigmoid((w^2 - tau_l)/T_l) / N, N = prunable "
        "weights (>= 0)", "min": 0})
    t0: float = field(default=1.0, metadata={"help": "T0 of the temperature T_l = T0 * Var(|w_l|) (> 0)", "gt": 0})
    threshold_lr_factor: float = field(default=10.0, metadata={
        "help": "lr of the thresholds s_l (tau_l = Var(|w_l|) * s_l) = fine-tune lr * this (> 0)", "gt": 0})
    nonnegative_tau: bool = field(default=True, metadata={"help": "project tau_l to >= 0 after every step"})
    pretrain_iterations: int = field(default=10_000, metadata={
        "help": "budget 'paper': dense pretraining iterations (Caffe LeNet solver: 10,000)", "min": 1})
    finetune_iterations: int = field(default=14_000, metadata={
        "help": "budget 'paper': LTP fine-tuning iterations after the pretraining (>= 1)", "min": 1})
    finetune_lr_factor: float = field(default=1.0, metadata={
        "help": "fine-tune lr = protocol lr * this (> 0)", "gt": 0})


@register("ltp")
class LearnedThresholdPruning(FusedPenalty, PretrainThenPrune):
    citation = "Azarian, Bhalgat, Lee & Blankevoort, Learned Threshold Pruning, arXiv 2003.00075"
    hparams_class = LTPHparams
    knob = CompressionKnob("lam", raises=True, low=0.001, high=1000.0,
        note="weight of the soft L0 penalty that raises the learned thresholds")
    hp: LTPHparams
    provenance = "reconstruction"
    trained_network_differs = True  # soft-pruned in training, hard-pruned when deployed
    second, prefix = PRUNE, "finetune"

    def __init__(self, hparams: LTPHparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        #: (name, module, parametrisation) per prunable layer, in definition order.
        self.layers: list[tuple[str, nn.Module, LearnedThreshold]] = []
        self.weight_count = 0
        self.active = False

    # -- hooks --------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        self.layers = parametrize_weights(model, lambda _: LearnedThreshold())
        self.weight_count = sum(module.parametrizations.weight.original.numel() for _, module, _ in self.layers)
        self.active = False
        for _, _, threshold in self.layers:
            threshold.fused = self.fused
            threshold.penalty_scale.fill_(self.hp.lam / self.weight_count)
        return model

    def start(self, phase: Phase, model: nn.Module) -> None:  # noqa: ARG002
        for _, module, threshold in self.layers:
            threshold.activate(module.parametrizations.weight.original, self.hp.t0)
        self.active = True

    def own_group(self, phase: Phase) -> dict[str, Any]:
        """The thresholds, at lr * threshold_lr_factor."""
        return {"params": [threshold.s for _, _, threshold in self.layers],
                "lr": phase.lr * self.hp.threshold_lr_factor}

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active,
                "thresholds": [(t.unit, t.temperature, t.active) for _, _, t in self.layers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = state["active"]
        for (_, _, threshold), (unit, temperature, active) in zip(self.layers, state["thresholds"], strict=True):
            threshold.unit, threshold.active = unit, active
            threshold.set_temperature(temperature)
            threshold.s.requires_grad_(active)

    def plain_penalty(self) -> torch.Tensor | None:
        """lam * sum_l soft_l0_l / N as a tensor (the plain path's loss term; tests)."""
        if not self.active or self.hp.lam == 0:
            return None
        total = sum(soft_l0(module.parametrizations.weight.original, threshold.tau(), threshold.temperature)
                    for _, module, threshold in self.layers)
        return self.hp.lam * total / self.weight_count

    def after_step(self, step: int) -> None:  # noqa: ARG002
        if self.active and self.hp.nonnegative_tau:
            with torch.no_grad():
                for _, _, threshold in self.layers:
                    threshold.s.clamp_(min=0.0)

    # -- reading the state (`parametrised`: name, dense weight w, parametrisation) ------------------
    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The hard keep masks 1[w^2 > tau_l] (bool), per layer: what `deployed` keeps."""
        return {name: hard_mask(weight, threshold.tau()) for name, weight, threshold in parametrised(model)}

    def deployed(self, model: nn.Module) -> nn.Module:
        """The plain architecture with w * 1[w^2 > tau_l] (exact zeros); dense w during the pretrain phase."""
        return self.export(model, weights={name: weight * hard_mask(weight, threshold.tau())
                                           for name, weight, threshold in parametrised(model)})

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """w^2 - tau_l: positive exactly for the kept weights."""
        return {name: weight.square() - threshold.tau().detach()
                for name, weight, threshold in parametrised(model)}

    def thresholds(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Each layer's threshold on the weight magnitude, sqrt(max(tau_l, 0)), shape (1,): LTP's tau_l
        is a threshold on the *squared* weights (keep w^2 > tau_l, i.e. |w| > sqrt(tau_l)), so the square
        root is on the scale of the other methods' thresholds on |w|. 0 during the pretrain phase (tau_l
        is 0 there: only exact zeros are pruned)."""
        return {name: threshold.tau().detach().clamp(min=0.0).sqrt().reshape(1)
                for name, _, threshold in parametrised(model)}
