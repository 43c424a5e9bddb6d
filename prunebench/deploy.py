"""Deployed networks kept on disk: what `prunebench run --save-model` writes and `prunebench export` reads.

A finished run's deployed network (`Pruner.deployed`: the network the harness measured) is kept beside
the result store, as checkpoints are (`prunebench.checkpoint`): `runs.sqlite` -> `runs.models/<run_id>.pt`
(ignored by git: `*.models/`). The harness writes it after the run finished, on the writer only (rank 0),
outside the training loop.

What is saved: the deployed network's state dict (CPU float tensors, pruned weights exactly zero) with
the task architecture's name and the shape of every tensor, not a pickled module. Unstructured methods
deploy the task architecture with exact zeros; a structured method (autoprune) deploys a physically
smaller network of the same class whose Linear / Conv2d layers (and their BatchNorm) have fewer units.
`rebuild` builds the task architecture and replaces each prunable layer and BatchNorm whose saved shape
differs with one of the saved shape (same kernel, stride, padding, groups; `structured.shrink` builds
smaller networks the same way), then loads the state dict strictly. The file loads with
`torch.load(..., weights_only=True)` (no code is unpickled) and needs no prunebench to read; rebuilding
the module needs the architecture's class, which the file names.

`prunebench.sparse.load_safetensors` loads what `prunebench export --format safetensors [--compressed]` wrote
back as a plain `nn.Module` (the one documented call for both files).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunebench.checkpoint import save_atomically
from prunebench.pruner import PRUNABLE_TYPES, prunable_layers
from prunebench.structured import resized

FORMAT = 1


def models_dir(store_path: Path) -> Path:
    """`runs.sqlite` -> `runs.models/` (ignored by git: `*.models/`), as `checkpoint.checkpoint_dir`."""
    return Path(store_path).with_name(Path(store_path).stem + ".models")


def model_path(directory: Path, run_id: str) -> Path:
    return Path(directory) / f"{run_id}.pt"


@dataclass
class SavedModel:
    """A deployed network as kept on disk (see the module docstring)."""

    run_id: str
    task: str
    method: str
    seed: int
    architecture: str                 #: the task architecture's class, "module.QualName"
    state_dict: dict[str, torch.Tensor]
    #: the final accuracy, compression, weights_nonzero and weights_total of the run that made it
    final: dict[str, Any]
    #: "run" (kept by the run itself, `--save-model`) or "rerun" (made again from the stored identity)
    origin: str = "run"
    #: where a rerun ran (`environment.environment`: versions, device and threads, git commit); None for a
    #: model kept by its run, whose environment is in the store
    environment: dict[str, Any] | None = None

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {key: list(t.shape) for key, t in self.state_dict.items()}


def architecture_name(architecture: Callable[[], nn.Module]) -> str:
    net = architecture()
    return f"{type(net).__module__}.{type(net).__qualname__}"


def save_deployed(path: Path, net: nn.Module, *, run_id: str, task: str, method: str, seed: int,
                  architecture: Callable[[], nn.Module], final: dict[str, Any], origin: str = "run",
                  environment: dict[str, Any] | None = None) -> Path:
    """Write `net` (a deployed network) to `path` atomically; returns the path. `origin`, `environment`: see
    `SavedModel`."""
    path = Path(path)
    state = {key: t.detach().to("cpu").clone() for key, t in net.state_dict().items()}
    blob = {"format": FORMAT, "run_id": run_id, "task": task, "method": method, "seed": int(seed),
            "architecture": architecture_name(architecture), "shapes": {k: list(t.shape) for k, t in state.items()},
            "state_dict": state,
            "final": {k: final.get(k) for k in ("accuracy", "compression", "weights_nonzero", "weights_total")},
            "origin": origin, "environment": json.dumps(environment) if environment is not None else None}
    return save_atomically(blob, path, "the deployed network")


def load_saved(path: Path) -> SavedModel:
    """Read a file `save_deployed` wrote. ValueError when it is not one (or of another format)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a deployed network saved by prunebench (format {FORMAT})")
    return SavedModel(blob["run_id"], blob["task"], blob["method"], blob["seed"], blob["architecture"],
                      blob["state_dict"], blob["final"], blob.get("origin", "run"),
                      json.loads(blob["environment"]) if blob.get("environment") else None)


@torch.no_grad()
def rebuild(architecture: Callable[[], nn.Module], state: dict[str, torch.Tensor]) -> nn.Module:
    """The network of `state` (a deployed state dict) in eval mode: the task architecture with each prunable
    layer and BatchNorm resized to the shapes in `state`, loaded strictly."""
    net = architecture()
    for name, module in list(net.named_modules()):
        if isinstance(module, PRUNABLE_TYPES):
            weight = state[f"{name}.weight"]
            if tuple(weight.shape) != tuple(module.weight.shape):
                in_units = weight.shape[1] * getattr(module, "groups", 1)
                net.set_submodule(name, resized(module, in_units, weight.shape[0]))
        elif isinstance(module, _BatchNorm):
            key = f"{name}.weight" if module.affine else f"{name}.running_mean"
            features = state[key].shape[0]
            if features != module.num_features:
                net.set_submodule(name, type(module)(features, eps=module.eps, momentum=module.momentum,
                                                     affine=module.affine,
                                                     track_running_stats=module.track_running_stats))
    net.load_state_dict(state, strict=True)
    return net.eval()


def reshaped(net: nn.Module, architecture: Callable[[], nn.Module]) -> bool:
    """True when `net`'s prunable layers differ in shape from the architecture's (a physically smaller
    network, structured pruning)."""
    reference = {name: tuple(m.weight.shape) for name, m in prunable_layers(architecture())}
    return {name: tuple(m.weight.shape) for name, m in prunable_layers(net)} != reference


def weights_nonzero(net: nn.Module) -> int:
    """Non-zero weights of the Linear / Conv2d layers (the store's `weights_nonzero`)."""
    return sum(int(torch.count_nonzero(m.weight)) for _, m in prunable_layers(net))
