"""Dynamic Thresholding. J.-W. Park and J.-S. Lee, "Dynamic Thresholding for Learning Sparse Neural
Networks", ECAI 2020, pp. 1403-1410.

One trainable threshold t = sigmoid(s) per weight (or per layer, or one for the network). The forward
pass uses the hard pruning function Phi(w, t) = w * 1[|w| >= t] (Eq. 1); the backward pass uses the
derivatives of its erf-smoothed version (Eq. 5) with the temperature tau kept in them (the paper's
Eqs. 8-9 drop tau). The sparsity loss is L_p = -lambda * sum_i log t_i (Eq. 3) over all N weights, so a
shared threshold carries the penalty of every weight it serves (-lambda * N_l * log t_l).

Method card (where each value comes from):
- s init -5 (t = 0.0067), t = sigmoid(s): paper sec. 4.2.1.
- lam: not in the paper for MNIST; calibrated by sweep on lenet300 (docs/results.md, "Calibrating lambda").
- tau: not in the paper (tau = 0.1 only draws Fig. 2); calibrated with lam.
- biases are not thresholded: our reading (the paper is silent).

Cost (issue 18). The floor beyond a dense step, per prunable weight: in the forward pass one sigmoid and
one compare-and-multiply; in the backward pass the surrogate's two erfs and two Gaussians and the chain
through the sigmoid, with the penalty's gradient -lambda * (1 - t) per s in closed form; the optimizer
over twice the parameters. Individual thresholds take that path fused (`DTIndividual`): one compiled
pass forward (which keeps sigmoid(s) for the backward), one compiled pass backward that also adds the
penalty's gradient (so no penalty term enters the loss), erf by `erf_and_gaussian` sharing the
Gaussian's exponential, and torch's fused Adam/SGD (`Protocol.make_optimizer`). Layer and global
thresholds keep the plain path (`DTPruning`, autograd's sigmoid, `plain_penalty`), which is also the
reference the tests compare the fused path with (PRUNEBENCH_FUSED=0 forces it). On one CPU thread the
transcendental functions dominate: the fused backward is compute-bound, not memory-bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from prunebench.methods._common import FusedPenalty, fusable, fused, fused_paths
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from prunebench.knob import CompressionKnob
from prunebench.pruner import Hyperparameters, Pruner, parametrised, prunable_layers, register

SQRT_PI = math.sqrt(math.pi)


@fusable(lambda x: (x, x * 0.5, x, 0.1))
def surrogate_grads(weight: torch.Tensor, threshold: torch.Tensor, grad: torch.Tensor, tau: float):
    """grad * dPhi~/dw and grad * dPhi~/dt (unreduced), the derivatives of Eq. 5 with tau kept."""
    minus = (weight - threshold) / tau
    plus = (weight + threshold) / tau
    e_minus = torch.exp(-minus * minus)
    e_plus = torch.exp(-plus * plus)
    scale = weight / (tau * SQRT_PI)
    d_weight = 0.5 * (torch.erf(minus) - torch.erf(plus) + 2.0) + scale * (e_minus - e_plus)
    d_threshold = -scale * (e_minus + e_plus)
    return grad * d_weight, grad * d_threshold


#: Abramowitz & Stegun 7.1.26: erf(x) = 1 - (a1 k + ... + a5 k^5) exp(-x^2), k = 1 / (1 + p x), x >= 0.
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf_and_gaussian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """erf(x) and exp(-x^2), sharing the exponential: erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7
    in exact arithmetic, 5.7e-7 in float32 against torch.erf's 5.6e-8). The surrogate needs both at
    (w - t) / tau and (w + t) / tau: two exponentials per weight instead of two erfs and two exponentials."""
    gaussian = torch.exp(-x * x)
    k = 1.0 / (1.0 + ERF_P * x.abs())
    poly = k * (ERF_A[0] + k * (ERF_A[1] + k * (ERF_A[2] + k * (ERF_A[3] + k * ERF_A[4]))))
    return torch.copysign(1.0 - poly * gaussian, x), gaussian


@fusable(lambda x: (x, x, 1.0))
def pruned_forward(weight: torch.Tensor, s: torch.Tensor, t_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Phi(w, t) with t = t_max * sigmoid(s), in one pass; also sigmoid(s), which the backward reuses."""
    sig = torch.sigmoid(s)
    return weight * (weight.abs() >= t_max * sig), sig


@fusable(lambda x: (x, x, x, 1.0, 0.1, 0.0))
def pruned_backward(weight: torch.Tensor, sig: torch.Tensor, grad: torch.Tensor, t_max: float, tau: float,
                    lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dw and dL/ds of one layer with individual thresholds, in one pass, from sig = sigmoid(s) of
    the forward: the surrogate's derivatives (as `surrogate_grads`, erf by `erf_and_gaussian`) chained
    through t = t_max * sig, plus the penalty's gradient in closed form,
    d(-lam * log t)/ds = -lam * (1 - sig)."""
    threshold = t_max * sig
    erf_minus, e_minus = erf_and_gaussian((weight - threshold) / tau)
    erf_plus, e_plus = erf_and_gaussian((weight + threshold) / tau)
    scale = weight / (tau * SQRT_PI)
    grad_weight = grad * (0.5 * (erf_minus - erf_plus + 2.0) + scale * (e_minus - e_plus))
    grad_threshold = grad * (-scale * (e_minus + e_plus))
    return grad_weight, grad_threshold * (t_max * sig * (1 - sig)) - lam * (1 - sig)


class DTIndividual(torch.autograd.Function):
    """Individual thresholds, fused: forward `pruned_forward`, backward `pruned_backward` (which also
    carries the sparsity penalty's gradient, so the method adds no penalty term to the loss)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, s: torch.Tensor, t_max: float, tau: float, lam: float) -> torch.Tensor:
        out, sig = fused(pruned_forward, weight.numel())(weight, s, t_max)
        ctx.save_for_backward(weight, sig)
        ctx.constants = (t_max, tau, lam)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, sig = ctx.saved_tensors
        grad_weight, grad_s = fused(pruned_backward, weight.numel())(weight, sig, grad.contiguous(), *ctx.constants)
        return grad_weight, grad_s, None, None, None


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
        grads = fused(surrogate_grads, weight.numel())
        grad_weight, grad_threshold = grads(weight, threshold.expand_as(weight), grad, ctx.tau)
        reduced = grad_threshold.sum_to_size(threshold.shape) if ctx.needs_input_grad[1] else None
        return grad_weight, reduced, None


def smooth_pruning(weight: torch.Tensor, threshold: torch.Tensor, tau: float) -> torch.Tensor:
    """Phi~(w, t) of Eq. 5, for reference and tests (autograd of it is what DTPruning's backward equals)."""
    return weight / 2 * (torch.erf((weight - threshold) / tau) - torch.erf((weight + threshold) / tau) + 2)


class ThresholdedWeight(nn.Module):
    """Parametrisation of a layer's weight: returns Phi(w, sigmoid(s)). `s` may be shared."""

    def __init__(self, s: nn.Parameter, tau: float, t_max: float = 1.0, fused_lam: float | None = None) -> None:
        super().__init__()
        self.s = s
        self.tau = tau
        self.t_max = t_max
        #: Individual thresholds: the fused path (`DTIndividual`), whose backward also adds the penalty's
        #: gradient lam * d(-log t)/ds; None: the plain path (`DTPruning` through autograd's sigmoid).
        self.fused_lam = fused_lam

    def threshold(self) -> torch.Tensor:
        return self.t_max * torch.sigmoid(self.s)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.fused_lam is not None:
            return DTIndividual.apply(weight, self.s, self.t_max, self.tau, self.fused_lam)
        return DTPruning.apply(weight, self.threshold(), self.tau)


def layer_thresholds(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """t = t_max * sigmoid(s) of every thresholded layer of `model` (detached copies): shaped like the
    layer's weight for individual thresholds, shape (1,) for a layer's shared threshold, and the one
    shared value (shape (1,)) under each layer's name for the global one. None when no layer of `model`
    carries a `ThresholdedWeight`."""
    return {name: parametrisation.threshold().detach().clone() for name, _, parametrisation in parametrised(model)
            if isinstance(parametrisation, ThresholdedWeight)} or None


@dataclass
class DynThreshHparams(Hyperparameters):
    lam: float = field(default=5e-4, metadata={
        "help": "lambda of the sparsity loss -lambda*sum(log t) (>= 0)", "min": 0})
    tau: float = field(default=0.03, metadata={"help": "temperature of the erf surrogate (> 0)", "gt": 0})
    scale: str = field(default="individual", metadata={
        "help": "threshold scale: one per weight, per layer, or one for the network",
        "choices": ("individual", "layer", "global")})
    s_init: float = field(default=-5.0, metadata={"help": "initial s of t = t_max * sigmoid(s) (paper: -5)"})
    t_max: float = field(default=1.0, metadata={
        "help": "upper bound of the thresholds, t = t_max * sigmoid(s) (paper: 1, 'sufficient considering the "
        "scales of weight values'; XOR's weights grow past 1)", "gt": 0})


@register("dynthresh")
class DynamicThresholding(FusedPenalty, Pruner):
    citation = "Park & Lee, Dynamic Thresholding for Learning Sparse Neural Networks, ECAI 2020"
    hparams_class = DynThreshHparams
    knob = CompressionKnob("lam", raises=True, low=1e-6, high=0.1,
        note="lambda of the sparsity loss -lambda*sum(log t) that raises the thresholds")
    hp: DynThreshHparams

    def attach(self, model: nn.Module) -> nn.Module:
        layers = prunable_layers(model)
        # (s, number of weights each element of s serves): the penalty weight of a shared threshold.
        self.threshold_params: list[tuple[nn.Parameter, float]] = []
        shared = None
        if self.hp.scale == "global":
            total = sum(m.weight.numel() for _, m in layers)
            shared = nn.Parameter(torch.full((1,), self.hp.s_init))
            self.threshold_params.append((shared, float(total)))
        for _, module in layers:
            if self.hp.scale == "individual":
                s = nn.Parameter(torch.full_like(module.weight, self.hp.s_init))
                self.threshold_params.append((s, 1.0))
            elif self.hp.scale == "layer":
                s = nn.Parameter(torch.full((1,), self.hp.s_init))
                self.threshold_params.append((s, float(module.weight.numel())))
            else:
                s = shared
            fused_lam = self.hp.lam if self.fused else None
            parametrize.register_parametrization(module, "weight",
                                                 ThresholdedWeight(s, self.hp.tau, self.hp.t_max, fused_lam))
        return model

    @property
    def fused(self) -> bool:
        """Individual thresholds take the fused path (`DTIndividual`), unless PRUNEBENCH_FUSED=0."""
        return self.hp.scale == "individual" and fused_paths()

    def plain_penalty(self) -> torch.Tensor | None:
        """L_p = -lam * sum_i log t_i as a tensor (the plain path's loss term; tests and reports)."""
        if self.hp.lam == 0:
            return None
        # -log(t_max * sigmoid(s)) = softplus(-s) - log(t_max); the constant has no gradient and is dropped.
        total = sum(weight * F.softplus(-s).sum() for s, weight in self.threshold_params)
        return self.hp.lam * total

    def threshold_of(self, module: nn.Module) -> torch.Tensor:
        """The threshold tensor t of a parametrised layer (broadcastable to its weight)."""
        return module.parametrizations.weight[0].threshold()

    def deployed(self, model: nn.Module) -> nn.Module:
        return self.export(model)  # reading .weight applies the hard pruning function

    def thresholds(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """t = t_max * sigmoid(s) per prunable layer (`layer_thresholds`; for shared scales the shared
        value, shape (1,))."""
        return layer_thresholds(model)
