"""Caffe `.caffemodel` weights read without Caffe or protobuf: the few fields of `NetParameter` a trained
network's weights need, decoded straight from the protobuf wire format (layer: field 100, name 1, blobs 7; the
legacy V1 `layers`: field 2, name 4, blobs 6; BlobProto: data 5, shape 7 with dims 1, the legacy
num/channels/height/width 1-4). Used to measure the DNS authors' released models in our counting
(`benchmarks/dns_released.py`, issue 31)."""

from __future__ import annotations

import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of one message: ints for varints, bytes for length-delimited fields,
    raw 4/8-byte strings for fixed-width ones."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
        out.append((number, wire, value))
    return out


def _blob(buf: bytes) -> np.ndarray:
    """A BlobProto as a float32 array of its shape (new `shape` or legacy num/channels/height/width)."""
    data: list[np.ndarray] = []
    legacy: dict[int, int] = {}
    shape: list[int] = []
    for number, wire, value in _fields(buf):
        if number == 5 and wire == 2:
            data.append(np.frombuffer(value, dtype="<f4"))
        elif number == 5 and wire == 5:
            data.append(np.array(struct.unpack("<f", value), dtype=np.float32))
        elif number == 7:
            for n, w, v in _fields(value):
                if n == 1 and w == 2:  # packed int64 dims
                    pos = 0
                    while pos < len(v):
                        dim, pos = _varint(v, pos)
                        shape.append(dim)
                elif n == 1 and w == 0:
                    shape.append(v)
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
    flat = np.concatenate(data) if data else np.zeros(0, np.float32)
    if not shape:
        shape = [legacy.get(k, 1) for k in (1, 2, 3, 4)]
    return flat.reshape(shape) if flat.size == int(np.prod(shape)) else flat


def read_caffemodel(path: Path) -> dict[str, list[np.ndarray]]:
    """layer name -> its blobs (float32 arrays), for every layer that has blobs (new-style `layer`, field 100;
    legacy V1 `layers`, field 2: name 4, blobs 6)."""
    layers: dict[str, list[np.ndarray]] = {}
    for number, _, value in _fields(path.read_bytes()):
        if number not in (100, 2):
            continue
        name_field, blob_field = (1, 7) if number == 100 else (4, 6)
        name, blobs = "", []
        for n, w, v in _fields(value):
            if n == name_field and w == 2:
                name = v.decode()
            elif n == blob_field and w == 2:
                blobs.append(_blob(v))
        if blobs:
            layers[name] = blobs
    return layers


def deployed(blobs: dict[str, list[np.ndarray]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (weight, bias) as deployed: weight x weight mask and bias x bias mask where the layer carries
    masks (DNS's four blobs), else as stored."""
    out = {}
    for name, b in blobs.items():
        weight, bias = b[0], b[1].reshape(-1)
        if len(b) >= 4:
            weight, bias = weight * b[2].reshape(weight.shape), bias * b[3].reshape(-1)
        out[name] = (torch.from_numpy(np.ascontiguousarray(weight)), torch.from_numpy(np.ascontiguousarray(bias)))
    return out


def caffe_lenet(task: str, params: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Sequential:
    """The DNS authors' Caffe LeNets (their `models/*/*.prototxt`) as plain torch layers named as in Caffe and
    carrying `params` (layer -> (weight, bias), as `deployed` gives them), in eval mode. "lenet300":
    ip1-ReLU-ip2-ReLU-ip3; "lenet5": conv1-pool-conv2-pool-ip1-ReLU-ip2, with no ReLU after the convolutions
    (unlike our lenet5 task) and max pooling 2x2 stride 2. Inputs: (N, 1, 28, 28), scaled as Caffe's data
    layer did (pixels x 0.00390625)."""
    if task == "lenet300":
        layers = [("flatten", nn.Flatten()), ("ip1", nn.Linear(784, 300)), ("relu1", nn.ReLU()),
                  ("ip2", nn.Linear(300, 100)), ("relu2", nn.ReLU()), ("ip3", nn.Linear(100, 10))]
    elif task == "lenet5":
        layers = [("conv1", nn.Conv2d(1, 20, 5)), ("pool1", nn.MaxPool2d(2, 2)), ("conv2", nn.Conv2d(20, 50, 5)),
                  ("pool2", nn.MaxPool2d(2, 2)), ("flatten", nn.Flatten()), ("ip1", nn.Linear(800, 500)),
                  ("relu1", nn.ReLU()), ("ip2", nn.Linear(500, 10))]
    else:
        raise ValueError(f"no Caffe LeNet for task {task!r}; expected lenet300 or lenet5")
    net = nn.Sequential(OrderedDict(layers))
    with torch.no_grad():
        for name, (weight, bias) in params.items():
            layer = net.get_submodule(name)
            layer.weight.copy_(weight.reshape(layer.weight.shape))
            layer.bias.copy_(bias)
    return net.eval()
