"""The DNS authors' released models in our counting (issue 31): the `.caffemodel` reader on hand-encoded
protobuf, and the two sparse models (their deployed non-zeros, extracted by `benchmarks/dns_released.py
--fixture` into tests/fixtures) measured by the harness's own counting and on the real MNIST test set, equal to
the figures the DT-paper report cites as the released reference."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from prunebench.caffemodel import caffe_lenet, deployed, read_caffemodel
from prunebench.data import load_mnist
from prunebench.metrics import evaluate_accuracy, measure_compression
from prunebench.registry import get_task
from prunebench.report.published import released

FIXTURE = Path(__file__).parent / "fixtures" / "dns_released_sparse.npz"
CAFFE_SCALE = 0.00390625


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number: int, payload: bytes) -> bytes:  # length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(shape: list[int], data: list[float], packed: bool = True, legacy: bool = False) -> bytes:
    if legacy:
        head = b"".join(_varint(n << 3) + _varint(d) for n, d in zip((1, 2, 3, 4), shape, strict=True))
    else:
        head = _field(7, _field(1, b"".join(_varint(d) for d in shape)))
    if packed:
        body = _field(5, struct.pack(f"<{len(data)}f", *data))
    else:
        body = b"".join(_varint(5 << 3 | 5) + struct.pack("<f", v) for v in data)
    return head + body


def test_the_reader_decodes_layers_blobs_shapes_and_masks(tmp_path):
    weight, bias = [0.5, -1.0, 2.0, 0.25, 3.0, -0.75], [0.1, -0.2]
    layer = (_field(1, b"ip1") + _field(2, b"InnerProduct") + _field(7, _blob([2, 3], weight))
             + _field(7, _blob([2], bias)) + _field(7, _blob([2, 3], [1, 0, 1, 0, 1, 1]))
             + _field(7, _blob([2], [0, 1])))
    legacy = _field(4, b"conv1") + _field(6, _blob([1, 1, 1, 2], [7.0, 8.0], packed=False, legacy=True)) \
        + _field(6, _blob([1, 1, 1, 1], [0.5], legacy=True))
    relu = _field(1, b"relu1") + _field(2, b"ReLU")  # no blobs: not listed
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(_field(1, b"net") + _field(100, layer) + _field(100, relu) + _field(2, legacy))
    blobs = read_caffemodel(path)
    assert list(blobs) == ["ip1", "conv1"]
    assert blobs["ip1"][0].shape == (2, 3) and blobs["ip1"][0].tolist() == [[0.5, -1.0, 2.0], [0.25, 3.0, -0.75]]
    assert blobs["conv1"][0].shape == (1, 1, 1, 2) and blobs["conv1"][0].ravel().tolist() == [7.0, 8.0]
    params = deployed(blobs)
    assert params["ip1"][0].tolist() == [[0.5, 0.0, 2.0], [0.0, 3.0, -0.75]]  # weight x mask
    assert params["ip1"][1].tolist() == pytest.approx([0.0, -0.2])  # bias x bias mask
    assert params["conv1"][1].tolist() == [0.5]  # two blobs: no masks


def _fixture_params(task: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    data = np.load(FIXTURE)
    params = {}
    for key in data.files:
        name, layer, part = key.split("/")
        if name != task or part != "shape":
            continue
        shape = tuple(int(d) for d in data[key])
        flat = torch.zeros(int(np.prod(shape)))
        flat[torch.from_numpy(data[f"{name}/{layer}/index"].astype(np.int64))] = \
            torch.from_numpy(data[f"{name}/{layer}/value"])
        params[layer] = (flat.view(shape), torch.from_numpy(data[f"{name}/{layer}/bias"]))
    return params


@pytest.mark.parametrize(("task", "per_layer", "accuracy"), [
    ("lenet300", {"ip1": 4351, "ip2": 552, "ip3": 49}, 0.9801),
    ("lenet5", {"conv1": 72, "conv2": 770, "ip1": 2920, "ip2": 215}, 0.9909),
])
def test_the_released_sparse_models_measure_as_the_report_cites(task, per_layer, accuracy, mnist_dir):
    net = caffe_lenet(task, _fixture_params(task))
    counts = measure_compression(net)
    assert {name: kept for name, (kept, _) in counts.per_layer.items()} == per_layer
    assert counts.weights_total == {"lenet300": 266_200, "lenet5": 430_500}[task]
    mnist = load_mnist(mnist_dir)
    measured = evaluate_accuracy(net, mnist.x_test * (255 * CAFFE_SCALE), mnist.y_test, get_task(task).correct)
    assert measured == pytest.approx(accuracy, abs=2e-4)  # a test image or two may move with the CPU's kernels
    cited = released("dns", task)
    assert cited is not None and cited.compression == pytest.approx(counts.compression, abs=0.005)
    assert cited.accuracy == pytest.approx(100 * accuracy, abs=0.02)
