"""Dense training, no pruning: the accuracy reference every method's accuracy loss is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prunebench.pruner import Hyperparameters, Pruner, register


@dataclass
class DenseHparams(Hyperparameters):
    pass


@register("dense")
class Dense(Pruner):
    citation = "No pruning: the task's plain network trained with the task's protocol."
    hparams_class = DenseHparams

    def deployed(self, model: nn.Module) -> nn.Module:
        return self.export(model)

    def scores(self, model: nn.Module):
        return {name: m.weight.detach().abs() for name, m in model.named_modules()
                if isinstance(m, (nn.Linear, nn.Conv2d))}
