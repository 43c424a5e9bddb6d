"""Random pruning at initialisation. S. Liu, T. Chen, X. Chen, L. Shen, D. C. Mocanu, Z. Wang and M.
Pechenizkiy, "The Unreasonable Effectiveness of Random Pruning: Return of the Most Naive Baseline for
Sparse Training", ICLR 2022 (arXiv 2202.02643).

Before training, each prunable layer keeps a uniformly random `keep` fraction of its weights (the
paper's "ERK" and "uniform" layer-wise ratios; this example implements uniform only); the mask never
changes, and the masked network is trained with the task's protocol. A plugin example: a complete
`Pruner` in one file, with its hyperparameters, its checkpointed state and its deployed network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from prunebench.methods.magnitude import zero_pruned
from torch import nn

from prunebench.pruner import Hyperparameters, Pruner, prunable_layers, require


@dataclass
class RandomHparams(Hyperparameters):
    keep: float = field(default=0.1, metadata={"help": "fraction of each layer's weights kept, in (0, 1]"})

    def validate(self) -> None:
        super().validate()
        require(0.0 < self.keep <= 1.0, f"keep must be in (0, 1], got {self.keep}")


class RandomPruning(Pruner):
    citation = ("Liu et al., The Unreasonable Effectiveness of Random Pruning, ICLR 2022 "
                "(uniform ratios; example plugin)")
    hparams_class = RandomHparams

    def attach(self, model: nn.Module) -> nn.Module:
        self.layers = prunable_layers(model)
        # The mask comes from the global generator, which the harness seeded with the run's seed.
        self.masks = {name: (torch.rand_like(m.weight) < self.hp.keep).to(m.weight.dtype)
                      for name, m in self.layers}
        self.optimizer: torch.optim.Optimizer | None = None
        zero_pruned(self.layers, self.masks, None)
        return model

    def on_phase_start(self, phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def on_resume(self, phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def after_step(self, step: int) -> None:
        zero_pruned(self.layers, self.masks, self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": dict(self.masks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.layers[0][1].weight.device
        self.masks = {name: mask.to(device) for name, mask in state["masks"].items()}

    def deployed(self, model: nn.Module) -> nn.Module:
        return self.export(model, {name: m.weight.detach() * self.masks[name] for name, m in self.layers})

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: m.weight.detach().abs() * self.masks[name] for name, m in self.layers}
