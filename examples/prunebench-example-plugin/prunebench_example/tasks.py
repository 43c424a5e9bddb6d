"""The example task `mnist-mlp`: a torchvision dataset and a plain `nn.Module`, wrapped by
`prunebench.tasks.dataset_task`."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets import MNIST
from torchvision.transforms import ToTensor

from prunebench.data import fetch_mnist
from prunebench.protocol import Protocol
from prunebench.tasks import Task, dataset_task


def mnist(data_dir: Path) -> tuple[Dataset, Dataset]:
    """MNIST as torchvision serves it, from prunebench's data directory (fetched and checksum-verified
    there by prunebench; any torchvision-style dataset would do)."""
    fetch_mnist(data_dir)
    return (MNIST(str(data_dir), train=True, transform=ToTensor()),
            MNIST(str(data_dir), train=False, transform=ToTensor()))


def small_mlp() -> nn.Module:
    """784-100-10, ReLU: 79,400 weights."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def mnist_mlp() -> Task:
    return dataset_task(
        "mnist-mlp", "MNIST with a 784-100-10 MLP (example plugin task)",
        datasets=mnist, model=small_mlp, train_size=60_000,
        protocol=Protocol(optimizer="adam", lr=1e-3, iterations=3_000, batch_size=100, eval_every=500,
                          init="default"),
        open_choices={"init": "PyTorch's default Linear init", "input scaling": "ToTensor: pixels / 255"},
        method_defaults={"magnitude": {"quality": (1.5, 1.0)}},
    )
