"""Dynamic Network Surgery. Y. Guo, A. Yao and Y. Chen, "Dynamic Network Surgery for Efficient DNNs",
NeurIPS 2016 (arXiv 1608.04493). Authors' code: yiwenguo/Dynamic-Network-Surgery (Caffe).

Start from a trained network and keep one binary mask T per layer; the forward pass uses W * T. Every
weight, masked or not, is updated with the gradient of the masked network (straight-through:
dL/dW := dL/d(W * T)), so a wrongly pruned weight can grow back. With m = max(mu + c * sigma, 0) from
the statistics of the pretrained layer (mu = mean |w|, sigma = std |w|), a kept entry is pruned when
|w| <= a = 0.9 m and a pruned entry is spliced back when |w| > b = 1.1 m; entries in between keep
their mask. At each iteration one uniform r per layer is drawn, and the layer's mask is updated only
if (1 + gamma * iter)^(-power) > r and iter < iter_stop. After the surgery the masks are frozen and
training continues.

Method card (where each value comes from):
- the mask rule, a = 0.9 m, b = 1.1 m, m = max(mu + c_rate * sigma, 0), the update probability and
  iter_stop, the straight-through gradient to all weights, statistics taken once at iteration 0 of
  the surgery from the pretrained layer: authors' code, compress_{conv,inner_product}_layer [V].
- statistics over the weights only, and biases not masked, by default [I]: the suite prunes no biases (300
  biases beside 235,200 weights barely move the statistics). `mask_biases` follows the authors' layers
  instead (compress_inner_product_layer.cpp, compress_conv_layer.cpp) [V]: the magnitudes of weights and
  biases pooled into mu and sigma, and a bias mask updated with the same a and b whenever the weight mask
  is; their released LeNet-300-100 keeps 30 of ip1's 300 biases and none of ip3's (benchmarks/dns_released.py).
  Compression still counts weights only.
- gamma = 1e-4, power = 1: the README's LeNet-5 example [V] (caffe.proto default gamma is 1e-3 [V]).
- c_rate (3) and iter_stop (10,000) dataclass defaults: caffe.proto defaults [V] (caffe.proto gives
  8,000 for fc layers). Per-task values in prunebench/tasks.py: LeNet-5 iter_stop 14k/14k/10k/10k
  from the maintainer's suggestion in issue #2 [S] (his c_rate 1/3/4/2.5 keeps far more than the
  published ratios here, under Adam and Caffe's SGD alike, so c_rate 2.3/3.7/5.5/4.3 was calibrated
  towards the published keep ratios [I]); LeNet-300-100 has no published values, see tasks.py [I].
- iterations are counted from the start of the surgery, as the Caffe solver restarted from the
  pretrained model counts them; the mask update of iteration 0 happens before the first surgery step
  (probability 1), and the update after step j is the one Caffe makes in the forward pass of
  iteration j [V, code order].
- budget "paper": pretrain 10,000 iterations (the stock Caffe LeNet solver [R]), surgery until the
  largest iter_stop, then `frozen_iterations` = 4,000 with the masks frozen [I: no published value].
  All phases at the protocol's lr ("the reference solver", METHODS.md sec. 3) by default;
  `surgery_lr_factor` / `frozen_lr_factor` scale the lr of the later phases [I] (the Caffe LeNet
  solver's "inv" policy decays the lr as training goes on, a constant Adam lr does not).
- budget "equal": the same schedule compressed uniformly into the protocol's iterations [I]: every
  phase length is scaled by protocol.iterations / (pretrain + max iter_stop + frozen), and iter and
  iter_stop are compared in paper iterations (iter = surgery steps / scale), so the shape of the
  update-probability curve and the per-layer stop points are kept.
- the surgery starts with a fresh optimizer (a new Caffe run from the pretrained model); the frozen
  phase continues the surgery's optimizer state (same Caffe run past iter_stop) [I], and under Caffe's inv lr
  policy (`--lr-policy inv`) its lr keeps decaying from the surgery's count (`Phase.continues`).
- r comes from a `random.Random` seeded from torch's global generator at `attach` (the harness seeds
  it with the run's seed just before), so runs are reproducible.
- per-layer c_rate and iter_stop for deep networks [I]: `layer_rule` "first-conv-fc-last" takes 4 values
  (first layer, every other conv, every other fc, last layer); caffe.proto's own defaults already
  split iter_stop by kind (10,000 conv, 8,000 fc [V]) and the published AlexNet result keeps 53.8% of
  conv1, 29-41% of conv2-5, 3.7-6.6% of fc6-7 and 4.6% of fc8 (DNS Table 2 [R]). The default "each" is
  the one-or-one-per-layer rule of every run before it, so their identities and results do not change.
- BatchNorm layers (VGG-like, ResNet-56) are copied into the deployed network as trained; grouped
  convolutions (AlexNet) need nothing special (the mask is per weight).

Cost (issue 18). Beyond a dense step: the mask multiply per prunable weight forward and on the gradient,
and every few steps (its update probability) the two threshold compares per weight that update the
mask. No penalty, no extra parameters. Measured at 1.3-1.5x a dense LeNet-300-100 step on one CPU thread
(leaderboards/method-cost.md; the spread is the machine's noise, the code did not change).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from prunebench.methods._common import LAYER_RULES, carry_optimizer_state, layer_values, per_layer_values
from torch import nn
from torch.nn.utils import parametrize

from prunebench.knob import CompressionKnob
from prunebench.protocol import Phase, Protocol
from prunebench.pruner import Hyperparameters, Pruner, parametrize_weights, prunable_layers, register

if TYPE_CHECKING:
    from prunebench.tasks import Task

PRUNE_FACTOR = 0.9  # a = 0.9 m
SPLICE_FACTOR = 1.1  # b = 1.1 m


class StraightThroughMask(torch.autograd.Function):
    """Forward W * T; backward hands the gradient of W * T to every entry of W (masked ones too)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class SurgeryMask(nn.Module):
    """Parametrisation of a layer's weight: W -> W * T with the straight-through gradient."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return StraightThroughMask.apply(weight, self.mask)


def surgery_thresholds(weight: torch.Tensor, c_rate: float, bias: torch.Tensor | None = None) -> tuple[float, float]:
    """(a, b) = (0.9 m, 1.1 m) with m = max(mu + c * sigma, 0), mu = mean|w|, sigma = std|w|; with `bias`, the
    statistics pool the weights and the biases (the authors' layers)."""
    magnitude = weight.detach().abs().double().flatten()
    if bias is not None:
        magnitude = torch.cat([magnitude, bias.detach().abs().double().flatten()])
    mu = magnitude.mean()
    sigma = (magnitude.pow(2).mean() - mu * mu).clamp_min(0).sqrt()
    m = max(float(mu + c_rate * sigma), 0.0)
    return PRUNE_FACTOR * m, SPLICE_FACTOR * m


def surgery_mask(weight: torch.Tensor, mask: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """New mask: pruned where |w| <= a, spliced where |w| > b, unchanged in between (needs a <= b)."""
    magnitude = weight.detach().abs()
    return torch.where(magnitude <= a, torch.zeros_like(mask),
                       torch.where(magnitude > b, torch.ones_like(mask), mask))


@dataclass
class DNSHparams(Hyperparameters):
    gamma: float = field(default=1e-4, metadata={
        "help": "gamma of the update probability (1 + gamma*iter)^-power (>= 0)", "min": 0})
    power: float = field(default=1.0, metadata={"help": "power of the update probability (>= 0)", "min": 0})
    c_rate: tuple[float, ...] = field(default=(3.0,), metadata={
        "help": "c of m = max(mu + c*sigma, 0): one value for every layer or one per prunable layer, e.g. '1,3,4,2.5'"})
    iter_stop: tuple[int, ...] = field(default=(10_000,), metadata={
        "help": "surgery iteration (paper iterations, from the surgery's start) at which a layer's mask "
        "freezes: one value or one per prunable layer (>= 1); see layer_rule", "min": 1})
    layer_rule: str = field(default="each", metadata={"choices": LAYER_RULES, "help":
        "how per-layer values map onto the layers: 'each' (1 value or one per layer) or 'first-conv-fc-last' "
        "(1 value or 4: first layer, other conv layers, other fc layers, last layer)"})
    pretrain_iterations: int = field(default=10_000, metadata={
        "help": "dense pretraining iterations of the published schedule (Caffe LeNet solver: 10,000)", "min": 1})
    frozen_iterations: int = field(default=4_000, metadata={
        "help": "training iterations after the last iter_stop, masks frozen (>= 0)", "min": 0})
    surgery_lr_factor: float = field(default=1.0, metadata={
        "help": "surgery lr = protocol lr * this (> 0)", "gt": 0})
    frozen_lr_factor: float = field(default=1.0, metadata={
        "help": "lr after the surgery (masks frozen) = protocol lr * this (> 0)", "gt": 0})
    mask_biases: bool = field(default=False, metadata={
        "help": "mask the biases too, with the layer's thresholds, their magnitudes pooled into mu and sigma (the "
        "authors' layers); the deployed biases are then b * T_b"})

    def __post_init__(self) -> None:
        self.c_rate = per_layer_values(self.c_rate, float)
        self.iter_stop = per_layer_values(self.iter_stop, int)


@dataclass
class _SurgeryLayer:
    name: str
    module: nn.Module
    c_rate: float
    iter_stop: int
    a: float = 0.0
    b: float = 0.0
    updates: int = 0  # how many times this layer's mask was updated (diagnostic)

    @property
    def weight(self) -> torch.Tensor:
        """The dense W (the parametrisation's original)."""
        return self.module.parametrizations.weight.original

    @property
    def mask(self) -> torch.Tensor:
        return self.module.parametrizations.weight[0].mask

    @property
    def bias(self) -> torch.Tensor | None:
        """The dense bias where it is masked (`mask_biases`), else None."""
        return self.module.parametrizations.bias.original if parametrize.is_parametrized(self.module, "bias") else None

    @property
    def bias_mask(self) -> torch.Tensor | None:
        return self.module.parametrizations.bias[0].mask if parametrize.is_parametrized(self.module, "bias") else None


@register("dns")
class DynamicNetworkSurgery(Pruner):
    citation = "Guo, Yao & Chen, Dynamic Network Surgery for Efficient DNNs, NeurIPS 2016"
    hparams_class = DNSHparams
    knob = CompressionKnob("c_rate", raises=True, low=0.05, high=5.0, scale=True,
        note="c of the per-layer threshold max(mu + c*sigma, 0), one factor on the calibrated per-layer c")
    hp: DNSHparams

    def __init__(self, hparams: DNSHparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        layers = prunable_layers(task.architecture())
        self.c_rate = layer_values(self.hp.c_rate, layers, "c_rate", self.hp.layer_rule)
        self.iter_stop = layer_values(self.hp.iter_stop, layers, "iter_stop", self.hp.layer_rule)
        self.layers: list[_SurgeryLayer] = []
        #: Actual iterations per paper iteration is actual_total / paper_total (1 / 1 under budget "paper");
        #: kept as two integers so that iteration = steps * paper_total / actual_total is exact at iter_stop.
        self.paper_total, self.actual_total = 1, 1
        self.steps_done = 0
        self.surgery_start: int | None = None
        self.frozen = False
        self.rng = random.Random(0)

    # -- schedule -----------------------------------------------------------------------------
    def phases(self, protocol: Protocol) -> list[Phase]:
        pretrain, surgery, frozen = self.hp.pretrain_iterations, max(self.iter_stop), self.hp.frozen_iterations
        if self.budget == "equal":
            total = protocol.iterations
            if total < 2:
                raise ValueError(f"dns needs at least 2 iterations (pretrain and surgery), got {total}")
            self.paper_total, self.actual_total = pretrain + surgery + frozen, total
            pretrain = min(max(1, round(pretrain * total / self.paper_total)), total - 1)
            surgery = min(max(1, round(surgery * total / self.paper_total)), total - pretrain)
            frozen = total - pretrain - surgery
        else:
            self.paper_total, self.actual_total = 1, 1
        phases = [Phase("pretrain", pretrain, protocol.lr),
                  Phase("surgery", surgery, protocol.lr * self.hp.surgery_lr_factor)]
        if frozen > 0:
            phases.append(Phase("frozen", frozen, protocol.lr * self.hp.frozen_lr_factor, continues=True))
        return phases

    @property
    def time_scale(self) -> float:
        """Actual iterations per paper iteration."""
        return self.actual_total / self.paper_total

    def paper_iteration(self, surgery_steps: int) -> float:
        """Surgery steps taken, in paper iterations (exact for whole results such as an iter_stop)."""
        return surgery_steps * self.paper_total / self.actual_total

    def update_probability(self, iteration: float) -> float:
        """(1 + gamma * iter)^(-power), iter in paper iterations since the surgery started."""
        return (1.0 + self.hp.gamma * iteration) ** (-self.hp.power)

    def draw_updates(self, iteration: float) -> list[bool]:
        """One uniform r per layer: update the layer's mask iff probability > r and iter < iter_stop."""
        probability = self.update_probability(iteration)
        return [probability > self.rng.random() and iteration < layer.iter_stop for layer in self.layers]

    # -- hooks --------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        # Seeded from the global generator, which the harness seeds with the run's seed when it builds the model.
        self.rng = random.Random(int(torch.randint(0, 2**62, (1,)).item()))
        layers = parametrize_weights(model, lambda module: SurgeryMask(module.weight))
        if self.hp.mask_biases:
            for _, module, _ in layers:
                if module.bias is not None:
                    parametrize.register_parametrization(module, "bias", SurgeryMask(module.bias))
        self.layers = [_SurgeryLayer(name, module, c_rate, iter_stop) for (name, module, _), c_rate, iter_stop
                       in zip(layers, self.c_rate, self.iter_stop, strict=True)]
        return model

    def on_phase_start(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if phase.name == "surgery":
            self.start_surgery()
        elif phase.name == "frozen":
            carry_optimizer_state(self.optimizer, optimizer)
            self.frozen = True
        super().on_phase_start(phase, model, optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "steps_done": self.steps_done, "surgery_start": self.surgery_start,
                "frozen": self.frozen, "layers": [(layer.a, layer.b, layer.updates) for layer in self.layers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.steps_done, self.surgery_start, self.frozen = state["steps_done"], state["surgery_start"], state["frozen"]
        for layer, (a, b, updates) in zip(self.layers, state["layers"], strict=True):
            layer.a, layer.b, layer.updates = a, b, updates

    def start_surgery(self) -> None:
        """Iteration 0: statistics from the pretrained layers, then the first mask update."""
        self.surgery_start = self.steps_done
        self.frozen = False
        for layer in self.layers:
            layer.a, layer.b = surgery_thresholds(layer.weight, layer.c_rate, layer.bias)
        self.update_masks(0.0)

    def after_step(self, step: int) -> None:
        self.steps_done = step
        if self.surgery_start is not None and not self.frozen:
            self.update_masks(self.paper_iteration(step - self.surgery_start))

    @torch.no_grad()
    def update_masks(self, iteration: float) -> None:
        for layer, update in zip(self.layers, self.draw_updates(iteration), strict=True):
            if update:
                layer.mask.copy_(surgery_mask(layer.weight, layer.mask, layer.a, layer.b))
                if layer.bias_mask is not None:
                    layer.bias_mask.copy_(surgery_mask(layer.bias, layer.bias_mask, layer.a, layer.b))
                layer.updates += 1

    def deployed(self, model: nn.Module) -> nn.Module:
        return self.export(model)  # reading .weight gives W * T (and .bias b * T_b where biases are masked)

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """|W * T|: the magnitude of kept weights, 0 for masked ones."""
        return {name: module.weight.detach().abs() for name, module in prunable_layers(model)}
