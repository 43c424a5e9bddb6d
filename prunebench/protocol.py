"""The training protocol: identical for every method on a task (optimizer, budget, batch, init)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
from torch import nn

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")  # the optimizer families a protocol may name
AUTOCAST: tuple[str, ...] = ("off", "bf16")  # forward-pass precisions a protocol may name (CUDA only)
#: Learning-rate policies: "step" (the milestones below, none by default: a constant lr) or Caffe's "inv",
#: lr = base (1 + gamma t)^-power with t the phase's iterations done (Caffe's stock LeNet solver: gamma 1e-4,
#: power 0.75).
LR_POLICIES: tuple[str, ...] = ("step", "inv")
#: Weight initialisations a protocol may name: TensorFlow's truncated normal or a normal of `init_std` (biases 0),
#: or "default", the layers' own (PyTorch's Kaiming-uniform with a = sqrt(5) for Linear and Conv2d, biases too).
INITS: tuple[str, ...] = ("trunc_normal", "normal", "default")


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
    #: Budget in epochs, as a paper states it (None: the budget is `iterations`). When set, `iterations`
    #: is `epochs * steps_per_epoch`; overriding `iterations` alone drops it.
    epochs: int | None = None
    #: Optimizer steps in one epoch of the task's real training set (batches of `batch_size`, last
    #: partial batch dropped); converts `epochs` and `lr_milestones` to steps. None: no epoch schedule.
    steps_per_epoch: int | None = None
    #: Multi-step learning-rate schedule by epoch: every phase's lr is multiplied by `lr_gamma` once for
    #: each milestone the current epoch (0-based, of the global step) has reached.
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    #: "step" (`lr_milestones`) or "inv" (Caffe's: a phase's lr times (1 + lr_gamma t)^-lr_power, t = the steps
    #: its solver run has done before this one: each phase is a new solver run, as a Caffe retraining from
    #: saved weights restarts its iteration count, unless it `continues` the previous one), `LR_POLICIES`.
    lr_policy: str = "step"
    lr_power: float = 0.75
    #: Mixed precision of the forward pass on CUDA: "off" or "bf16" (torch.autocast); refused on CPU.
    autocast: str = "off"
    #: The network and its image batches in channels_last memory format (NHWC): on CPU oneDNN's faster layout
    #: for convolutions (LeNet-5's step 1.4x faster here, `docs/cost.md`), on CUDA the tensor cores'. It
    #: changes float rounding, so it is part of a run's identity; no effect on a network without convolutions.
    channels_last: bool = False
    #: Images held out of the task's training set for validation (0: none, the whole training set trains).
    #: The split is fixed per task, the same for every seed (`prunebench.data.hold_out`); each evaluation then
    #: also measures accuracy on it, for rules that must not select on the test set (docs/validation.md).
    validation: int = 0

    def with_overrides(self, **changes) -> Protocol:
        changes = {k: v for k, v in changes.items() if v is not None}
        if "lr_milestones" in changes:
            changes["lr_milestones"] = tuple(int(m) for m in changes["lr_milestones"])
        if "epochs" in changes:
            if not self.steps_per_epoch:
                raise ValueError("this task's protocol is in iterations; it has no epochs to override")
            changes.setdefault("iterations", changes["epochs"] * self.steps_per_epoch)
        elif "iterations" in changes and changes["iterations"] != self.iterations:
            changes["epochs"] = None
        return replace(self, **changes)

    @property
    def has_schedule(self) -> bool:
        """Whether the lr moves during training (milestones, or the inv policy)."""
        return bool(self.lr_milestones) or self.lr_policy == "inv"

    def lr_factor(self, step: int, phase_step: int | None = None) -> float:
        """The schedule's factor on every phase's lr at global step `step` (1-based), which is step `phase_step`
        (1-based; default: `step`) of its solver run (`schedule_origin`)."""
        if self.lr_policy == "inv":
            return (1.0 + self.lr_gamma * ((step if phase_step is None else phase_step) - 1)) ** -self.lr_power
        if not self.lr_milestones or not self.steps_per_epoch:
            return 1.0
        epoch = (step - 1) // self.steps_per_epoch
        return self.lr_gamma ** sum(1 for m in self.lr_milestones if epoch >= m)

    def validate(self) -> None:
        for name in ("lr", "momentum", "weight_decay", "init_std", "lr_gamma", "lr_power"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
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
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr_milestones and not self.steps_per_epoch:
            raise ValueError("lr_milestones need steps_per_epoch (a task with an epoch schedule)")
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)) or any(m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing epochs >= 1, got {self.lr_milestones}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if self.validation < 0:
            raise ValueError(f"validation must be >= 0 images, got {self.validation}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.lr_policy not in LR_POLICIES:
            raise ValueError(f"lr_policy must be one of {', '.join(LR_POLICIES)}, got {self.lr_policy!r}")
        if self.lr_policy == "inv" and self.lr_milestones:
            raise ValueError("lr_policy inv has no milestones; drop lr_milestones or use lr_policy step")
        if self.lr_power <= 0:
            raise ValueError(f"lr_power must be > 0, got {self.lr_power}")
        if self.autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")

    def make_optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        """The protocol's optimizer over `params`: torch's fused implementation (one kernel per
        parameter for the whole update, on CPU and CUDA; about 4x faster than the per-operation loop
        over LeNet-300-100's weights on one CPU thread), the same update up to float rounding. The
        per-operation loop is kept where fused is unavailable (PRUNEBENCH_FUSED_OPTIMIZER=0 forces it)."""
        lr = self.lr if lr is None else lr
        params = list(params)
        fused = fused_optimizer_available(params)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay, fused=fused)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay, fused=fused)

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


def fused_optimizer_available(params: list) -> bool | None:
    """Whether torch's fused Adam/SGD can step `params` (floating point, on CPU or CUDA); None
    (torch's default loop) otherwise or when PRUNEBENCH_FUSED_OPTIMIZER=0."""
    if os.environ.get("PRUNEBENCH_FUSED_OPTIMIZER", "1") == "0":
        return None
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    ok = all(torch.is_floating_point(p) and p.device.type in ("cpu", "cuda") for p in tensors)
    return True if ok and tensors else None


@dataclass(frozen=True)
class Phase:
    """One stretch of training inside a run: a name, its iterations and its learning rate. `continues`: the phase
    goes on with the previous phase's solver run (DNS's frozen masks after the surgery), so a per-run lr policy
    (Caffe's inv) keeps counting instead of restarting at the phase."""

    name: str
    iterations: int
    lr: float
    continues: bool = False


def schedule_origin(phases: list[Phase], index: int) -> int:
    """Global steps done before the solver run that phase `index` belongs to (the last phase up to it that does
    not `continue` the previous one) starts: where a per-run lr policy counts from."""
    start = max(k for k in range(index + 1) if k == 0 or not phases[k].continues)
    return sum(p.iterations for p in phases[:start])
