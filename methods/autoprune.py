"""AutoPruning with dynamic channel masking. B. Li, Y. Fan, Z. Pan and G. Zhang, "AutoPruning for Deep
Neural Network with Dynamic Channel Masking", arXiv 2010.12021 (2020).

RECONSTRUCTION. Only the abstract was available (no full text, no code). What the abstract states:
a searchable remaining ratio per layer sets how many channels it keeps, a dynamic masking process lets
the kept channel set change during training, weights and ratios are optimised alternately, and the loss
trades accuracy against the reduction in FLOPs. Everything else below is our own reconstruction [I],
after METHODS.md sec. 7 ("Suite interpretation").

Mechanism [I]. Every prunable layer whose output units one next prunable layer reads unit by unit
(`prunebench.structured.Structure.feeds`: in a chain such as the LeNets or VGG-like, every layer but the
last, whose outputs are the classes) has one ratio r_l = sigmoid(rho_l). Its C_l output units (neurons
of a Linear, filters of a Conv2d) are ranked by the L1 norm of their weights, or by |gamma| of the
BatchNorm that normalises them, recomputed at every forward pass (the dynamic channel masking: a unit
that grows can re-enter), and the unit of rank k (0 = largest) is multiplied by
m_k = clamp(r_l * C_l - k, 0, 1). Exactly ceil(r_l * C_l) units are non-zero; all but the last of them
have m = 1, and the boundary unit's fraction is what carries the ratio's gradient from the task loss.
The mask multiplies the layer's output (pre-activation, bias included), or the output of its BatchNorm
when it has one (a masked unit then outputs exactly 0, not BatchNorm's shift), so a deployed network
folds it into the kept units' weights and biases (BatchNorm: its weight and bias) exactly. A grouped
layer, or one that feeds a grouped conv, is ranked and masked within each of its G groups (G the least
common multiple of the two group counts, AlexNet: 2), ceil(r_l * C_l / G) units per group, so that the
smaller conv keeps its groups.

Which networks [I]: layers whose outputs reach the network output, a residual addition (ResNet-56: the
stem and every block's second conv) or a channel-mixing op (AlexNet's LRN after conv1 and conv2) are not
masked; ResNet-56 then prunes the inner channels of its blocks (conv1 -> conv2), AlexNet conv3-conv5 and
fc6-fc7, VGG-like every layer but fc2. `attach` raises ValueError when no layer can be masked.

Loss [I]: task loss + mu * max(0, F(r) / (flops_target * F_dense) - 1), with the expected MACs
F(r) = sum_l D_l * r_l * r_in(l) (D_l: the dense layer's MACs per example, r_l = 1 for an unmasked layer,
r_in(l) the ratio of the layer that feeds l, 1 if none): a hinge that pushes the ratios down until the
FLOPs target is met and then lets the task loss decide.

Alternation [I]: steps alternate between weight steps (the harness's optimizer; the ratios are
detached, so they get no gradient) and ratio steps (weights and biases, BatchNorm's included, detached,
so the harness's optimizer skips them; rho takes one step of its own Adam at `arch_lr` on the task loss
plus the FLOPs hinge). The paper's alternation is "in the style of AutoML", which would use held-out batches for the
ratio steps; the suite's harness has one training batch stream, so ratio steps use training batches.

Deployed network: physically smaller (prunebench.structured.shrink): the kept units only, with the
boundary unit's fraction folded in, their BatchNorm features, and the next layer's matching inputs. The
harness measures its weight compression, parameter and FLOPs reduction against the dense architecture.

Method card (every value is ours [I]; the paper published no LeNet setting):
- ranking by L1 norm of a unit's weights (|gamma| of its BatchNorm where it has one); soft boundary
  mask; hinge FLOPs loss; alternation every step (`arch_every` = 2: odd steps weights, even steps ratios).
- rho_init = 3 (r = 0.95), arch_lr = 1e-2 (Adam), mu = 1, flops_target = 0.1 (keep 10% of the MACs).
- one phase from scratch; budget "paper" is the same as "equal" (no published schedule).

Cost (issue 18). Beyond a dense step: per unit, a rank by L1 norm (a sort of each masked layer's C_l
norms per forward pass), the soft mask and its straight-through gradient, and on ratio steps one small
Adam step over the per-layer ratios. Measured at about 1.25x a dense LeNet-300-100 step on one CPU
thread (leaderboards/method-cost.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from prunebench.knob import CompressionKnob
from prunebench.pruner import Hyperparameters, Pruner, prunable_layers, register
from prunebench.structured import Structure, network_structure, shrink

if TYPE_CHECKING:
    from prunebench.protocol import Phase
    from prunebench.tasks import Task


def unit_norms(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output unit's weights (rows of a Linear weight, filters of a conv weight)."""
    return weight.detach().abs().flatten(1).sum(dim=1)


def channel_mask(norms: torch.Tensor, ratio: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Soft top-k mask: the unit of rank k (0 = largest norm) gets clamp(ratio * C - k, 0, 1), so exactly
    ceil(ratio * C) units are non-zero. Differentiable in `ratio` through the boundary unit. With `groups`
    G > 1, the same within each of G equal consecutive blocks of units (ceil(ratio * C / G) per block)."""
    if groups > 1:
        return torch.cat([channel_mask(block, ratio) for block in norms.view(groups, -1)])
    channels = norms.numel()
    order = torch.argsort(norms, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(channels, device=norms.device)
    return (ratio * channels - rank.to(norms.dtype)).clamp(0.0, 1.0)


def kept_units(ratio: float, channels: int) -> int:
    """Units a ratio keeps: ceil(ratio * C), at least 1."""
    return max(1, math.ceil(ratio * channels - 1e-9))


class _Detachable(nn.Module):
    """Parametrisation that cuts a tensor's gradient during ratio steps (the harness's optimizer then
    skips it: Adam ignores parameters whose gradient is None)."""

    def __init__(self, owner: AutoPruning) -> None:
        super().__init__()
        self._owner = [owner]  # a list, so the pruner is not registered as a submodule

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if self._owner[0].ratio_step else tensor


@dataclass
class AutoPruneHparams(Hyperparameters):
    flops_target: float = field(default=0.1, metadata={
        "help": "fraction of the dense network's MACs to reach, in (0, 1] (reconstruction)", "gt": 0, "max": 1})
    mu: float = field(default=1.0, metadata={
        "help": "weight of the FLOPs hinge loss (>= 0) (reconstruction)", "min": 0})
    rho_init: float = field(default=3.0, metadata={
        "help": "initial logit of every layer's remaining ratio r = sigmoid(rho) (reconstruction)"})
    arch_lr: float = field(default=1e-2, metadata={
        "help": "Adam lr of the ratio steps (> 0) (reconstruction)", "gt": 0})
    arch_every: int = field(default=2, metadata={
        "help": "every arch_every-th step is a ratio step, the others weight steps (>= 2) (reconstruction)", "min": 2})


@register("autoprune")
class AutoPruning(Pruner):
    citation = ("Li, Fan, Pan & Zhang, AutoPruning for Deep Neural Network with Dynamic Channel Masking, "
                "arXiv 2010.12021, 2020")
    hparams_class = AutoPruneHparams
    knob = CompressionKnob("flops_target", raises=False, low=0.001, high=1.0,
        note="the fraction of the dense MACs the channel masks aim at; a smaller target removes more channels")
    hp: AutoPruneHparams
    provenance = "reconstruction"

    def __init__(self, hparams: AutoPruneHparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        self.layers: list[tuple[str, nn.Module]] = []
        self.layer_of: dict[str, nn.Module] = {}
        #: How the layers connect (traced on the plain model at `attach`).
        self.structure: Structure | None = None
        #: name -> logit of the layer's remaining ratio (masked layers only: those that feed another).
        self.rho: dict[str, torch.Tensor] = {}
        #: masked layer -> blocks it is ranked and masked in (its conv groups or its reader's, else 1).
        self.blocks: dict[str, int] = {}
        #: masked layer -> the BatchNorm module that normalises it (ranked by |gamma|, masked after it).
        self.norms: dict[str, nn.Module] = {}
        #: name -> output positions per output unit (1 for Linear, H*W for conv), seen at the first forward.
        self.positions: dict[str, int] = {}
        self.ratio_step = False
        self.arch_optimizer: torch.optim.Optimizer | None = None

    # -- structure ----------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        self.layers = prunable_layers(model)
        if len(self.layers) < 2:
            raise ValueError("autoprune needs at least two prunable layers (the last one is never masked)")
        self.structure = network_structure(model)
        self.layer_of = modules = dict(self.layers)
        masked = [name for name, _ in self.layers if name in self.structure.feeds]
        if not masked:
            raise ValueError(f"autoprune: no prunable layer of {type(model).__name__} has outputs that one next "
                             "layer alone reads unit by unit, so no channel can be removed")
        for _, module in self.layers:
            parametrize.register_parametrization(module, "weight", _Detachable(self), unsafe=True)
            if module.bias is not None:
                parametrize.register_parametrization(module, "bias", _Detachable(self), unsafe=True)
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.affine:
                parametrize.register_parametrization(module, "weight", _Detachable(self), unsafe=True)
                parametrize.register_parametrization(module, "bias", _Detachable(self), unsafe=True)
        for name in masked:
            self.rho[name] = torch.tensor(float(self.hp.rho_init))
            reader = modules[self.structure.feeds[name]]
            self.blocks[name] = math.lcm(getattr(modules[name], "groups", 1), getattr(reader, "groups", 1))
            if name in self.structure.norms:
                norm = model.get_submodule(self.structure.norms[name])
                if not norm.affine:
                    raise ValueError(f"autoprune: the BatchNorm after {name} has no affine parameters to fold the "
                                     "channel mask into")
                self.norms[name] = norm
        for name, module in self.layers:
            module.register_forward_hook(self._hook(name, name in self.rho and name not in self.norms))
        for name, norm in self.norms.items():
            norm.register_forward_hook(self._mask_hook(name))
        return model

    def masked(self) -> list[tuple[str, nn.Module]]:
        return [(name, module) for name, module in self.layers if name in self.rho]

    def ratio(self, name: str) -> torch.Tensor:
        return torch.sigmoid(self.rho[name])

    def mask(self, name: str, module: nn.Module) -> torch.Tensor:
        ratio = self.ratio(name)
        norm = self.norms.get(name)
        norms = norm.weight.detach().abs() if norm is not None else unit_norms(module.weight)
        return channel_mask(norms, ratio if self.ratio_step else ratio.detach(), self.blocks[name])

    def _apply_mask(self, name: str, output: torch.Tensor) -> torch.Tensor:
        m = self.mask(name, self.layer_of[name])
        return output * m.view(1, -1, *([1] * (output.dim() - 2)))

    def _hook(self, name: str, masks_output: bool) -> Callable:
        def hook(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor | None:  # noqa: ARG001
            if name not in self.positions:
                self.positions[name] = output[0].numel() // output.shape[1]
            return self._apply_mask(name, output) if masks_output else None
        return hook

    def _mask_hook(self, name: str) -> Callable:
        """Forward hook of the BatchNorm that normalises masked layer `name`: masks its output."""
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
            return self._apply_mask(name, output)
        return hook

    # -- optimisation -------------------------------------------------------------------------------
    def on_phase_start(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:  # noqa: ARG002
        if self.arch_optimizer is None:
            device = next(model.parameters()).device
            for name in self.rho:
                self.rho[name] = self.rho[name].to(device).requires_grad_(True)
            self.arch_optimizer = torch.optim.Adam(list(self.rho.values()), lr=self.hp.arch_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"rho": {name: rho.detach().clone() for name, rho in self.rho.items()},
                "positions": dict(self.positions), "ratio_step": self.ratio_step,
                "arch_optimizer": None if self.arch_optimizer is None else self.arch_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.positions, self.ratio_step = dict(state["positions"]), state["ratio_step"]
        self.rho = {name: value.clone() for name, value in state["rho"].items()}
        if state["arch_optimizer"] is not None:
            device = self.layers[0][1].weight.device
            self.rho = {name: value.to(device).requires_grad_(True) for name, value in self.rho.items()}
            self.arch_optimizer = torch.optim.Adam(list(self.rho.values()), lr=self.hp.arch_lr)
            self.arch_optimizer.load_state_dict(state["arch_optimizer"])

    def expected_flops_fraction(self) -> torch.Tensor:
        """F(r) / F_dense with F(r) = sum_l D_l r_l r_in(l); needs one forward pass (for D_l)."""
        fed_by = self.structure.fed_by() if self.structure is not None else {}
        dense, total = 0.0, None
        for name, module in self.layers:
            macs = module.weight.numel() * self.positions[name]
            term = macs * (self.ratio(name) if name in self.rho else torch.ones(())).to(module.weight.device)
            if fed_by.get(name) in self.rho:
                term = term * self.ratio(fed_by[name])
            total = term if total is None else total + term
            dense += macs
        return total / dense

    def penalty(self) -> torch.Tensor | None:
        if not self.ratio_step or self.hp.mu == 0:
            return None
        return self.hp.mu * torch.relu(self.expected_flops_fraction() / self.hp.flops_target - 1.0)

    def after_step(self, step: int) -> None:
        if self.ratio_step and self.arch_optimizer is not None:
            self.arch_optimizer.step()
            self.arch_optimizer.zero_grad(set_to_none=True)
        self.ratio_step = (step + 1) % self.hp.arch_every == 0

    # -- deployment ---------------------------------------------------------------------------------
    @torch.no_grad()
    def unit_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The current mask of every masked layer (ratios and weights as they are now)."""
        previous, self.ratio_step = self.ratio_step, False
        try:
            return {name: self.mask(name, module) for name, module in self.masked()}
        finally:
            self.ratio_step = previous

    @torch.no_grad()
    def deployed(self, model: nn.Module) -> nn.Module:
        masks = self.unit_masks(model)
        weights = {}
        biases = {}
        for name, module in self.masked():
            if name in self.norms:
                continue  # folded into its BatchNorm below
            shape = (-1, *([1] * (module.weight.dim() - 1)))
            weights[name] = module.weight * masks[name].view(shape)
            if module.bias is not None:
                biases[name] = module.bias * masks[name]
        plain = self.export(model, weights=weights)
        for name, bias in biases.items():
            plain.get_submodule(name).bias.copy_(bias)
        for name in self.norms:  # mask * (gamma * x_hat + beta) = (mask * gamma) * x_hat + mask * beta
            norm = plain.get_submodule(self.structure.norms[name])
            norm.weight.mul_(masks[name])
            norm.bias.mul_(masks[name])
        return shrink(plain, {name: mask.nonzero().flatten() for name, mask in masks.items()}, self.structure)
