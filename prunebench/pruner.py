"""The `Pruner` interface every method implements, its hyperparameter dataclasses, and the registry."""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunebench.knob import CompressionKnob
from prunebench.protocol import Phase, Protocol

if TYPE_CHECKING:
    from prunebench.tasks import Task

PRUNABLE_TYPES = (nn.Linear, nn.Conv2d)
BUDGETS = ("equal", "paper")


@dataclasses.dataclass
class Hyperparameters:
    """Base of every method's hyperparameter dataclass.

    Each field becomes a CLI flag; put its help text in `field(metadata={"help": ...})` and, for a
    field with a closed set of values, `metadata={"choices": (...)}`; bounds on a number (or on every value
    of a tuple; a tuple needs one value at least) go in `metadata` too: "min" (>=), "gt" (>), "max" (<=),
    "lt" (<). Fields equal to their dataclass default are left out of a run's identity, so adding a field
    with a default keeps old identities."""

    def validate(self) -> None:
        """Raise ValueError for a value out of range. The base checks `choices`, non-finite floats and the
        metadata's bounds; subclasses add what relates two fields."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}; got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value}")
            bounds = {key: f.metadata[key] for key in BOUNDS if key in f.metadata}
            values = value if isinstance(value, tuple) else (value,)
            if not values:
                raise ValueError(f"{f.name} needs at least one value")
            if not all(BOUNDS[key][0](v, bound) for v in values for key, bound in bounds.items()):
                name = f"{f.name} values" if isinstance(value, tuple) else f.name
                raise ValueError(f"{name} must be {_range_text(bounds)}, got {value}")

    def non_default(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != _field_default(f)}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Bound keys of a hyperparameter's metadata: (test, how it reads alone, its bracket in an interval).
BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], str, str]] = {
    "min": (operator.ge, ">=", "["), "gt": (operator.gt, ">", "("),
    "max": (operator.le, "<=", "]"), "lt": (operator.lt, "<", ")")}


def _range_text(bounds: dict[str, Any]) -> str:
    """">= 0" for one bound, "in [0, 1)" for two."""
    if len(bounds) == 1:
        ((key, bound),) = bounds.items()
        return f"{BOUNDS[key][1]} {bound}"
    (low, low_bound), (high, high_bound) = bounds.items()
    return f"in {BOUNDS[low][2]}{low_bound}, {high_bound}{BOUNDS[high][2]}"


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def require(condition: bool, message: str) -> None:
    """Hyperparameter check helper: raise ValueError(message) unless condition holds."""
    if not condition:
        raise ValueError(message)


class Pruner:
    """A pruning method, as the harness sees it.

    The harness builds the task's plain model, calls `attach` once, builds the optimizer over
    `model.parameters()` for each phase in `phases(protocol)`, and per step adds `penalty()` to the
    task loss and calls `after_step(step)` after `optimizer.step()`. At every evaluation it measures
    the network returned by `deployed(model)`: a plain network of the task's architecture, with exact
    zeros where the method pruned. Methods never report their own compression."""

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    hparams_class: ClassVar[type[Hyperparameters]] = Hyperparameters
    #: "paper": faithful to the cited paper; "reconstruction": parts rebuilt where the text was unavailable.
    provenance: ClassVar[str] = "paper"
    #: True when the network as trained (e.g. with noise or soft masks, in eval mode) is not the deployed
    #: one; the harness then also records its test accuracy ("trained_accuracy") at every evaluation.
    trained_network_differs: ClassVar[bool] = False
    #: Why the method cannot run on several processes (DDP), as one line; None: it can. A method runs
    #: under DDP when its decisions depend only on state that is identical on every rank (weights,
    #: gradients after the all-reduce, its own state, the global generator); the harness checks the
    #: masks agree at every evaluation.
    ddp_refusal: ClassVar[str | None] = None
    #: The hyperparameter that trades compression for accuracy, its direction and search bounds
    #: (`prunebench.knob`), for the matched-compression search (`prunebench curve`); None: the method has
    #: none (dense).
    knob: ClassVar[CompressionKnob | None] = None

    def __init__(self, hparams: Hyperparameters, task: Task, budget: str = "equal") -> None:
        hparams.validate()
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}; got {budget!r}")
        self.hp = hparams
        self.task = task
        #: "equal": all phases together take the protocol's iterations; "paper": the method's published
        #: schedule converted to iterations. Methods with one phase ignore it.
        self.budget = budget
        #: The current phase's optimizer (bound by the default `on_phase_start` and `on_resume`).
        self.optimizer: torch.optim.Optimizer | None = None

    # -- hooks ------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        """Re-parametrise or swap the prunable layers before training. Default: unchanged."""
        return model

    def penalty(self) -> torch.Tensor | None:
        """The method's extra loss term for this step, or None."""
        return None

    def after_step(self, step: int) -> None:
        """Called after each optimizer step with the global step number (1-based)."""

    def after_evaluation(self, model: nn.Module,  # noqa: ARG002
                         validation_loss: Callable[[nn.Module], float] | None) -> None:  # noqa: ARG002
        """Called after each evaluation point but the last is stored (before the checkpoint that follows it), with
        `validation_loss(net)`: the mean task loss of a network on the validation split held out of the
        training set (None for a run without one). A rule that needs accuracy to decide (a plateau, a cut that
        must keep the loss) reads it here, never the test set. Default: nothing."""

    def skips_optimizer_step(self, step: int) -> bool:  # noqa: ARG002
        """True where the optimizer must not update the weights at global step `step` (1-based): the step's
        gradient serves the method alone (RigL's mask updates read the dense gradient and apply no weight
        update). `after_step(step)` is called either way, with the gradients of that step still in `.grad`.
        Default: False."""
        return False

    def phases(self, protocol: Protocol) -> list[Phase]:
        """The training phases under `self.budget`; default is one phase of the protocol's
        iterations at its lr. Under budget "equal" the phases must sum to `protocol.iterations`."""
        return [Phase("train", protocol.iterations, protocol.lr)]

    def iterations_per_epoch(self, protocol: Protocol) -> int:
        """Optimizer steps in one pass over the task's training set (to convert a paper's epochs)."""
        return self.task.train_size // protocol.batch_size

    def on_phase_start(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:  # noqa: ARG002
        """Called when a phase starts, after its optimizer was built. Default: binds it as `self.optimizer`."""
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        """The method's training state that is not in `model.state_dict()` (masks kept as attributes,
        counters, its own random generator, thresholds' statistics), for checkpoints. Tensors, numbers,
        strings and lists/tuples/dicts of them only. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, on a pruner freshly attached to a fresh model."""
        if state:
            raise ValueError(f"{self.name} keeps no state beyond the model; got {sorted(state)}")

    def on_resume(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:  # noqa: ARG002
        """Called instead of `on_phase_start` when a run continues from a checkpoint inside `phase`,
        after the model's and this pruner's state were restored and before the optimizer's is loaded
        into `optimizer`. Rebind references (`self.optimizer = optimizer`) and add parameter groups
        the way `on_phase_start` did; recompute nothing from the weights. Default: binds `self.optimizer`."""
        self.optimizer = optimizer

    def deployed(self, model: nn.Module) -> nn.Module:
        """The network as it would ship: the task's plain architecture, pruned weights exactly zero."""
        raise NotImplementedError

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Keep-scores per prunable layer (higher = keep), for evaluation at an exact compression."""
        return None

    def thresholds(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The method's learned pruning thresholds per prunable layer (any shape), for methods that have
        them (dynthresh, dst, ltp); the harness records their distribution at each evaluation (DT paper
        Fig. 5). Default: None."""
        return None

    # -- helpers for subclasses --------------------------------------------------------------------
    def export(self, model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A fresh plain network of the task's architecture carrying `model`'s parameters.

        For each prunable layer the weight is `weights[name]` when given, else the (possibly
        parametrised) `model.<name>.weight`; biases and any other layers are copied as they are."""
        return export_plain(self.task.architecture, model, weights)


def export_plain(architecture: Callable[[], nn.Module], model: nn.Module,
                 weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """See `Pruner.export`."""
    plain = architecture()
    device = next(model.parameters()).device
    plain.to(device)
    weights = weights or {}
    with torch.no_grad():
        for name, module in plain.named_modules():
            if not isinstance(module, PRUNABLE_TYPES):
                continue
            src = model.get_submodule(name)
            module.weight.copy_(weights.get(name, src.weight))
            if module.bias is not None:
                module.bias.copy_(src.bias)
        # Everything else that holds state (BatchNorm affine parameters and running statistics, LRN has
        # none) is copied module by module, matched by name: methods swap or parametrise only the
        # prunable layers, so the other modules keep their names in `model`.
        for name, module in plain.named_modules():
            if isinstance(module, PRUNABLE_TYPES):
                continue
            own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
            if not own:
                continue
            src = model.get_submodule(name)
            for key, tensor in own.items():
                tensor.copy_(getattr(src, key))
    plain.eval()
    return plain


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of the Linear and Conv2d layers, in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


class MaskedPruner(Pruner):
    """A method that keeps its masks as its own state (magnitude, sensitivity): `keep` maps a prunable
    layer's name to its keep mask, for the layers pruned so far; `apply_masks` zeroes the pruned weights
    and their optimizer state (`zero_pruned`); checkpoints carry the masks under `masks_key`."""

    masks_key: ClassVar[str] = "keep"

    def __init__(self, hparams: Hyperparameters, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        self.layers: list[tuple[str, nn.Module]] = []
        self.keep: dict[str, torch.Tensor] = {}

    def attach(self, model: nn.Module) -> nn.Module:
        self.layers = prunable_layers(model)
        return model

    def apply_masks(self) -> None:
        """Zero the pruned weights and every optimizer state entry that belongs to them (`zero_pruned`)."""
        zero_pruned(self.layers, self.keep, self.optimizer)

    def after_step(self, step: int) -> None:  # noqa: ARG002
        if self.keep:
            self.apply_masks()

    def state_dict(self) -> dict[str, Any]:
        return {self.masks_key: dict(self.keep)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.layers[0][1].weight.device
        self.keep = {name: mask.to(device, copy=True) for name, mask in state[self.masks_key].items()}

    def deployed(self, model: nn.Module) -> nn.Module:
        """The plain architecture with the pruned weights exactly zero (dense before the first prune)."""
        return self.export(model, weights={name: model.get_submodule(name).weight.detach() * mask
                                           for name, mask in self.keep.items()})

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """|w| of the kept weights, 0 for pruned ones."""
        return {name: module.weight.detach().abs() * self.keep[name] if name in self.keep
                else module.weight.detach().abs() for name, module in prunable_layers(model)}


#: Optimizer state entries that could move a weight; zeroed at masked entries after each step.
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


@torch.no_grad()
def zero_pruned(layers: list[tuple[str, nn.Module]], masks: dict[str, torch.Tensor],
                optimizer: torch.optim.Optimizer | None) -> None:
    """Multiply each layer's weight by its mask, and every optimizer state entry of that weight (Adam's
    moments, momentum) too, so a pruned weight stays exactly zero and carries no stale state."""
    for name, module in layers:
        mask = masks[name]
        module.weight.mul_(mask)
        if optimizer is not None:
            state = optimizer.state.get(module.weight, {})
            for key in STATE_KEYS:
                value = state.get(key)
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.mul_(mask)


def init_like(layer: nn.Module, source: nn.Module) -> None:
    """Run nn.Linear's or nn.Conv2d's __init__ on `layer` (a method's subclass of source's type) with the
    plain layer `source`'s shape, device and dtype, then copy source's weight and bias into it."""
    options = dict(bias=source.bias is not None, device=source.weight.device, dtype=source.weight.dtype)
    if isinstance(layer, nn.Conv2d):
        nn.Conv2d.__init__(layer, source.in_channels, source.out_channels, source.kernel_size, source.stride,
                           source.padding, source.dilation, source.groups, padding_mode=source.padding_mode,
                           **options)
    else:
        nn.Linear.__init__(layer, source.in_features, source.out_features, **options)
    with torch.no_grad():
        layer.weight.copy_(source.weight)
        if source.bias is not None:
            layer.bias.copy_(source.bias)


def swap_layers(model: nn.Module, linear: type[nn.Module], conv: type[nn.Module],
                args: Callable[[int, nn.Module], tuple] = lambda index, layer: ()) -> list[tuple[str, nn.Module]]:
    """Replace the prunable layer number `index` of `model` (in definition order), by name, with
    `linear(layer, *args(index, layer))` (or `conv(...)` for a Conv2d); the (name, new layer) pairs."""
    swapped = []
    for index, (name, module) in enumerate(prunable_layers(model)):
        layer = (conv if isinstance(module, nn.Conv2d) else linear)(module, *args(index, module))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        swapped.append((name, layer))
    return swapped


def parametrize_weights(model: nn.Module,
                        make: Callable[[nn.Module], nn.Module]) -> list[tuple[str, nn.Module, nn.Module]]:
    """Register `make(layer)` as the parametrisation of each prunable layer's weight, in definition order;
    the (name, layer, parametrisation) triples."""
    layers = []
    for name, module in prunable_layers(model):
        parametrisation = make(module)
        parametrize.register_parametrization(module, "weight", parametrisation)
        layers.append((name, module, parametrisation))
    return layers


def parametrised(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, nn.Module]]:
    """(name, dense weight (detached), parametrisation) of each prunable layer of `model` whose weight is
    parametrised (`parametrize_weights`)."""
    for name, module in prunable_layers(model):
        if parametrize.is_parametrized(module, "weight"):
            yield name, module.parametrizations.weight.original.detach(), module.parametrizations.weight[0]


REGISTRY: dict[str, type[Pruner]] = {}


def register(name: str) -> Callable[[type[Pruner]], type[Pruner]]:
    """Class decorator: `@register("dynthresh")` makes the method available under that name."""

    def decorate(cls: type[Pruner]) -> type[Pruner]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


def make_hparams(cls: type[Pruner], task: Task, overrides: dict[str, Any] | None = None) -> Hyperparameters:
    """The method's hyperparameters for a task: dataclass defaults, then the task's calibrated
    defaults for this method, then explicit overrides. Validated before any training."""
    known = {f.name for f in dataclasses.fields(cls.hparams_class)}
    values = dict(task.method_defaults.get(cls.name, {}))
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f"{cls.name} has no hyperparameter {key!r}; it has: {', '.join(sorted(known))}")
        values[key] = value
    hp = cls.hparams_class(**values)
    hp.validate()
    return hp
