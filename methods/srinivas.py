"""Gate-variable pruning. S. Srinivas, A. Subramanya and R. V. Babu, "Training Sparse Neural Networks",
CVPR Workshops 2017, pp. 138-145 (arXiv 1611.06694). No public code by the authors is known.

Provenance: a RECONSTRUCTION. The paper's method section could not be read; only the abstract is
verified ("gate variables" select the parameters; the scheme is equivalent to a spike-and-slab prior;
tested on small and large networks). Everything else below is recall [R] from METHODS.md or the suite's
own choice [I], and every open point is a hyperparameter. Check the [R] items against the PDF.

Every prunable weight w_i gets a gate g_i in [0, 1] (biases are not gated). Starting from a trained dense
network, training draws z_i ~ Bernoulli(g_i) at every forward pass and computes with w_i z_i; the draw is
differentiated straight through (dz/dg := 1), so
    dL/dg_i = dL/d(w_i z_i) * w_i,    dL/dw_i = dL/d(w_i z_i) * z_i.
The loss adds lambda1 * sum g (1 - g), which pushes every gate to 0 or 1, and lambda2 * sum g, which pushes
them to 0 (the spike), plus ordinary weight decay on w (the slab). Gates are clipped to [0, 1] after every
optimizer step. The deployed network keeps w_i where g_i > 0.5 and zeroes the rest exactly.

Method card (where each value comes from):
- one gate per weight of every Linear / Conv2d layer, biases not gated, z ~ Bernoulli(g) in training,
  straight-through gradients as above, gates clipped to [0, 1] after every step [R]. Implemented by
  `StraightThroughGate` (a custom autograd Function) inside a `torch.nn.utils.parametrize`
  parametrisation of each layer's weight [I, implementation]. One draw per gate per optimizer step, shared
  by the whole minibatch (as a DropConnect mask per step, not per example) [I]. The draw uses torch's
  global generator (`torch.bernoulli`), which the harness seeds and checkpoints, so a stopped run
  continues bit for bit and every DDP rank draws the same z [I].
- `gate_init` = 1.0: "initialised near 1" [R]; exactly 1 [I], so the gated phase starts from the
  pretrained network itself (z = 1 everywhere, no DropConnect noise before the gates have learnt
  anything); the straight-through gradient still reaches a gate at 1, and the clip holds it at 1 only
  while its gradient pushes upwards (on XOR as above, gate_init 0.9 keeps 12 / 10 weights at 99.7% / 98.0%)
  [I]. Must exceed `deploy_threshold` (the pretrained network deploys dense).
- regulariser lambda1 * sum g (1 - g) + lambda2 * sum g [R]. `reduction` "mean" (default): divided by N,
  the number of gates (= prunable weights) of the network, as ltp normalises its penalty, so one lambda
  means the same per-gate pressure on XOR's 15 weights and on LeNet-5's 430,500 [I]; "sum" is the plain
  sum. The penalty's gradient on a gate is (lambda2 + lambda1 (1 - 2 g)) / N: at g = 1 the net push is
  lambda2 - lambda1, so with lambda1 >= lambda2 a gate at 1 moves down only if the task gradient pushes it
  [I, arithmetic].
  `lambda1` = 0.01, `lambda2` = 0.1 (dataclass defaults): not published [R: "unknown; calibrate"]; chosen on
  XOR, 300 iterations, budget "equal" (125 pretrain + 175 gated steps): 13 / 11 of the 15 weights kept at
  99.5% / 99.9% accuracy (seeds 0 / 1); lambda2 0.2 keeps 7 / 8 but at ~75% accuracy, lambda2 1 prunes
  everything [I]. Per-task values belong in the task's method_defaults; none are calibrated here (MNIST
  and larger: to be swept).
- `weight_decay` = 0: the slab's L2, (weight_decay / 2) * sum w^2 over the gated weights, added to the loss
  in the gated phase only [R for "ordinary weight decay on w"; 0 is I]. It is not normalised by N
  (gradient weight_decay * w, like an optimizer's weight decay) [I]. Default 0 because the task protocol's
  own weight decay already applies to w (and to the biases) in both phases, so with 0 the weights are
  treated as in every other method; set it for extra decay on the gated weights only.
- the gates train in their own optimizer parameter group at the gated phase's lr * `gate_lr_factor` (1) and
  with no weight decay (the protocol's weight decay would be a second, unlabelled sparsity pressure on g)
  [I]. With Adam a gate moves at most about its lr per step, so at MNIST's lr 1e-3 a gate crosses 0.5 from 1
  in >= 500 steps, well inside the gated phase of either budget [I].
- gates are not trained or applied in the pretrain phase: the network is dense (the parametrisation
  returns w), the gates have requires_grad False (no gradient, the optimizer skips them, DDP's reducer
  ignores them) and the penalty is off [I].
- schedule: budget "paper": pretrain dense `pretrain_iterations` = 10,000 (the stock Caffe LeNet solver,
  as dns / ltp) then gated training `gated_iterations` = 14,000 [I]: the paper's schedule is unknown [R];
  14,000 is the post-pretraining budget the suite gives DNS on LeNet-300-100 and ltp, so the methods are
  compared at equal cost. Budget "equal": the same split scaled into the protocol's iterations (as ltp).
  The gated phase starts a fresh optimizer (a new training run from the pretrained net) at the protocol's
  lr * `gated_lr_factor` (1) [I]. lambda1 and lambda2 are constant (no annealing schedule) [I]. No
  retraining phase after the gates: the deployed mask is read off the gated network [I].
- deployment: keep w_i where g_i > `deploy_threshold` (0.5) [R]; a gate exactly at the threshold is pruned
  (strict >) [I]. The kept weights are w_i as trained (not w_i g_i: the gate is a probability of keeping,
  and a kept weight was trained with z = 1) [I].
- evaluation: the harness's accuracy is the deployed network's (mask g > 0.5). The network as trained is
  stochastic, so `trained_network_differs` is True; its eval-mode forward uses the expected weight w * g
  (no Bernoulli draw, so evaluating never touches the generator) and the harness records that accuracy
  as "trained_accuracy" [I].
- published (DT paper Table 2 [V]): LeNet-5 +0.01 pp at 24x; AlexNet +0.31 pp at 10.3x.
- calibration (issue 19, seed 0, budget "equal" 10,000 Adam steps, lambda1 0.01): LeNet-300-100
  (`prunebench sweep --methods srinivas --tasks lenet300 --seeds 0 --grid lambda2=3,5,10,30,100,1000 --db
  leaderboards/foundation/calibration.sqlite`; dense of the same seed there 97.73%): lambda2 3 13.4x at
  97.97%; 5 22.4x at 97.92%; 10 46.2x at 97.16%; 30 126x at 96.30%; 100 328x at 92.87%; 1000 collapsed (29%).
  Nothing is published for LeNet-300-100; default lambda2 5, the most compression tried within the
  leaderboards' 0.4 pp. LeNet-5 (`--grid lambda2=3,2` into leaderboards/foundation/runs.sqlite; dense of the
  same seed 99.35%): lambda2 3 31.4x at 99.17%; 2 21.0x at 99.30%, against the published 24x at +0.01 pp:
  default lambda2 2.
- cost: beyond a dense step, per gated weight, one Bernoulli draw and a multiply forward, two multiplies
  backward (dL/dw, dL/dg), the regulariser's value and gradient (a few elementwise passes) and the clip [I].
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from prunebench.methods._common import PretrainThenPrune
from torch import nn

from prunebench.knob import CompressionKnob
from prunebench.protocol import Phase
from prunebench.pruner import Hyperparameters, parametrised, parametrize_weights, register

if TYPE_CHECKING:
    from prunebench.tasks import Task

GATED = "gated"
REDUCTIONS = ("mean", "sum")


class StraightThroughGate(torch.autograd.Function):
    """Forward w * z for a given draw z in {0, 1}; backward straight through the draw (dz/dg := 1):
    dL/dw = dL/d(wz) * z and dL/dg = dL/d(wz) * w. z gets no gradient."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, gate: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, z)
        return weight * z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, z = ctx.saved_tensors
        grad_weight = grad * z if ctx.needs_input_grad[0] else None
        grad_gate = grad * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_gate, None


def gated_weight(weight: torch.Tensor, gate: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """w * z with z ~ Bernoulli(g) (drawn from torch's global generator unless given), straight-through."""
    if z is None:
        z = torch.bernoulli(gate.detach())
    return StraightThroughGate.apply(weight, gate, z)


def gate_regulariser(gate: torch.Tensor, lambda1: float, lambda2: float) -> torch.Tensor:
    """sum_i lambda1 * g_i (1 - g_i) + lambda2 * g_i (summed, not normalised)."""
    return (gate * (lambda1 * (1.0 - gate) + lambda2)).sum()


def keep_mask(gate: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The deployed keep mask 1[g > threshold] (bool); a gate exactly at the threshold is pruned."""
    return gate.detach() > threshold


class BernoulliGate(nn.Module):
    """Parametrisation of a layer's weight: w -> w * z, z ~ Bernoulli(g), in training once `active`;
    w * g (the expected weight) in eval mode; w unchanged before the gated phase (dense)."""

    def __init__(self, weight: torch.Tensor, gate_init: float) -> None:
        super().__init__()
        # Frozen until activated: a parameter that takes no part in the loss would stall DDP's reducer.
        self.gate = nn.Parameter(torch.full_like(weight, gate_init), requires_grad=False)
        self.active = False

    def set_active(self, active: bool) -> None:
        self.active = active
        self.gate.requires_grad_(active)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return weight
        if not self.training:
            return weight * self.gate
        return gated_weight(weight, self.gate)


@dataclass
class SrinivasHparams(Hyperparameters):
    gate_init: float = field(default=1.0, metadata={
        "help": "initial value of every gate g (in (deploy_threshold, 1]; paper: 'near 1')"})
    lambda1: float = field(default=0.01, metadata={
        "help": "lambda1 of the bimodal term lambda1 * sum g(1-g), pushing gates to 0 or 1 (>= 0)", "min": 0})
    lambda2: float = field(default=0.1, metadata={
        "help": "lambda2 of the sparsity term lambda2 * sum g (>= 0)", "min": 0})
    reduction: str = field(default="mean", metadata={
        "help": "regulariser over the gates: 'mean' divides the sums by the number of gates, 'sum' does not",
        "choices": REDUCTIONS})
    weight_decay: float = field(default=0.0, metadata={
        "help": "extra L2 on the gated weights, (weight_decay/2) * sum w^2, in the gated phase (>= 0; the "
        "protocol's weight decay applies besides)", "min": 0})
    gate_lr_factor: float = field(default=1.0, metadata={
        "help": "lr of the gates = gated-phase lr * this (> 0)", "gt": 0})
    deploy_threshold: float = field(default=0.5, metadata={
        "help": "deployed mask keeps w where g > this (in [0, 1))", "min": 0, "lt": 1})
    pretrain_iterations: int = field(default=10_000, metadata={
        "help": "budget 'paper': dense pretraining iterations (Caffe LeNet solver: 10,000) (>= 1)", "min": 1})
    gated_iterations: int = field(default=14_000, metadata={
        "help": "budget 'paper': gated training iterations after the pretraining (>= 1)", "min": 1})
    gated_lr_factor: float = field(default=1.0, metadata={
        "help": "gated-phase lr = protocol lr * this (> 0)", "gt": 0})

    def validate(self) -> None:
        super().validate()
        if not self.deploy_threshold < self.gate_init <= 1:
            raise ValueError(f"gate_init must be in (deploy_threshold, 1] = ({self.deploy_threshold}, 1], "
                             f"got {self.gate_init}")


@register("srinivas")
class SrinivasGates(PretrainThenPrune):
    citation = ("Srinivas, Subramanya & Babu, Training Sparse Neural Networks, CVPR Workshops 2017, pp. 138-145 "
                "(arXiv 1611.06694)")
    hparams_class = SrinivasHparams
    knob = CompressionKnob("lambda2", raises=True, low=0.001, high=1000.0,
        note="weight of the sparsity term lambda2*sum(g) on the gates")
    hp: SrinivasHparams
    provenance = "reconstruction"
    trained_network_differs = True  # stochastic gates (expected w * g in eval) vs the hard mask g > 0.5
    second, prefix = GATED, "gated"

    def __init__(self, hparams: SrinivasHparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        #: (name, module, parametrisation) per prunable layer, in definition order.
        self.layers: list[tuple[str, nn.Module, BernoulliGate]] = []
        self.gate_count = 0
        self.active = False

    # -- hooks --------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        self.layers = parametrize_weights(model, lambda module: BernoulliGate(module.weight, self.hp.gate_init))
        self.gate_count = sum(gate.gate.numel() for _, _, gate in self.layers)
        self.active = False
        return model

    def start(self, phase: Phase, model: nn.Module) -> None:  # noqa: ARG002
        self._set_active(True)

    def _set_active(self, active: bool) -> None:
        self.active = active
        for _, _, gate in self.layers:
            gate.set_active(active)

    def own_group(self, phase: Phase) -> dict[str, Any]:
        """The gates, at lr * gate_lr_factor, with no weight decay."""
        return {"params": [gate.gate for _, _, gate in self.layers], "lr": phase.lr * self.hp.gate_lr_factor,
                "weight_decay": 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set_active(bool(state["active"]))

    def penalty(self) -> torch.Tensor | None:
        """lambda1 * sum g(1-g) + lambda2 * sum g (divided by the gate count under reduction 'mean'), plus
        (weight_decay / 2) * sum w^2 over the gated weights; None in the pretrain phase or when all are 0."""
        if not self.active:
            return None
        total: torch.Tensor | None = None
        if self.hp.lambda1 or self.hp.lambda2:
            total = sum(gate_regulariser(gate.gate, self.hp.lambda1, self.hp.lambda2) for _, _, gate in self.layers)
            if self.hp.reduction == "mean":
                total = total / self.gate_count
        if self.hp.weight_decay:
            decay = 0.5 * self.hp.weight_decay * sum(module.parametrizations.weight.original.square().sum()
                                                     for _, module, _ in self.layers)
            total = decay if total is None else total + decay
        return total

    def after_step(self, step: int) -> None:  # noqa: ARG002
        if self.active:
            with torch.no_grad():
                for _, _, gate in self.layers:
                    gate.gate.clamp_(0.0, 1.0)

    # -- reading the state --------------------------------------------------------------------
    def _layers_of(self, model: nn.Module) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, dense weight w, gates g), detached, of each prunable layer of `model` (attached by this pruner)."""
        return ((name, weight, gate.gate.detach()) for name, weight, gate in parametrised(model))

    def gates(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The gates g per layer (detached copies)."""
        return {name: gate.clone() for name, _, gate in self._layers_of(model)}

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The deployed keep masks 1[g > deploy_threshold] (bool), per layer."""
        return {name: keep_mask(gate, self.hp.deploy_threshold) for name, _, gate in self._layers_of(model)}

    def deployed(self, model: nn.Module) -> nn.Module:
        """The plain architecture with w * 1[g > deploy_threshold] (exact zeros; dense in the pretrain phase,
        where every gate is still gate_init > deploy_threshold)."""
        weights = {name: torch.where(keep_mask(gate, self.hp.deploy_threshold), weight, torch.zeros_like(weight))
                   for name, weight, gate in self._layers_of(model)}
        return self.export(model, weights=weights)

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """g - deploy_threshold: positive exactly for the kept weights."""
        return {name: gate - self.hp.deploy_threshold for name, _, gate in self._layers_of(model)}
