"""What several methods share: per-layer hyperparameters, optimizer state across phases, compiled
elementwise kernels (`fusable`, `fused`), and two method families: `PretrainThenPrune` (dense pretraining,
then the method's own phase, with its own optimizer group) and `FusedPenalty` (a penalty whose gradient
the fused backward adds). The generic families (`MaskedPruner`, `swap_layers`) are in prunebench.pruner.

Not a method: nothing here registers."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from prunebench.protocol import Phase, Protocol
from prunebench.pruner import Pruner

#: Tensors smaller than this run a method's elementwise functions eager (a compiled call costs ~50 us).
COMPILE_MIN_NUMEL = 512
#: Distinct shapes a compiled function keeps static kernels for (VGG-like has 15 prunable layers, past
#: dynamo's default of 8 recompiles, after which it would fall back to eager).
COMPILE_SHAPE_LIMIT = 64
_compiled: dict[str, Callable] = {}

#: How a per-layer hyperparameter's values map onto the prunable layers (the methods' `layer_rule`):
#: "each": one value for every layer, or one per prunable layer in definition order (as always);
#: "first-conv-fc-last": one value for every layer, or four: the first prunable layer takes the first,
#: the last prunable layer the fourth, every other Conv2d the second and every other Linear the third.
LAYER_RULES: tuple[str, ...] = ("each", "first-conv-fc-last")


def per_layer_values(value: object, cast: type) -> tuple:
    """A per-layer hyperparameter as a tuple of `cast` (float or int).

    Accepts a tuple or list, a single number, or a comma-separated string such as "1.5,1.2,0.8" (how
    the CLI passes a tuple-valued flag). Raises ValueError for anything else."""
    if isinstance(value, str):
        items: list = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, (int, float)):
        items = [value]
    else:
        items = list(value)  # type: ignore[call-overload]
    out = []
    for item in items:
        number = float(item)
        if cast is int:
            if not number.is_integer():
                raise ValueError(f"expected whole numbers, got {item!r}")
            out.append(int(number))
        else:
            out.append(number)
    return tuple(out)


def top_k_mask(score: torch.Tensor, keep: int) -> torch.Tensor:
    """A 0/1 mask (score's shape and dtype) of the `keep` largest entries of `score`; ties broken by position
    (a stable sort), so exactly `keep` entries are set (GMP's and RigL's magnitude and gradient rankings)."""
    order = torch.sort(score.flatten(), descending=True, stable=True).indices
    mask = torch.zeros(score.numel(), dtype=score.dtype, device=score.device)
    mask[order[:keep]] = 1
    return mask.view_as(score)


def expand_per_layer(values: tuple, n_layers: int, name: str) -> tuple:
    """One value for every layer, or exactly one per prunable layer (in definition order)."""
    if len(values) == 1:
        return values * n_layers
    if len(values) != n_layers:
        raise ValueError(f"{name} needs 1 or {n_layers} values (one per prunable layer), got {len(values)}")
    return values


def layer_values(values: tuple, layers: list[tuple[str, nn.Module]], name: str, rule: str = "each") -> tuple:
    """One value per prunable layer (definition order) of a per-layer hyperparameter under `rule`
    (`LAYER_RULES`). Raises ValueError for a count the rule does not accept."""
    if rule == "each" or len(values) == 1:
        return expand_per_layer(values, len(layers), name)
    if rule != "first-conv-fc-last":
        raise ValueError(f"unknown layer rule {rule!r}; choose from: {', '.join(LAYER_RULES)}")
    if len(values) != 4:
        raise ValueError(f"{name} under layer rule {rule} needs 1 or 4 values (first, conv, fc, last), "
                         f"got {len(values)}")
    first, conv, fc, last = values
    out = [conv if isinstance(module, nn.Conv2d) else fc for _, module in layers]
    out[-1] = last
    out[0] = first
    return tuple(out)


def carry_optimizer_state(previous: torch.optim.Optimizer | None, current: torch.optim.Optimizer) -> None:
    """Hand the per-parameter state (Adam moments and step, momentum) of `previous` to `current`.

    The harness builds a fresh optimizer for each phase; a method whose phases are one continuing run
    with a new learning rate (an LR schedule, a mask freeze) calls this from `on_phase_start`."""
    if previous is None or previous is current:
        return
    for group in previous.param_groups:
        for param in group["params"]:
            if param in previous.state:
                current.state[param] = previous.state[param]


def fused_paths() -> bool:
    """Whether methods take their fused paths (a custom autograd Function whose forward and backward are
    each one compiled pass) rather than their plain autograd formulas; PRUNEBENCH_FUSED=0 forces the
    plain ones, which the tests compare the fused paths with."""
    return os.environ.get("PRUNEBENCH_FUSED", "1") != "0"


def fusable(probe: Callable[[torch.Tensor], tuple]) -> Callable[[Callable], Callable]:
    """Decorator of an elementwise function that `fused` compiles: `probe(x)` gives small arguments built
    from x = torch.ones(2, 2), to try the compiled function on."""

    def mark(fn: Callable) -> Callable:
        fn.probe = probe
        return fn

    return mark


def fused(fn: Callable, numel: int) -> Callable:
    """`fn` (`fusable`) fused by torch.compile (static shapes) when it works here, for tensors of at least
    `COMPILE_MIN_NUMEL` elements; eager for small tensors, when compiling fails (said once), or when
    PRUNEBENCH_COMPILE=0. The probe runs first, so a missing compiler toolchain shows at the first call
    rather than mid-run."""
    if numel < COMPILE_MIN_NUMEL or os.environ.get("PRUNEBENCH_COMPILE", "1") == "0":
        return fn
    key = f"{fn.__module__}.{fn.__qualname__}"
    if key not in _compiled:
        try:
            import torch._dynamo.config as dynamo_config

            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo_config, name):
                    setattr(dynamo_config, name, max(getattr(dynamo_config, name), COMPILE_SHAPE_LIMIT))
            candidate = torch.compile(fn, dynamic=False)
            candidate(*fn.probe(torch.ones(2, 2)))
            _compiled[key] = candidate
        except Exception as exc:  # noqa: BLE001 - no compiler toolchain: fall back, say so once
            warnings.warn(f"torch.compile unavailable ({type(exc).__name__}); {fn.__qualname__} runs eager",
                          stacklevel=2)
            _compiled[key] = fn
    return _compiled[key]


class PretrainThenPrune(Pruner):
    """Dense pretraining, then the method's own phase `second` (ltp, sensitivity, srinivas). Its
    hyperparameters give the lengths and lr: `pretrain_iterations`, `<prefix>_iterations` and
    `<prefix>_lr_factor`. When `second` starts, `start` runs, then the method's own parameters get their
    optimizer group (`own_group`), which a resumed run inside `second` gets again."""

    second: ClassVar[str] = ""
    prefix: ClassVar[str] = ""

    def phases(self, protocol: Protocol) -> list[Phase]:
        """"pretrain" at the protocol lr, then `second` at the protocol lr * `<prefix>_lr_factor`. Budget
        "paper": the hyperparameters' iterations; "equal": the same split scaled into the protocol's
        iterations, each phase at least one step."""
        pretrain, rest = self.hp.pretrain_iterations, getattr(self.hp, f"{self.prefix}_iterations")
        if self.budget == "equal":
            total = protocol.iterations
            if total < 2:
                raise ValueError(f"{self.name} needs at least 2 iterations (pretrain and {self.second}), got {total}")
            pretrain = min(max(1, round(pretrain * total / (pretrain + rest))), total - 1)
            rest = total - pretrain
        lr_factor = getattr(self.hp, f"{self.prefix}_lr_factor")
        return [Phase("pretrain", pretrain, protocol.lr), Phase(self.second, rest, protocol.lr * lr_factor)]

    def start(self, phase: Phase, model: nn.Module) -> None:
        """The method's phase starts (not called on resume)."""

    def own_group(self, phase: Phase) -> dict[str, Any] | None:
        """The optimizer group ("params" and options such as "lr") of the method's own parameters in its
        phase, or None: they stay in the optimizer's groups."""
        return None

    def on_phase_start(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().on_phase_start(phase, model, optimizer)
        if phase.name == self.second:
            self.start(phase, model)
        self._add_own_group(phase, optimizer)

    def on_resume(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().on_resume(phase, model, optimizer)
        self._add_own_group(phase, optimizer)

    def _add_own_group(self, phase: Phase, optimizer: torch.optim.Optimizer) -> None:
        group = self.own_group(phase) if phase.name == self.second else None
        if group is not None:  # out of the groups the harness built, into one of their own
            ids = {id(p) for p in group["params"]}
            for other in optimizer.param_groups:
                other["params"] = [p for p in other["params"] if id(p) not in ids]
            optimizer.add_param_group(group)


class FusedPenalty:
    """Mixin of a method whose fused path adds its penalty's gradient in the backward pass (dynthresh, ltp,
    sparse-vd): no loss term there; `plain_penalty()` on the plain path (PRUNEBENCH_FUSED=0)."""

    def plain_penalty(self) -> torch.Tensor | None:
        raise NotImplementedError

    @property
    def fused(self) -> bool:
        return fused_paths()

    def penalty(self) -> torch.Tensor | None:
        """None on the fused path: there the backward adds the penalty's gradient itself."""
        return None if self.fused else self.plain_penalty()
