"""Dynamic Thresholding. J.-W. Park and J.-S. Lee, "Dynamic Thresholding for Learning Sparse Neural
Networks", ECAI 2020, pp. 1403-1410.

One trainable threshold t = sigmoid(s) per weight (or per layer, or one for the network). The forward
pass uses the hard pruning function Phi(w, t) = w * 1[|w| >= t] (Eq. 1); the backward pass uses the
derivatives of its erf-smoothed version (Eq. 5) with the temperature tau kept in them (the paper's
Eqs. 8-9 drop tau). The sparsity loss is L_p = -lambda * sum_i log t_i (Eq. 3) over all N weights, so a
shared threshold carries the penalty of every weight it serves (-lambda * N_l * log t_l).

Method card (where each value comes from):
- s init -5 (t = 0.0067), t = sigmoid(s): paper sec. 4.2.1.
- lam: not in the paper for MNIST; calibrated by sweep on lenet300 (README, "Calibration").
- tau: not in the paper (tau = 0.1 only draws Fig. 2); calibrated with lam.
- biases are not thresholded: our reading (the paper is silent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from prunebench.pruner import Hyperparameters, Pruner, prunable_layers, register, require

SQRT_PI = math.sqrt(math.pi)


class DTPruning(torch.autograd.Function):
    """Hard pruning forward, erf-smoothed gradient backward (for w and for t, reduced to t's shape)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, threshold: torch.Tensor, tau: float) -> torch.Tensor:
        ctx.save_for_backward(weight, threshold)
        ctx.tau = tau
        return weight * (weight.abs() >= threshold)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, threshold = ctx.saved_tensors
        tau = ctx.tau
        minus = (weight - threshold) / tau
        plus = (weight + threshold) / tau
        e_minus = torch.exp(-minus * minus)
        e_plus = torch.exp(-plus * plus)
        scale = weight / (tau * SQRT_PI)
        d_weight = 0.5 * (torch.erf(minus) - torch.erf(plus) + 2.0) + scale * (e_minus - e_plus)
        d_threshold = -scale * (e_minus + e_plus)
        grad_threshold = (grad * d_threshold).sum_to_size(threshold.shape) if ctx.needs_input_grad[1] else None
        return grad * d_weight, grad_threshold, None


def smooth_pruning(weight: torch.Tensor, threshold: torch.Tensor, tau: float) -> torch.Tensor:
    """Phi~(w, t) of Eq. 5, for reference and tests (autograd of it is what DTPruning's backward equals)."""
    return weight / 2 * (torch.erf((weight - threshold) / tau) - torch.erf((weight + threshold) / tau) + 2)


class ThresholdedWeight(nn.Module):
    """Parametrisation of a layer's weight: returns Phi(w, sigmoid(s)). `s` may be shared."""

    def __init__(self, s: nn.Parameter, tau: float) -> None:
        super().__init__()
        self.s = s
        self.tau = tau

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return DTPruning.apply(weight, torch.sigmoid(self.s), self.tau)


@dataclass
class DynThreshHparams(Hyperparameters):
    lam: float = field(default=3e-4, metadata={"help": "lambda of the sparsity loss -lambda*sum(log t) (>= 0)"})
    tau: float = field(default=0.03, metadata={"help": "temperature of the erf surrogate (> 0)"})
    scale: str = field(default="individual", metadata={
        "help": "threshold scale: one per weight, per layer, or one for the network",
        "choices": ("individual", "layer", "global")})
    s_init: float = field(default=-5.0, metadata={"help": "initial s of t = sigmoid(s) (paper: -5)"})

    def validate(self) -> None:
        super().validate()
        require(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        require(self.tau > 0, f"tau must be > 0, got {self.tau}")


@register("dynthresh")
class DynamicThresholding(Pruner):
    citation = "Park & Lee, Dynamic Thresholding for Learning Sparse Neural Networks, ECAI 2020"
    hparams_class = DynThreshHparams
    hp: DynThreshHparams

    def attach(self, model: nn.Module) -> nn.Module:
        layers = prunable_layers(model)
        # (s, number of weights each element of s serves): the penalty weight of a shared threshold.
        self.thresholds: list[tuple[nn.Parameter, float]] = []
        shared = None
        if self.hp.scale == "global":
            total = sum(m.weight.numel() for _, m in layers)
            shared = nn.Parameter(torch.full((1,), self.hp.s_init))
            self.thresholds.append((shared, float(total)))
        for _, module in layers:
            if self.hp.scale == "individual":
                s = nn.Parameter(torch.full_like(module.weight, self.hp.s_init))
                self.thresholds.append((s, 1.0))
            elif self.hp.scale == "layer":
                s = nn.Parameter(torch.full((1,), self.hp.s_init))
                self.thresholds.append((s, float(module.weight.numel())))
            else:
                s = shared
            parametrize.register_parametrization(module, "weight", ThresholdedWeight(s, self.hp.tau))
        return model

    def penalty(self) -> torch.Tensor | None:
        if self.hp.lam == 0:
            return None
        # -log(sigmoid(s)) = softplus(-s), numerically stable.
        total = sum(weight * F.softplus(-s).sum() for s, weight in self.thresholds)
        return self.hp.lam * total

    def threshold_of(self, module: nn.Module) -> torch.Tensor:
        """The threshold tensor t of a parametrised layer (broadcastable to its weight)."""
        return torch.sigmoid(module.parametrizations.weight[0].s)

    def deployed(self, model: nn.Module) -> nn.Module:
        return self.export(model)  # reading .weight applies the hard pruning function
