"""Physically smaller networks: drop whole output units (neurons, conv filters) from a plain network.

Structured pruning deploys a network with fewer units rather than zeros. `shrink` builds it from the
plain network and the units to keep in each prunable layer. It assumes the prunable layers are listed
(`prunable_layers`, definition order) in the order data flows through them, as in every task model:
the inputs of layer l + 1 are the outputs of layer l, and a conv layer followed by a linear one feeds
it its flattened (channel-major) output."""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunebench.pruner import prunable_layers


def _input_index(previous: nn.Module, layer: nn.Module, kept: torch.Tensor) -> torch.Tensor:
    """Indices along `layer`'s input dimension that belong to the kept output units of `previous`."""
    if isinstance(layer, nn.Linear) and isinstance(previous, nn.Conv2d):
        per_channel, rest = divmod(layer.in_features, previous.out_channels)
        if rest:
            raise ValueError(f"cannot map {previous.out_channels} channels onto {layer.in_features} inputs")
        return (kept[:, None] * per_channel + torch.arange(per_channel, device=kept.device)).flatten()
    return kept


def _resized(layer: nn.Module, in_units: int, out_units: int) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(in_units, out_units, bias=layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not supported")
        return nn.Conv2d(in_units, out_units, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         bias=layer.bias is not None, padding_mode=layer.padding_mode)
    raise TypeError(f"cannot resize {type(layer).__name__}")


@torch.no_grad()
def shrink(net: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the plain `net` in which prunable layer `name` keeps only output units `keep[name]`
    (indices; layers not in `keep` keep all their outputs), and the next prunable layer only the
    matching inputs. Weights and biases of the kept units are copied unchanged."""
    out = copy.deepcopy(net)
    layers = prunable_layers(out)
    unknown = set(keep) - {name for name, _ in layers}
    if unknown:
        raise KeyError(f"not prunable layers of the network: {sorted(unknown)}")
    previous: tuple[nn.Module, torch.Tensor] | None = None  # (original layer, its kept output units)
    for name, layer in layers:
        out_index = keep.get(name)
        out_index = (torch.arange(layer.weight.shape[0], device=layer.weight.device) if out_index is None
                     else torch.as_tensor(out_index, device=layer.weight.device).sort().values)
        in_index = (_input_index(previous[0], layer, previous[1]) if previous is not None
                    else torch.arange(layer.weight.shape[1], device=layer.weight.device))
        weight = layer.weight[out_index][:, in_index]
        new = _resized(layer, weight.shape[1], weight.shape[0]).to(weight.device, weight.dtype)
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias[out_index])
        new.train(layer.training)
        out.set_submodule(name, new)
        previous = (layer, out_index)
    return out


def unread_units(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """For consecutive prunable layers' weights (data-flow order), a bool per output unit of each layer
    but the last: True where the next layer's weights on every input that unit feeds are zero."""
    out = []
    for weight, following in zip(weights, weights[1:], strict=False):
        units = weight.shape[0]
        read = following.detach().transpose(0, 1).flatten(1).ne(0).any(dim=1)  # per input index
        if read.numel() != units:  # conv -> linear: each channel feeds a block of flattened inputs
            read = read.view(units, -1).any(dim=1)
        out.append(~read)
    return out


@torch.no_grad()
def zero_unread_units(net: nn.Module) -> nn.Module:
    """Zero (in place) the weights and bias of every output unit of a prunable layer that the next
    prunable layer never reads (`unread_units`): such a unit cannot change the output whatever its
    activation, so a deployed network drops it. Returns `net`. Same data-flow assumption as `shrink`."""
    layers = [module for _, module in prunable_layers(net)]
    for layer, unread in zip(layers, unread_units([m.weight for m in layers]), strict=False):
        layer.weight[unread] = 0.0
        if layer.bias is not None:
            layer.bias[unread] = 0.0
    return net
