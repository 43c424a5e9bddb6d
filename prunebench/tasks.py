"""Tasks: a dataset, an architecture and a `Protocol`, with every choice the papers leave open recorded once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunebench.data import TensorDataset, load_mnist, make_xor
from prunebench.models import LeNet5, LeNet300, XorNet
from prunebench.protocol import Protocol


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    architecture: Callable[[], nn.Module]
    load: Callable[[Path], TensorDataset]
    protocol: Protocol
    loss_kind: str  # "cross_entropy" (class logits) | "bce" (one logit, float targets)
    #: Choices the source paper leaves open, fixed here once for every method.
    open_choices: dict[str, str] = field(default_factory=dict)
    #: Per-method hyperparameter defaults calibrated for this task (override dataclass defaults).
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_size: int = 0

    def build_model(self, seed: int, protocol: Protocol | None = None) -> nn.Module:
        """The plain architecture, initialised by the protocol under `seed`."""
        torch.manual_seed(seed)
        model = self.architecture()
        (protocol or self.protocol).initialise(model)
        return model

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(output, target)
        return F.cross_entropy(output, target)

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Number of correct predictions in a batch, as a 0-d tensor (no host synchronisation)."""
        if self.loss_kind == "bce":
            return ((output > 0).float() == target).sum()
        return (output.argmax(dim=1) == target).sum()


def _mnist(data_dir: Path) -> TensorDataset:
    return load_mnist(data_dir)


def _xor(data_dir: Path) -> TensorDataset:  # noqa: ARG001 - generated, nothing on disk
    return make_xor()


MNIST_CHOICES = {
    "input scaling": "pixels / 255 into [0, 1], no mean subtraction (the paper states none)",
    "weight init": "truncated normal, std 0.01, cut at 2 std (TensorFlow's truncated_normal; the paper "
    "says 'std 0.01')",
    "bias init": "zeros",
    "thresholded parameters": "weights of conv and fc layers; biases are never pruned",
    "batches": "reshuffled every epoch from a seeded generator; test set = the 10,000 MNIST test images",
}

# dynthresh lambda on MNIST is not in the paper; calibrated by the sweep recorded in README.md.
DT_MNIST = {"lam": 5e-4, "tau": 0.03}

# magnitude (Han et al. 2015): q per layer started from the Gaussian quantile Phi^-1(1 - keep/2) of the
# published keep ratios (LeNet-300-100 8/9/26%, LeNet-5 66/12/8/19%). LeNet-300-100: (1.751, 1.695, 1.126)
# kept 10/12/32% in a full run, so q was raised to (1.95, 1.9, 1.3): 8.2/10.7/26.1% kept, 11.7x, at
# --budget paper, seed 0 (README, "Baselines"). LeNet-5: on the dense seed-0 network, pruning without
# retraining at the quantile estimate (0.44, 1.555, 1.751, 1.311) keeps 58/12/9.4/17%; on LeNet-300-100 a full
# run keeps 1.26-1.47x more per layer than that estimate (retraining widens the survivors), so q was set to
# keep (66/1.1, 12/1.4, 8/1.3, 19/1.47)% without retraining: (0.44, 1.76, 2.07, 1.55) -> 58/8.7/6.2/12.8%.
MAGNITUDE_LENET300 = {"rounds": 5, "quality": (1.95, 1.9, 1.3)}
MAGNITUDE_LENET5 = {"rounds": 5, "quality": (0.44, 1.76, 2.07, 1.55)}
# dns (Guo et al. 2016): LeNet-5 iter_stop from the maintainer's suggestion (issue #2); gamma/power from the
# README example. LeNet-5 c_rate: the maintainer's (1, 3, 4, 2.5) kept 34/5.8/2.6/16% under our Adam
# protocol (33.7x at +0.14 pp, --budget paper, seed 0) against the published 14.2/3.1/0.7/4.3%, and under
# Caffe's SGD (--optimizer sgd --lr 0.01 --optimizer-weight-decay 5e-4) 14/4.2/2.8/7.3% (34.2x at -0.03 pp):
# the keep ratios come from the c_rate, not the optimizer. (2.5, 4.5, 7, 4.5) overshot (281x at +0.55 pp);
# (2.3, 3.7, 5.5, 4.3), set per layer towards the published keep ratios, gave 109.7x at +0.35 pp and is the
# default (the published 108x; its accuracy loss misses the published 0.00 pp).
# LeNet-300-100 has no published values: c_rate interpolated from
# the LeNet-5 fc layers, then searched towards the published 1.8/1.8/5.5% kept at --budget paper, seed 0:
# (3.5, 3.5, 2.3) -> 5.0/6.4/24.5% (equal budget), (5, 5, 4) -> 2.1/1.9/11.0% (47x), (5, 5, 5.5) ->
# 2.0/1.6/9.6% (50x, but 0.7 pp loss); iter_stop as the LeNet-5 fc layers.
DNS_LENET300 = {"gamma": 1e-4, "power": 1.0, "c_rate": (5.0, 5.0, 4.0), "iter_stop": (10_000, 10_000, 10_000)}
DNS_LENET5 = {"gamma": 1e-4, "power": 1.0, "c_rate": (2.3, 3.7, 5.5, 4.3),
              "iter_stop": (14_000, 14_000, 10_000, 10_000)}
# sparse-vd: the authors' scripts hold lr 1e-3 for 100 epochs then decay to 0 (LeNet-300-100) or decay
# from epoch 0 (LeNet-5); only used under budget "paper".
SPARSE_VD_LENET300 = {"lr_decay_start": 100}
# dst: the authors' alpha 5e-4 (SGD lr 0.01) prunes little under our Adam protocol. LeNet-300-100, seed 0,
# 10k steps (README): alpha 5e-4 13.1x at +0.29 pp, 1e-3 21.1x at +0.29, 1.5e-3 25.4x at +0.88, 2e-3 29.1x at
# +0.84; 1e-3 is the most compression within the published loss (+0.47 pp). LeNet-5: the same alpha, as
# the authors use one alpha for both LeNets (not swept).
DST_MNIST = {"alpha": 1e-3}
# ltp (reconstruction): LeNet-300-100, seed 0, equal budget: lam 1 22.9x at -0.12 pp, 3 27.0x at -0.07,
# 10 30.9x at +0.01; no published LeNet figure, so the strongest lam tried (no loss yet) is the default.
LTP_MNIST = {"lam": 10.0}

TASKS: dict[str, Task] = {
    "xor": Task(
        name="xor",
        description="XOR, 2-5-1 sigmoid network, 20,000 noisy samples, half for test (DT paper sec. 4.1)",
        architecture=XorNet,
        load=_xor,
        protocol=Protocol(optimizer="adam", lr=1e-2, iterations=10_000, batch_size=100,
                          init="normal", init_std=1.0, eval_every=250),
        loss_kind="bce",
        open_choices={
            "noise": "inputs {0,1}^2 plus Gaussian noise, std 0.1; label = XOR of the clean bits",
            "lr and init": "Adam lr 1e-2, weights N(0, 1) (std 0.01 leaves a sigmoid net near its symmetric "
            "saddle); the paper gives neither",
            "loss": "binary cross-entropy on the sigmoid output",
        },
        # dst / l0 on xor: chosen so that part of the 15 weights is pruned at 100% accuracy (seeds 0-1)
        method_defaults={"dynthresh": {"lam": 1e-2, "tau": 0.5, "t_max": 20.0}, "dst": {"alpha": 1e-2},
                         "l0": {"lam": (1.0, 30.0)}},
        train_size=10_000,
    ),
    "lenet300": Task(
        name="lenet300",
        description="LeNet-300-100 on MNIST (784-300-100-10, 266,200 weights)",
        architecture=LeNet300,
        load=_mnist,
        protocol=Protocol(),
        loss_kind="cross_entropy",
        open_choices=MNIST_CHOICES,
        method_defaults={"dynthresh": dict(DT_MNIST), "magnitude": dict(MAGNITUDE_LENET300),
                         "dns": dict(DNS_LENET300), "sparse-vd": dict(SPARSE_VD_LENET300),
                         "dst": dict(DST_MNIST), "ltp": dict(LTP_MNIST)},
        train_size=60_000,
    ),
    "lenet5": Task(
        name="lenet5",
        description="LeNet-5-Caffe on MNIST (conv20-pool-conv50-pool-fc500-fc10, 430,500 weights)",
        architecture=LeNet5,
        load=_mnist,
        protocol=Protocol(),
        loss_kind="cross_entropy",
        open_choices={**MNIST_CHOICES, "conv activation": "ReLU after each conv (as sparse VD, DST and L0 "
                      "code; the Caffe prototxt of Han and DNS has none)"},
        method_defaults={"dynthresh": dict(DT_MNIST), "magnitude": dict(MAGNITUDE_LENET5),
                         "dns": dict(DNS_LENET5), "dst": dict(DST_MNIST), "ltp": dict(LTP_MNIST)},
        train_size=60_000,
    ),
}


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
    return TASKS[name]
