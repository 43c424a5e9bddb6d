"""The training protocol: identical for every method on a task (optimizer, budget, batch, init)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")  # the optimizer families a protocol may name


@dataclass(frozen=True)
class Protocol:
    """What every method on a task trains with. A method that needs more than one phase (pretrain,
    prune, retrain) declares it through `Pruner.phases`; the phases share this optimizer family."""

    optimizer: str = "adam"  # one of OPTIMIZERS
    lr: float = 1e-3
    iterations: int = 10_000
    batch_size: int = 100
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    init: str = "trunc_normal"  # "trunc_normal" | "normal" | "default" (PyTorch's own)
    init_std: float = 0.01
    eval_every: int = 500

    def with_overrides(self, **changes) -> Protocol:
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes)

    def validate(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def make_optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        lr = self.lr if lr is None else lr
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def initialise(self, model: nn.Module) -> None:
        """Initialise Linear/Conv2d weights as the protocol says; biases start at zero."""
        if self.init == "default":
            return
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                with torch.no_grad():
                    if self.init == "trunc_normal":
                        # TensorFlow's truncated_normal(stddev): redraw beyond two standard deviations.
                        nn.init.trunc_normal_(module.weight, std=self.init_std,
                                              a=-2 * self.init_std, b=2 * self.init_std)
                    elif self.init == "normal":
                        nn.init.normal_(module.weight, std=self.init_std)
                    else:
                        raise ValueError(f"unknown init {self.init!r}")
                    if module.bias is not None:
                        module.bias.zero_()


@dataclass(frozen=True)
class Phase:
    """One stretch of training inside a run: a name, its iterations and its learning rate."""

    name: str
    iterations: int
    lr: float
