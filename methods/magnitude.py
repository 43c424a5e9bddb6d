"""Iterative magnitude pruning. S. Han, J. Pool, J. Tran and W. J. Dally, "Learning both Weights and
Connections for Efficient Neural Networks", NeurIPS 2015 (arXiv 1506.02626).

Train the dense network, then repeat K times: remove in each layer the connections whose magnitude is
at most a per-layer threshold, and retrain the survivors with the mask fixed. The threshold of layer l
is a "quality parameter" times the standard deviation of the layer's weights, theta_l = q_l * std(W_l);
the most sensitive layer (the first) gets the smallest q. Surviving weights keep their trained values
(no re-initialisation), and pruned weights stay exactly zero: the mask is re-applied after every
optimizer step and the optimizer's state (Adam moments, momentum) is zeroed at masked entries.

Method card (where each value comes from):
- threshold = q_l * std(W_l), mask = 1[|W| > threshold], retrain with the mask fixed: paper sec. 3-4 [S].
- std: population std of the layer's weights after dense training, measured once before the first
  prune [I] (the paper does not say which std an iterated prune uses).
- rounds K = 5, and round k of K uses the threshold (k/K) * q_l * std(W_l), so the last round prunes
  at exactly q_l * std: the suite protocol of METHODS.md sec. 2 [I]. A linear ramp in q shrinks a
  roughly Gaussian layer about geometrically (keep 73 -> 48 -> 29 -> 16 -> 8% for q = 1.75).
- quality q_l: not published for the LeNets. The per-task defaults in prunebench/tasks.py are
  Gaussian quantiles q = Phi^-1(1 - keep/2) of the published keep ratios (LeNet-300-100 8/9/26%,
  LeNet-5 66/12/8/19%, Han Tables 1-2 [R] via the Sparse VD README [S]) [I]; not yet calibrated by a
  full run. The dataclass default q = 1 is a placeholder [I].
- retrain lr = lr / 10: the suite protocol of METHODS.md sec. 2 [I] (AlexNet used lr / 100 [S]).
- budget "equal": the dense phase takes `pretrain_fraction` (1/2) of the iterations and the K rounds
  share the rest equally [I].
- budget "paper": dense phase 10,000 iterations, the stock Caffe LeNet solver that Han used [R];
  `retrain_iterations` = 4,600 per round [I], so that 5 rounds retrain about 2.3x the dense budget,
  the ratio of Han's AlexNet retraining (173 h) to its dense training (75 h) [S].
- biases are not pruned (the suite's choice for every method). Han found L2 best for retraining [S];
  the suite protocol has no weight decay, so none is added here.
- each round starts with a fresh optimizer (a new solver run, as a Caffe retrain would) [I].
- per-layer q for deep networks [I]: `layer_rule` "first-conv-fc-last" takes 4 values (first layer,
  every other conv, every other fc, last layer), following Han's finding that the first conv is the
  most sensitive layer and fc layers prune far harder than conv layers (AlexNet keeps 84% of conv1,
  35-38% of conv2-5, 9% of fc6-7 and 25% of fc8; VGG-16 58% of conv1_1, 22-53% of the other convs, 4%
  of fc6-7, 23% of fc8: Han Tables 4-5 [R]). The default "each" is the one-or-one-per-layer rule of
  every run before it, so their identities and results do not change. The per-task q of VGG-like,
  AlexNet and ResNet-56 are Gaussian quantiles of those keep ratios, as for the LeNets [I, uncalibrated].
- BatchNorm layers (VGG-like, ResNet-56) are copied into the deployed network as trained; grouped
  convolutions (AlexNet) need nothing special (the mask is per weight).

Cost (issue 18). Beyond a dense step: the mask multiply per prunable weight (forward, and on the
gradient so pruned weights stay zero), and a sort of each layer's magnitudes at each pruning event.
Measured at about 1x a dense step (leaderboards/method-cost.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from prunebench.methods._common import LAYER_RULES, layer_values, per_layer_values
from torch import nn

from prunebench.knob import CompressionKnob
from prunebench.protocol import Phase, Protocol
from prunebench.pruner import (  # noqa: F401 (zero_pruned: plugins import it from here)
    Hyperparameters,
    MaskedPruner,
    prunable_layers,
    register,
    zero_pruned,
)

if TYPE_CHECKING:
    from prunebench.tasks import Task

RETRAIN_PREFIX = "retrain-"


def magnitude_threshold(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Han's per-layer threshold: quality * (population) standard deviation of the layer's weights."""
    return quality * weight.detach().std(correction=0)


def magnitude_mask(weight: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Keep mask 1[|w| > threshold] (a weight at exactly the threshold is pruned)."""
    return (weight.detach().abs() > threshold).to(weight.dtype)


@dataclass
class MagnitudeHparams(Hyperparameters):
    rounds: int = field(default=5, metadata={"help": "number of prune/retrain rounds K (>= 1)", "min": 1})
    quality: tuple[float, ...] = field(default=(1.0,), metadata={
        "help": "quality parameter q of the threshold q*std(W): one value for every layer, or one per "
        "prunable layer in order, e.g. '0.44,1.55,1.75,1.31' (>= 0); see layer_rule", "min": 0})
    layer_rule: str = field(default="each", metadata={"choices": LAYER_RULES, "help":
        "how per-layer values map onto the layers: 'each' (1 value or one per layer) or 'first-conv-fc-last' "
        "(1 value or 4: first layer, other conv layers, other fc layers, last layer)"})
    retrain_lr_factor: float = field(default=0.1, metadata={
        "help": "retraining lr = protocol lr * this (> 0)", "gt": 0})
    pretrain_fraction: float = field(default=0.5, metadata={
        "help": "budget 'equal': share of the iterations for dense training; the rounds share the rest",
        "gt": 0, "lt": 1})
    pretrain_iterations: int = field(default=10_000, metadata={
        "help": "budget 'paper': dense training iterations (Caffe LeNet solver: 10,000)", "min": 1})
    retrain_iterations: int = field(default=4_600, metadata={
        "help": "budget 'paper': retraining iterations per round", "min": 1})

    def __post_init__(self) -> None:
        self.quality = per_layer_values(self.quality, float)


@register("magnitude")
class MagnitudePruning(MaskedPruner):
    citation = ("Han, Pool, Tran & Dally, Learning both Weights and Connections for Efficient Neural Networks, "
                "NeurIPS 2015")
    hparams_class = MagnitudeHparams
    knob = CompressionKnob("quality", raises=True, low=0.05, high=5.0, scale=True, exact_cut=True,
        note="quality q of the threshold q*std(W), one factor on the calibrated per-layer q; the kept weights are "
        "the largest |w|, so a trained network can also be cut by |w| (without the last retraining)")
    hp: MagnitudeHparams
    masks_key = "masks"

    def __init__(self, hparams: MagnitudeHparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        self.quality = layer_values(self.hp.quality, prunable_layers(task.architecture()), "quality",
                                    self.hp.layer_rule)
        #: name -> std of the layer's weights after dense training (the threshold's unit).
        self.reference_std: dict[str, torch.Tensor] = {}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """name -> keep mask (the weight's dtype and shape); empty until the first prune."""
        return self.keep

    # -- schedule -----------------------------------------------------------------------------
    def phases(self, protocol: Protocol) -> list[Phase]:
        rounds = self.hp.rounds
        retrain_lr = protocol.lr * self.hp.retrain_lr_factor
        if self.budget == "paper":
            dense, per_round = self.hp.pretrain_iterations, [self.hp.retrain_iterations] * rounds
        else:
            dense = round(protocol.iterations * self.hp.pretrain_fraction)
            rest = protocol.iterations - dense
            if dense < 1 or rest < rounds:
                raise ValueError(f"magnitude needs at least 1 dense and {rounds} retraining iterations; "
                                 f"{protocol.iterations} iterations are too few")
            base, extra = divmod(rest, rounds)
            per_round = [base + (1 if k < extra else 0) for k in range(rounds)]
        return [Phase("dense", dense, protocol.lr)] + [
            Phase(f"{RETRAIN_PREFIX}{k}", n, retrain_lr) for k, n in enumerate(per_round, start=1)]

    # -- hooks --------------------------------------------------------------------------------
    def on_phase_start(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().on_phase_start(phase, model, optimizer)
        if phase.name.startswith(RETRAIN_PREFIX):
            self.prune(int(phase.name[len(RETRAIN_PREFIX):]))

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"reference_std": dict(self.reference_std)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        device = self.layers[0][1].weight.device
        self.reference_std = {name: std.to(device) for name, std in state["reference_std"].items()}

    def prune(self, round_index: int) -> None:
        """Round k of K: mask every layer at (k/K) * q_l * std(W_l), on top of the previous mask."""
        if not self.reference_std:
            self.reference_std = {name: m.weight.detach().std(correction=0) for name, m in self.layers}
        fraction = round_index / self.hp.rounds
        for (name, module), quality in zip(self.layers, self.quality, strict=True):
            threshold = fraction * quality * self.reference_std[name]
            mask = magnitude_mask(module.weight, threshold)
            if name in self.keep:
                mask = mask * self.keep[name]
            self.keep[name] = mask
        self.apply_masks()
