"""The example task `mnist-mlp`: a torchvision dataset and a plain `nn.Module`, wrapped by
`prunebench.tasks.dataset_task`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets import MNIST

from prunebench.data import fetch_mnist
from prunebench.protocol import Protocol
from prunebench.tasks import Task, dataset_task


class MNISTTensors(MNIST):
    """torchvision's MNIST, each item `(image as a [1, 28, 28] float tensor in [0, 1], label)`: what
    `MNIST(..., transform=ToTensor())` returns, without a PIL image per item (10x faster to read in)."""

    @property
    def raw_folder(self) -> str:  # torchvision names the folder after the class: read MNIST's own files
        return str(Path(self.root) / "MNIST" / "raw")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index].unsqueeze(0).float().div(255), int(self.targets[index])


def mnist(data_dir: Path) -> tuple[Dataset, Dataset]:
    """MNIST from prunebench's data directory (fetched and checksum-verified there by prunebench); any
    torchvision-style dataset would do, e.g. `FashionMNIST(root, train=..., transform=ToTensor())`."""
    fetch_mnist(data_dir)
    return MNISTTensors(str(data_dir), train=True), MNISTTensors(str(data_dir), train=False)


def small_mlp() -> nn.Module:
    """784-100-10, ReLU: 79,400 weights."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def mnist_mlp() -> Task:
    return dataset_task(
        "mnist-mlp", "MNIST with a 784-100-10 MLP (example plugin task)",
        datasets=mnist, model=small_mlp, train_size=60_000,
        protocol=Protocol(optimizer="adam", lr=1e-3, iterations=3_000, batch_size=100, eval_every=500,
                          init="default"),
        open_choices={"init": "PyTorch's default Linear init", "input scaling": "pixels / 255, as ToTensor"},
        method_defaults={"magnitude": {"quality": (1.5, 1.0)}},
    )
