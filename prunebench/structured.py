"""How the prunable layers of a network connect, and physically smaller networks built from that.

Structured pruning deploys a network with fewer units rather than zeros: `shrink` builds it from the
plain network and the output units to keep in some prunable layers; `zero_unread_units` zeroes the
units that no later layer reads. Both need to know which layer reads which layer's outputs, unit by
unit. That is a `Structure`, which `network_structure` finds in one of two ways:

- traced (a model class that declares `input_shape`, one example without the batch dimension, as
  VGGLike, AlexNetCaffe and ResNet56 do): one forward pass in eval mode on zeros records, with forward
  hooks, the call order of the prunable layers and BatchNorm modules, and walks the autograd graph back
  from each layer's input to the hooked outputs it comes from. Layer P "feeds" layer L when L's input
  comes from P's output alone (through P's BatchNorm, if it has one), only through ops that act on each
  channel separately (`UNIT_WISE_OPS`: ReLU, max/avg pooling, flattening views, ...), nothing else reads
  P's output, and L's input units match P's output units (equal, or a whole multiple when a conv feeds
  a linear layer through a channel-major flatten). A residual addition (two sources), a channel-mixing
  op such as LocalResponseNorm, or the network output reading P leaves P without a feeder link. A
  BatchNorm "normalises" P when its input is P's output itself, it is P's only reader, and it has P's
  number of units; `shrink` removes the same units from it.
- assumed (a model without `input_shape`, as the MNIST models): the prunable layers in definition
  order form a chain, layer l feeding layer l + 1, with no BatchNorm. This is what every model before
  the CIFAR/ImageNet ones was written to, and such a model must have no BatchNorm and no grouped
  convolution (else a ValueError asks for `input_shape`).

`Structure.chain` says whether a network is a chain (data flows through the prunable layers one after
another in definition order; AlexNet is one, although LRN keeps conv1 and conv2 from feeding the next
layer unit by unit; a ResNet is not), `Structure.links` whether each layer feeds the next. Grouped
convolutions are handled: a unit set removed from a grouped layer's outputs or inputs must hold the same
number of units in each group (else ValueError), and the smaller layer keeps its number of groups."""

from __future__ import annotations

import copy
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunebench.pruner import PRUNABLE_TYPES, prunable_layers

INPUT = "<input>"  # the network input, as a source in a traced structure
OUTPUT = "<output>"  # the network output, as a reader in a traced structure

#: Autograd nodes (class name without "Backward<n>") that act on each channel or feature separately and
#: keep the channel-major layout: what may lie between a layer and the layer it feeds. Views are taken
#: to be flattening (N, C, H, W) -> (N, C*H*W).
UNIT_WISE_OPS = frozenset({
    "Relu", "Threshold", "Sigmoid", "Tanh", "MaxPool2DWithIndices", "MaxPool2D", "AvgPool2D",
    "AdaptiveAvgPool2D", "AdaptiveMaxPool2D", "View", "UnsafeView", "Reshape", "ReshapeAlias", "Clone", "Alias"})


@dataclass(frozen=True)
class Structure:
    """How a network's prunable layers connect (see the module docstring)."""

    layers: tuple[str, ...]  # prunable layers, definition order
    #: layer -> the one prunable layer that reads its output units, unit by unit, and nothing else does.
    feeds: dict[str, str] = field(default_factory=dict)
    #: layer -> the BatchNorm module that normalises its outputs.
    norms: dict[str, str] = field(default_factory=dict)
    order: tuple[str, ...] = ()  # the order the forward pass calls the prunable layers in
    #: Data flows through the prunable layers one after another in definition order: the first reads the
    #: input alone, each next one reads only the previous one's output (through any ops: AlexNet's LRN
    #: too), which nothing else reads, and the output comes from the last one alone. ResNets are not chains.
    chain: bool = True
    traced: bool = False

    def links(self) -> list[bool]:
        """For each layer but the last (definition order): does it feed the next one?"""
        return [self.feeds.get(a) == b for a, b in zip(self.layers, self.layers[1:], strict=False)]

    def fed_by(self) -> dict[str, str]:
        """layer -> the layer that feeds it."""
        return {reader: name for name, reader in self.feeds.items()}


def network_structure(net: nn.Module, example: torch.Tensor | None = None) -> Structure:
    """The `Structure` of `net`: traced on `example` (one input, batch dimension included) when given,
    else on zeros of the class's `input_shape` when it declares one, else the assumed chain."""
    if example is None and getattr(net, "input_shape", None) is not None:
        example = torch.zeros(1, *net.input_shape)
    if example is not None:
        return trace_structure(net, example)
    return assumed_chain(net)


def assumed_chain(net: nn.Module) -> Structure:
    """The chain structure of a model that declares no `input_shape` (see the module docstring)."""
    layers = prunable_layers(net)
    names = tuple(name for name, _ in layers)
    if any(isinstance(m, _BatchNorm) for m in net.modules()) or any(getattr(m, "groups", 1) != 1 for _, m in layers):
        raise ValueError(f"{type(net).__name__} has BatchNorm or grouped convolutions: declare its input_shape so "
                         "that its structure can be traced")
    return Structure(names, feeds=dict(zip(names, names[1:], strict=False)), order=names, chain=True, traced=False)


def _op_name(node) -> str:
    return re.sub(r"Backward\d*$", "", type(node).__name__)


def _sources(tensor: torch.Tensor, owner: dict, network_input: torch.Tensor) -> tuple[set[str], set[str]]:
    """The hooked modules (and INPUT) whose outputs `tensor` is computed from, and the ops in between."""
    if tensor.grad_fn is None:
        return ({INPUT} if tensor is network_input else set()), set()
    sources: set[str] = set()
    ops: set[str] = set()
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in owner:
            sources.add(owner[node])
            continue
        if type(node).__name__ == "AccumulateGrad":
            if node.variable is network_input:
                sources.add(INPUT)
            continue  # a parameter
        ops.add(_op_name(node))
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    return sources, ops


def _in_units(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _units_match(producer: nn.Module, reader: nn.Module) -> bool:
    units, inputs = producer.weight.shape[0], _in_units(reader)
    if isinstance(reader, nn.Linear) and isinstance(producer, nn.Conv2d):
        return inputs % units == 0
    return inputs == units


def trace_structure(net: nn.Module, example: torch.Tensor) -> Structure:
    """Trace `net`'s structure with one forward pass on `example` in eval mode (modes restored after)."""
    modules = dict(net.named_modules())
    names = {module: name for name, module in modules.items()}
    layers = prunable_layers(net)
    prunable = {name for name, _ in layers}
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls.append((names[module], inputs[0], output))

    watched = [m for m in modules.values() if isinstance(m, (*PRUNABLE_TYPES, _BatchNorm))]
    handles = [m.register_forward_hook(hook) for m in watched]
    modes = {m: m.training for m in net.modules()}
    parameter = next(net.parameters())
    x = example.detach().to(parameter.device, parameter.dtype).requires_grad_(True)
    try:
        net.eval()
        with torch.enable_grad():
            out = net(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    order = tuple(name for name, _, _ in calls if name in prunable)
    called = Counter(name for name, _, _ in calls)
    for name in prunable:
        if called[name] != 1:
            raise ValueError(f"{name} is called {called[name]} times in one forward pass: cannot trace")
    owner = {output.grad_fn: name for name, _, output in calls}
    reads = {name: _sources(inp, owner, x) for name, inp, _ in calls}
    reads[OUTPUT] = _sources(out, owner, x)
    readers: dict[str, set[str]] = defaultdict(set)
    for reader, (sources, _) in reads.items():
        for source in sources:
            readers[source].add(reader)

    norms = {}
    for name, inp, _ in calls:
        if name in prunable:
            continue
        source = owner.get(inp.grad_fn)
        if (source in prunable and readers[source] == {name} and called[name] == 1
                and modules[name].num_features == modules[source].weight.shape[0]):
            norms[source] = name
    feeds = {}
    for name, layer in layers:
        head = norms.get(name, name)
        if len(readers[head]) != 1:
            continue
        (reader,) = readers[head]
        if reader not in prunable:
            continue
        sources, ops = reads[reader]
        if sources == {head} and ops <= UNIT_WISE_OPS and _units_match(layer, modules[reader]):
            feeds[name] = reader
    names_in_order = tuple(name for name, _ in layers)
    heads = [norms.get(name, name) for name in names_in_order]
    chain = (order == names_in_order and reads[names_in_order[0]][0] == {INPUT}
             and all(reads[name][0] == {head} and readers[head] == {name}
                     for head, name in zip(heads, names_in_order[1:], strict=False))
             and reads[OUTPUT][0] == {heads[-1]} and readers[heads[-1]] == {OUTPUT})
    return Structure(names_in_order, feeds=feeds, norms=norms, order=order, chain=chain, traced=True)


# -- smaller networks ------------------------------------------------------------------------------------


def _input_index(previous: nn.Module, layer: nn.Module, kept: torch.Tensor) -> torch.Tensor:
    """Indices along `layer`'s input dimension that belong to the kept output units of `previous`."""
    if isinstance(layer, nn.Linear) and isinstance(previous, nn.Conv2d):
        per_channel, rest = divmod(layer.in_features, previous.out_channels)
        if rest:
            raise ValueError(f"cannot map {previous.out_channels} channels onto {layer.in_features} inputs")
        return (kept[:, None] * per_channel + torch.arange(per_channel, device=kept.device)).flatten()
    return kept


def _balanced_groups(index: torch.Tensor, per_group: int, groups: int, what: str) -> torch.Tensor:
    """The group of each index; ValueError unless every group holds the same number of them."""
    group = torch.div(index, per_group, rounding_mode="floor")
    counts = torch.bincount(group, minlength=groups)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"{what}: a grouped convolution must keep the same number of units in each of its "
                         f"{groups} groups, got {counts.tolist()}")
    return group


def _selected_weight(name: str, layer: nn.Module, out_index: torch.Tensor,
                     in_index: torch.Tensor | None) -> torch.Tensor:
    """`layer`'s weight restricted to output units `out_index` and input units `in_index` (None: all)."""
    weight = layer.weight
    groups = getattr(layer, "groups", 1)
    if groups == 1:
        weight = weight[out_index]
        return weight if in_index is None else weight[:, in_index]
    out_group = _balanced_groups(out_index, weight.shape[0] // groups, groups, f"{name} outputs")
    rows = weight[out_index]
    if in_index is None:
        return rows
    per_group = weight.shape[1]
    _balanced_groups(in_index, per_group, groups, f"{name} inputs")
    local = (in_index % per_group).view(groups, -1)[out_group]  # per kept row: its group's kept inputs
    return rows.gather(1, local[:, :, None, None].expand(-1, -1, *rows.shape[2:]))


def resized(layer: nn.Module, in_units: int, out_units: int) -> nn.Module:
    """A fresh Linear or Conv2d like `layer` (kernel, stride, padding, groups, bias) with other unit counts."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(in_units, out_units, bias=layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(in_units, out_units, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         groups=layer.groups, bias=layer.bias is not None, padding_mode=layer.padding_mode)
    raise TypeError(f"cannot resize {type(layer).__name__}")


@torch.no_grad()
def _shrunk_norm(norm: _BatchNorm, index: torch.Tensor) -> _BatchNorm:
    """A copy of `norm` with only the features `index` (affine parameters and running statistics)."""
    new = type(norm)(index.numel(), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                     track_running_stats=norm.track_running_stats)
    state = [t for t in (norm.weight, norm.running_mean) if t is not None]
    new.to(index.device, state[0].dtype if state else None)
    for key in ("weight", "bias", "running_mean", "running_var"):
        source = getattr(norm, key)
        if source is not None:
            getattr(new, key).copy_(source[index])
    if norm.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(norm.num_batches_tracked)
    new.train(norm.training)
    return new


@torch.no_grad()
def shrink(net: nn.Module, keep: dict[str, torch.Tensor], structure: Structure | None = None) -> nn.Module:
    """A copy of the plain `net` in which prunable layer `name` keeps only output units `keep[name]`
    (indices; layers not in `keep` keep all their outputs), its BatchNorm the same features, and the layer
    it feeds the matching inputs. Weights, biases and BatchNorm state of what is kept are copied unchanged.
    ValueError for a layer that feeds no layer (`Structure.feeds`) or a grouped layer left unbalanced.
    `structure`: `network_structure(net)` when not given."""
    structure = structure or network_structure(net)
    layers = dict(prunable_layers(net))
    unknown = set(keep) - set(layers)
    if unknown:
        raise KeyError(f"not prunable layers of the network: {sorted(unknown)}")
    for name in keep:
        if name not in structure.feeds:
            raise ValueError(f"cannot remove output units of {name}: no single next prunable layer reads them "
                             "unit by unit (network output, residual addition or channel-mixing op after it)")
    device = next(net.parameters()).device
    out_index = {name: torch.as_tensor(index, device=device).sort().values for name, index in keep.items()}
    fed_by = structure.fed_by()
    out = copy.deepcopy(net)
    for name, layer in layers.items():
        producer = fed_by.get(name)
        if name not in out_index and producer not in out_index:
            continue
        rows = out_index.get(name, torch.arange(layer.weight.shape[0], device=device))
        columns = _input_index(layers[producer], layer, out_index[producer]) if producer in out_index else None
        weight = _selected_weight(name, layer, rows, columns)
        in_units = weight.shape[1] * getattr(layer, "groups", 1)
        new = resized(layer, in_units, weight.shape[0]).to(weight.device, weight.dtype)
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias[rows])
        new.train(layer.training)
        out.set_submodule(name, new)
    for name, index in out_index.items():
        if name in structure.norms:
            norm_name = structure.norms[name]
            out.set_submodule(norm_name, _shrunk_norm(net.get_submodule(norm_name), index))
    return out


def _inputs_read(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A bool per input unit of a layer (in_features, or in_channels of a conv): any non-zero weight on it."""
    nonzero = weight.detach().ne(0)
    if groups == 1:
        return nonzero.transpose(0, 1).flatten(1).any(dim=1)
    out_units, per_group = nonzero.shape[:2]
    return nonzero.reshape(groups, out_units // groups, per_group, -1).any(dim=3).any(dim=1).flatten()


def unread_units(weights: list[torch.Tensor], links: list[bool] | None = None,
                 groups: list[int] | None = None) -> list[torch.Tensor]:
    """For prunable layers' weights in definition order, a bool per output unit of each layer but the
    last: True where the next layer's weights on every input that unit feeds are zero. `links[l]` False
    (layer l does not feed layer l + 1, `Structure.links`): no unit of layer l is unread. `groups[l]`: the
    conv groups of layer l (default: every layer feeds the next, no groups)."""
    out = []
    for index, (weight, following) in enumerate(zip(weights, weights[1:], strict=False)):
        units = weight.shape[0]
        if links is not None and not links[index]:
            out.append(torch.zeros(units, dtype=torch.bool, device=weight.device))
            continue
        read = _inputs_read(following, groups[index + 1] if groups is not None else 1)  # per input index
        if read.numel() != units:  # conv -> linear: each channel feeds a block of flattened inputs
            read = read.view(units, -1).any(dim=1)
        out.append(~read)
    return out


@torch.no_grad()
def zero_unread_units(net: nn.Module, structure: Structure | None = None) -> nn.Module:
    """Zero (in place) the weights and bias of every output unit of a prunable layer that the layer it
    feeds never reads (`unread_units`): such a unit cannot change the output whatever its activation,
    so a deployed network drops it. Returns `net`. `structure`: `network_structure(net)` when not given."""
    structure = structure or network_structure(net)
    layers = [module for _, module in prunable_layers(net)]
    unread = unread_units([m.weight for m in layers], structure.links(), [getattr(m, "groups", 1) for m in layers])
    for layer, mask in zip(layers, unread, strict=False):
        layer.weight[mask] = 0.0
        if layer.bias is not None:
            layer.bias[mask] = 0.0
    return net
