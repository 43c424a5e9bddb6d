"""What compression buys a deployed network: bytes on disk and CPU inference time, dense against compressed.

Storage. Both files are safetensors files (an 8-byte header length, a JSON header, then the raw tensors),
so they differ only in how the weights are laid out, and their real sizes on disk are compared:

- dense: every parameter and buffer as stored by the network, float32; for a physically smaller network
  (structured pruning, autoprune) the dense file of the task architecture it replaces;
- compressed: each Linear / Conv2d weight (viewed as a matrix out x in*kh*kw, row-major) in the smallest of
  three layouts, chosen per layer by its byte count (`layer_bytes`; ties go to the first):
  "dense" (float32 values, 4 bytes per weight: what a layer without zeros, e.g. of a physically smaller
  network, keeps), "bitmask" (`np.packbits` of the non-zero pattern, ceil(n / 8) bytes, plus the float32
  non-zero values) or "csr" (column indices in the smallest unsigned integer type that holds in*kh*kw - 1,
  row pointers in the smallest that holds the non-zero count, plus the float32 values); biases, BatchNorm
  parameters and buffers stay dense. `read_compressed` decodes the file back to the exact state dict.

Latency. Median wall-clock of one forward pass on one CPU thread (`torch.set_num_threads(1)`) at batch
1 and 100, in the same process, the dense and the compressed network alternating (their order swapped
every round) after a warm-up; each sample times enough calls to last `SAMPLE_SECONDS`. The dense network
runs every layer as a dense kernel (the task architecture's shapes); the compressed one runs each layer
stored "bitmask" or "csr" as a torch sparse CSR matrix product (`CSRLinear`; a Conv2d as unfold then the
CSR product, `CSRConv2d`; a grouped convolution stays a dense kernel) and each layer stored "dense" as a
dense kernel, so a physically smaller network runs as dense kernels of its smaller shapes. Its outputs
equal the dense network's up to float rounding (another summation order), not bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from prunebench.deploy import rebuild, reshaped
from prunebench.pruner import prunable_layers

LAYOUTS = ("dense", "bitmask", "csr")
#: Each latency sample times calls for at least this long (timer resolution, scheduler noise).
SAMPLE_SECONDS = 0.005
LATENCY_BATCHES: tuple[int, ...] = (1, 100)
LATENCY_ROUNDS = 41


def index_dtype(largest: int) -> np.dtype:
    """The smallest unsigned integer type that holds 0..largest."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"no integer type holds {largest}")


def layer_bytes(shape: tuple[int, ...], nonzero: int) -> dict[str, int]:
    """Bytes of one weight tensor (float32 values) in each layout, for its shape and non-zero count."""
    rows = shape[0]
    n = math.prod(shape)
    columns = n // rows
    return {"dense": 4 * n,
            "bitmask": (n + 7) // 8 + 4 * nonzero,
            "csr": (index_dtype(max(columns - 1, 0)).itemsize * nonzero
                    + index_dtype(nonzero).itemsize * (rows + 1) + 4 * nonzero)}


def choose_layout(shape: tuple[int, ...], nonzero: int) -> str:
    sizes = layer_bytes(shape, nonzero)
    return min(LAYOUTS, key=lambda layout: sizes[layout])  # min keeps the first of equal ones


def _numpy_state(net: nn.Module) -> dict[str, np.ndarray]:
    return {key: t.detach().to("cpu").contiguous().numpy() for key, t in net.state_dict().items()}


def compressed_tensors(net: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(the tensors of the compressed file, the layout of each prunable layer's weight)."""
    weights = {f"{name}.weight" for name, _ in prunable_layers(net)}
    tensors: dict[str, np.ndarray] = {}
    layouts: dict[str, str] = {}
    for key, array in _numpy_state(net).items():
        if key not in weights:
            tensors[key] = array
            continue
        matrix = array.reshape(array.shape[0], -1)
        keep = matrix != 0
        nonzero = int(keep.sum())
        layout = choose_layout(array.shape, nonzero)
        layouts[key.removesuffix(".weight")] = layout
        if layout == "dense":
            tensors[key] = array
        elif layout == "bitmask":
            tensors[f"{key}.mask"] = np.packbits(keep.reshape(-1))
            tensors[f"{key}.values"] = matrix[keep]
        else:
            rows, columns = np.nonzero(keep)  # row-major order, as matrix[keep]
            tensors[f"{key}.indices"] = columns.astype(index_dtype(max(matrix.shape[1] - 1, 0)))
            counts = np.bincount(rows, minlength=matrix.shape[0])
            tensors[f"{key}.indptr"] = np.concatenate([[0], np.cumsum(counts)]).astype(index_dtype(nonzero))
            tensors[f"{key}.values"] = matrix[keep]
    return tensors, layouts


def write_dense(net: nn.Module, path: Path) -> int:
    """Write `net`'s state dict as a safetensors file; returns its size in bytes."""
    from safetensors.numpy import save_file

    save_file(_numpy_state(net), str(path))
    return Path(path).stat().st_size


def write_compressed(net: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """Write the compressed file (module docstring); returns (its size in bytes, the layout per layer). The
    header's metadata holds each compressed weight's shape and layout (under the weight's key), and `metadata`
    (`prunebench export --compressed`: the run's details; no key may end in '.weight')."""
    from safetensors.numpy import save_file

    tensors, layouts = compressed_tensors(net)
    shapes = {f"{name}.weight": list(dict(prunable_layers(net))[name].weight.shape) for name in layouts}
    header = {key: json.dumps({"layout": layouts[key.removesuffix(".weight")], "shape": shape})
              for key, shape in shapes.items()}
    if metadata is not None:
        if any(key.endswith(".weight") for key in metadata):
            raise ValueError("metadata keys ending in '.weight' name compressed weights")
        header = {**metadata, **header}
    save_file(tensors, str(path), metadata=header)
    return Path(path).stat().st_size, layouts


def compressed_layouts(metadata: dict[str, str]) -> dict[str, dict]:
    """weight key -> {"layout", "shape"} of the weights a compressed file's metadata describes ({} for a file
    written dense)."""
    return {key: json.loads(value) for key, value in metadata.items() if key.endswith(".weight")}


def read_compressed(path: Path) -> dict[str, torch.Tensor]:
    """Decode a file `write_compressed` wrote into the dense state dict it came from (exactly); a plain
    safetensors file comes back as it is."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    state = {}
    for key, info in compressed_layouts(metadata).items():
        shape = info["shape"]
        rows, columns = shape[0], math.prod(shape) // shape[0]
        if info["layout"] == "dense":
            matrix = tensors.pop(key).reshape(rows, columns)
        elif info["layout"] == "bitmask":
            keep = np.unpackbits(tensors.pop(f"{key}.mask"), count=rows * columns).astype(bool)
            matrix = np.zeros(rows * columns, dtype=np.float32)
            matrix[keep] = tensors.pop(f"{key}.values")
        else:
            indptr = tensors.pop(f"{key}.indptr").astype(np.int64)
            matrix = np.zeros((rows, columns), dtype=np.float32)
            matrix[np.repeat(np.arange(rows), np.diff(indptr)), tensors.pop(f"{key}.indices")] = tensors.pop(
                f"{key}.values")
        state[key] = torch.from_numpy(np.ascontiguousarray(matrix).reshape(shape))
    state.update({key: torch.from_numpy(array) for key, array in tensors.items()})
    return state


def load_safetensors(path: Path | str) -> nn.Module:
    """The network in a file `prunebench export --format safetensors` wrote, with or without `--compressed`, as a
    plain `nn.Module` in eval mode: the task architecture (named in the file's metadata) with the file's weights,
    compressed layers decoded exactly (`read_compressed`), resized where the file's shapes differ
    (`deploy.rebuild`). ValueError for a file prunebench did not export."""
    from safetensors import safe_open

    from prunebench.registry import get_task

    with safe_open(str(path), framework="pt") as f:
        task = (f.metadata() or {}).get("task")
    if task is None:
        raise ValueError(f"{path} has no 'task' in its metadata: not exported by prunebench")
    return rebuild(get_task(task).architecture, read_compressed(Path(path)))


def safetensors_data_bytes(path: Path) -> tuple[int, int]:
    """(header bytes including the 8-byte length, tensor bytes) of a safetensors file."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return 8 + header, Path(path).stat().st_size - 8 - header


def _csr(matrix: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return matrix.to_sparse_csr()


class CSRLinear(nn.Module):
    """A Linear layer whose weight is a torch sparse CSR matrix: y = (W x^T)^T + b."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = _csr(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = (self.weight @ flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


class CSRConv2d(nn.Module):
    """A Conv2d (groups 1, zero padding) as unfold then a sparse CSR matrix product."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("CSRConv2d takes an ungrouped convolution with numeric zero padding")
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.weight = _csr(conv.weight.detach().reshape(conv.out_channels, -1))
        self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C*kh*kw, L)
        flat = columns.transpose(0, 1).reshape(columns.shape[1], -1)  # (C*kh*kw, N*L)
        y = (self.weight @ flat).reshape(self.out_channels, n, out_h * out_w).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.reshape(n, self.out_channels, out_h, out_w)


def sparse_network(net: nn.Module, layouts: dict[str, str]) -> tuple[nn.Module, dict[str, str]]:
    """A copy of `net` in which each layer stored "bitmask" or "csr" runs as a CSR product; returns it with
    the kernel of each prunable layer ("csr" or "dense")."""
    out = copy.deepcopy(net).eval()
    kernels = {}
    for name, module in prunable_layers(net):
        kernel = "dense"
        if layouts.get(name, "dense") != "dense":
            if isinstance(module, nn.Linear):
                out.set_submodule(name, CSRLinear(module))
                kernel = "csr"
            elif module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str):
                out.set_submodule(name, CSRConv2d(module))
                kernel = "csr"
        kernels[name] = kernel
    return out, kernels


@torch.no_grad()
def median_latency(networks: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
                   rounds: int = LATENCY_ROUNDS, sample_seconds: float = SAMPLE_SECONDS) -> dict[str, float]:
    """Median seconds per forward pass of each network on `x`, one CPU thread, the networks alternating
    (module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calls = {}
        for name, net in networks.items():
            for _ in range(3):
                net(x)
            start = time.perf_counter()
            net(x)
            once = max(time.perf_counter() - start, 1e-7)
            calls[name] = max(1, math.ceil(sample_seconds / once))
        samples: dict[str, list[float]] = {name: [] for name in networks}
        order = list(networks)
        for round_index in range(rounds):
            for name in (order if round_index % 2 == 0 else order[::-1]):
                net, k = networks[name], calls[name]
                start = time.perf_counter()
                for _ in range(k):
                    net(x)
                samples[name].append((time.perf_counter() - start) / k)
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(values) for name, values in samples.items()}


@dataclass(frozen=True)
class DeploymentCost:
    """What compression buys one deployed network (module docstring for how each number is measured)."""

    dense_bytes: int                      #: dense float32 file of the task architecture
    compressed_bytes: int                 #: the compressed file actually written
    layouts: dict[str, str]               #: prunable layer -> "dense" | "bitmask" | "csr"
    kernels: dict[str, str]               #: prunable layer -> "csr" | "dense" in the compressed network
    reshaped: bool                        #: a physically smaller network (structured pruning)
    #: batch size -> (dense, compressed) median seconds per forward pass, one thread
    latency: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        return self.dense_bytes / self.compressed_bytes

    def describe_storage(self) -> str:
        """E.g. 'fc1 csr, fc2 csr, fc3 bitmask'."""
        return ", ".join(f"{name} {layout}" for name, layout in self.layouts.items())


def deployment_cost(net: nn.Module, architecture: Callable[[], nn.Module], inputs: torch.Tensor,
                    directory: Path | None = None, batches: tuple[int, ...] = LATENCY_BATCHES,
                    rounds: int = LATENCY_ROUNDS) -> DeploymentCost:
    """Write the dense and the compressed file of deployed `net` (into `directory`, else a temporary one,
    as dense.safetensors and compressed.safetensors), measure their bytes and, on `inputs` (evaluation
    inputs, at least max(batches) of them; fewer are repeated), the latency of both networks at each batch
    size. The dense side is `net` itself, or the task `architecture` when `net` is physically smaller."""
    net = copy.deepcopy(net).to("cpu").eval()
    smaller = reshaped(net, architecture)
    dense_net = architecture().eval() if smaller else net
    with tempfile.TemporaryDirectory(prefix="prunebench-cost-") as tmp:
        folder = Path(directory) if directory is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        dense_bytes = write_dense(dense_net, folder / "dense.safetensors")
        compressed_bytes, layouts = write_compressed(net, folder / "compressed.safetensors")
    compressed_net, kernels = sparse_network(net, layouts)
    inputs = inputs.to("cpu")
    latency = {}
    for batch in batches:
        repeat = math.ceil(batch / inputs.shape[0])
        x = inputs.repeat(repeat, *([1] * (inputs.dim() - 1)))[:batch].contiguous()
        times = median_latency({"dense": dense_net, "compressed": compressed_net}, x, rounds=rounds)
        latency[batch] = (times["dense"], times["compressed"])
    return DeploymentCost(dense_bytes, compressed_bytes, layouts, kernels, smaller, latency)
