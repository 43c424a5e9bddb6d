"""Tasks: a dataset, an architecture and a `Protocol`, with every choice the papers leave open recorded once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from prunebench.data import TensorDataset, hold_out, load_mnist, make_xor
from prunebench.models import LeNet5, LeNet300, XorNet
from prunebench.protocol import Protocol
from prunebench.sources import (
    RESIDENT_EVAL_BATCH,
    WHOLE,
    DataSource,
    ImageAugment,
    ResidentSource,
    Shard,
    StreamedSource,
)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    architecture: Callable[[], nn.Module]
    #: Resident tasks: `load(data_dir, allow_unverified)` -> the tensors (MNIST, XOR, CIFAR-10 as uint8).
    load: Callable[..., TensorDataset]
    protocol: Protocol
    loss_kind: str  # "cross_entropy" (class logits) | "bce" (one logit, float targets)
    #: Choices the source paper leaves open, fixed here once for every method.
    open_choices: dict[str, str] = field(default_factory=dict)
    #: Per-method hyperparameter defaults calibrated for this task (override dataclass defaults).
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Examples in the task's real training set (epochs, the N of sparse VD's KL and L0's lambda / N).
    train_size: int = 0
    #: Per-batch augmentation and normalisation of resident uint8 images, done on the device.
    augment: Callable[[], ImageAugment] | None = None
    #: Streamed tasks: `streamed(data_dir, allow_unverified)` -> (train, evaluation) datasets of tensors.
    streamed: Callable[..., tuple[Dataset, Dataset]] | None = None
    #: `data_verified(data_dir)`: True when the files on disk match their published checksums/counts.
    #: None: the data is generated or always verified before loading (MNIST).
    data_verified: Callable[[Path], bool] | None = None
    #: Report top-5 accuracy beside top-1 (tasks with 1,000 classes).
    top5: bool = False
    #: Samples per evaluation batch.
    eval_batch_size: int = RESIDENT_EVAL_BATCH
    #: The paper's network needs more than a CPU for its protocol (informational: `prunebench list`).
    needs_gpu: bool = False

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

    def make_source(self, data_dir: Path, batch_size: int, seed: int, device: torch.device, *,
                    allow_unverified: bool = False, dataset: TensorDataset | None = None,
                    workers: int = 0, shard: Shard = WHOLE, validation: int = 0) -> DataSource:
        """The run's data source: resident tensors on `device` (`dataset` when given), or a stream;
        `shard`: this process's slice of every global batch under DDP; `validation`: images held out of the
        training set for validation (`prunebench.data.hold_out`; resident data only)."""
        if self.streamed is not None and dataset is None:
            self.check_validation(validation)
            train, test = self.streamed(Path(data_dir), allow_unverified)
            return StreamedSource(train, test, batch_size, seed, device, workers=workers,
                                  eval_batch_size=self.eval_batch_size, shard=shard)
        data = dataset if dataset is not None else self.load(Path(data_dir), allow_unverified)
        held = None
        if validation:
            data, held = hold_out(data, validation)
        augment = self.augment() if self.augment is not None else None
        return ResidentSource(data, batch_size, seed, device, augment=augment, eval_batch_size=self.eval_batch_size,
                              shard=shard, validation=held)

    def check_validation(self, validation: int) -> None:
        """ValueError (one line) unless this task can hold `validation` images out of its training set: resident
        tasks can (fewer than their training set), streamed ones (ImageNet) cannot yet."""
        if not validation:
            return
        if self.streamed is not None:
            raise ValueError(f"{self.name} streams its data and has no validation split yet; --validation applies "
                             "to resident tasks (MNIST, XOR, CIFAR-10)")
        if self.train_size and validation >= self.train_size:
            raise ValueError(f"validation must hold out fewer than {self.name}'s {self.train_size:,} training "
                             f"examples, got {validation:,}")

    def resident_data(self, data_dir: Path, allow_unverified: bool = False) -> TensorDataset | None:
        """The task's tensors, loaded once to share between runs (`make_source(dataset=...)`); None for a
        streamed task, whose source reads its files itself."""
        return None if self.streamed is not None else self.load(Path(data_dir), allow_unverified)

    def verified(self, data_dir: Path) -> bool:
        """Whether the task's files under `data_dir` match their published checksums (or counts)."""
        return True if self.data_verified is None else self.data_verified(Path(data_dir))


def dataset_task(name: str, description: str, *, datasets: Callable[[Path], tuple[Dataset, Dataset]],
                 model: Callable[[], nn.Module], protocol: Protocol, train_size: int, resident: bool = True,
                 loss_kind: str = "cross_entropy", open_choices: dict[str, str] | None = None,
                 method_defaults: dict[str, dict[str, Any]] | None = None,
                 eval_batch_size: int = RESIDENT_EVAL_BATCH) -> Task:
    """A task from any torchvision-style dataset pair and any `nn.Module` factory (plugins, own models).

    `datasets(data_dir)` returns (train, test) datasets whose items are `(input tensor, label)`, e.g.
    `torchvision.datasets.FashionMNIST(root, train=..., transform=ToTensor())`. `resident`: read both
    once into tensors held on the device (small datasets; batches then cost no loader); otherwise they
    are streamed by DataLoader workers (`prunebench.sources.StreamedSource`). `train_size`: the number
    of training examples (it converts epochs to steps and is the N of L0 and sparse VD's objectives)."""

    def load(data_dir: Path, allow_unverified: bool = False) -> TensorDataset:  # noqa: ARG001
        train, test = datasets(Path(data_dir))
        return TensorDataset(*_as_tensors(train), *_as_tensors(test))

    def streamed(data_dir: Path, allow_unverified: bool = False) -> tuple[Dataset, Dataset]:  # noqa: ARG001
        return datasets(Path(data_dir))

    if loss_kind not in ("cross_entropy", "bce"):
        raise ValueError(f"loss_kind must be 'cross_entropy' or 'bce', got {loss_kind!r}")
    if train_size < 1:
        raise ValueError(f"train_size must be >= 1, got {train_size}")
    return Task(name=name, description=description, architecture=model, load=load, protocol=protocol,
                loss_kind=loss_kind, open_choices=dict(open_choices or {}),
                method_defaults=dict(method_defaults or {}), train_size=train_size,
                streamed=None if resident else streamed, eval_batch_size=eval_batch_size)


def _as_tensors(dataset: Dataset, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (input, label) item of a dataset, stacked: inputs as float32, labels as int64."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys = zip(*((x.float(), torch.as_tensor(y).long()) for x, y in loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _mnist(data_dir: Path, allow_unverified: bool = False) -> TensorDataset:  # noqa: ARG001 - always verified
    return load_mnist(data_dir)


def _xor(data_dir: Path, allow_unverified: bool = False) -> TensorDataset:  # noqa: ARG001 - generated
    return make_xor()


MNIST_CHOICES = {
    "input scaling": "pixels / 255 into [0, 1], no mean subtraction (the paper states none)",
    "weight init": "truncated normal, std 0.01, cut at 2 std (TensorFlow's truncated_normal; the paper "
    "says 'std 0.01')",
    "bias init": "zeros",
    "thresholded parameters": "weights of conv and fc layers; biases are never pruned",
    "batches": "reshuffled every epoch from a seeded generator; test set = the 10,000 MNIST test images",
}

# Calibrated defaults: how each value was chosen, with its runs and commands, is in docs/calibration.md.
DT_MNIST = {"lam": 5e-4, "tau": 0.03}
DT_LENET5 = {"lam": 2e-4, "tau": 0.03}
MAGNITUDE_LENET300 = {"rounds": 5, "quality": (1.95, 1.9, 1.3)}
MAGNITUDE_LENET5 = {"rounds": 5, "quality": (0.44, 1.76, 2.07, 1.55)}
DNS_LENET300 = {"gamma": 1e-4, "power": 1.0, "c_rate": (5.0, 5.0, 5.5), "iter_stop": (10_000, 10_000, 10_000)}
DNS_LENET5 = {"gamma": 1e-4, "power": 1.0, "c_rate": (2.3, 3.7, 5.5, 4.3),
              "iter_stop": (14_000, 14_000, 10_000, 10_000)}
SPARSE_VD_LENET300 = {"lr_decay_start": 100}
DST_MNIST = {"alpha": 2e-3}   # LeNet-300-100's, carried to LeNet-5 (the authors use one alpha for both)
LTP_MNIST = {"lam": 100.0}    # LeNet-300-100's, carried to LeNet-5
# GMP and RigL: final sparsity 0.98 (50x), the one MNIST setting of the RigL authors' code (both methods); the
# schedule chosen on LeNet-300-100's validation split and carried to LeNet-5 (docs/validation.md)
GMP_MNIST = {"sparsity": 0.98, "end": 0.75}
RIGL_MNIST = {"sparsity": 0.98, "drop_fraction": 0.5}
SENSITIVITY_IMAGENET = {"sensitivity": "loss"}
SENSITIVITY_LENET300 = {"lam": 0.3, "threshold": 1.5}
SRINIVAS_LENET300 = {"lambda2": 5.0}
SENSITIVITY_LENET5 = {"lam": 0.3, "threshold": 1.5, "refresh_every": 10}
SRINIVAS_LENET5 = {"lambda2": 2.0}

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
        # chosen so that part of the 15 weights is pruned at 100% validation accuracy: docs/calibration.md
        method_defaults={"dynthresh": {"lam": 3e-3, "tau": 0.5, "t_max": 20.0}, "dst": {"alpha": 3e-3},
                         "l0": {"lam": (1.0, 30.0)}, "sensitivity": {"lam": 0.5}, "gmp": {"sparsity": 0.4},
                         "rigl": {"sparsity": 0.4}},
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
                         "dst": dict(DST_MNIST), "ltp": dict(LTP_MNIST),
                         "sensitivity": dict(SENSITIVITY_LENET300), "srinivas": dict(SRINIVAS_LENET300),
                         "gmp": dict(GMP_MNIST), "rigl": dict(RIGL_MNIST)},
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
        method_defaults={"dynthresh": dict(DT_LENET5), "magnitude": dict(MAGNITUDE_LENET5),
                         "dns": dict(DNS_LENET5), "dst": dict(DST_MNIST), "ltp": dict(LTP_MNIST),
                         "sensitivity": dict(SENSITIVITY_LENET5), "srinivas": dict(SRINIVAS_LENET5),
                         "gmp": dict(GMP_MNIST), "rigl": dict(RIGL_MNIST)},
        train_size=60_000,
    ),
}


# -- CIFAR-10 and ImageNet (DT paper Table 2's other columns; METHODS.md sec. 10) -------------------------

CIFAR10_TRAIN, CIFAR10_BATCH = 50_000, 128
IMAGENET_TRAIN, IMAGENET_BATCH = 1_281_167, 128  # ILSVRC-2012 training images


def _vgg_like() -> nn.Module:
    from prunebench.models import VGGLike

    return VGGLike()


def _resnet56() -> nn.Module:
    from prunebench.models import ResNet56

    return ResNet56()


def _alexnet_caffe() -> nn.Module:
    from prunebench.models import AlexNetCaffe

    return AlexNetCaffe()


def _cifar10(data_dir: Path, allow_unverified: bool = False) -> TensorDataset:
    from prunebench.cifar10 import load_cifar10

    return load_cifar10(data_dir, allow_unverified=allow_unverified)


def _cifar10_verified(data_dir: Path) -> bool:
    from prunebench.cifar10 import cifar10_status

    return all(state == "ok" for state in cifar10_status(data_dir).values())


def _cifar10_augment() -> ImageAugment:
    from prunebench.cifar10 import CIFAR10_MEAN, CIFAR10_STD

    return ImageAugment(mean=CIFAR10_MEAN, std=CIFAR10_STD, pad=4, flip=True)


def _no_resident_data(data_dir: Path, allow_unverified: bool = False) -> TensorDataset:  # noqa: ARG001
    raise ValueError("this task streams its data; it has no resident tensors")


def _imagenet(data_dir: Path, allow_unverified: bool = False) -> tuple[Dataset, Dataset]:
    from prunebench.imagenet import imagenet_datasets

    return imagenet_datasets(data_dir, allow_unverified=allow_unverified)


def _imagenet_verified(data_dir: Path) -> bool:
    from prunebench.imagenet import imagenet_status, imagenet_verified

    return imagenet_verified(imagenet_status(data_dir))


CIFAR10_CHOICES = {
    "data": "torchvision's CIFAR10 python version (<data-dir>/cifar-10-batches-py), files checked against "
    "the published MD5s; the 10,000 test images are the evaluation set",
    "preprocessing": "per-channel mean/std normalisation (training-set statistics), done on the device per "
    "batch; the cifar.torch net the DT paper cites used YUV with local contrast normalisation instead",
    "augmentation": "random 32x32 crop of the image zero-padded by 4 pixels, and a horizontal flip with "
    "probability 1/2 (DST's code, the common modern choice; cifar.torch used flips only)",
    "batches": "reshuffled every epoch from the run's seeded generator, last partial batch dropped (390 "
    "steps per epoch at batch 128); crops and flips drawn from the same generator",
    "weight decay": "the optimizer's weight decay applies to every trainable parameter, the methods' own "
    "(thresholds, gates, log sigma^2) included (the paper is silent)",
}

VGG_CHOICES = {
    **CIFAR10_CHOICES,
    "optimizer": "momentum SGD (0.9, no dampening) at lr 0.1: the DT paper's text says 'Adam' at lr 0.1, very "
    "likely a slip (Adam at 0.1 diverges on this net); --optimizer adam selects the literal reading",
    "init": "cifar.torch's: conv weights N(0, sqrt(2 / (9 * out_channels))), biases 0; fc layers PyTorch's default",
    "network": "cifar.torch vgg_bn_drop: BatchNorm eps 1e-3 after every conv and after fc1, dropout as listed "
    "in METHODS.md sec. 10; 14,977,728 prunable weights",
}

RESNET56_CHOICES = {
    **CIFAR10_CHOICES,
    "network": "He et al. 2016 sec. 4.2: 3 stages of 9 basic blocks (16/32/64 channels), option-A shortcuts "
    "(identity, stride-2 subsampling and zero-padded channels, no parameters), convs without bias",
    "protocol": "He et al.'s: momentum SGD 0.9, lr 0.1, weight decay 1e-4, batch 128, lr / 10 at 32k and 48k "
    "of 64k iterations, here in epochs: 164 epochs, lr / 10 at epochs 82 and 123",
    "init": "Kaiming normal (fan out) for convs, BatchNorm weight 1 and bias 0, fc PyTorch's default",
}

IMAGENET_CHOICES = {
    "data": "ILSVRC-2012 in the ImageFolder layout (<data-dir>/imagenet/train/<wnid>/*.JPEG, "
    "<data-dir>/imagenet/val/<wnid>/*.JPEG), streamed through a DataLoader; 'verified' = 1,000 classes and "
    "the published 1,281,167 / 50,000 image counts (extracted JPEGs have no published checksums)",
    "preprocessing": "resize to 256x256 (Caffe warps), per-channel mean/std normalisation instead of Caffe's "
    "mean image",
    "augmentation": "training: random 227x227 crop and horizontal flip; evaluation: the centre 227x227 crop",
    "batches": "each epoch's order drawn from the run's seed and the epoch; each image's crop and flip from "
    "(seed, epoch, index), so batches do not depend on the number of loader workers",
    "network": "BVLC Caffe AlexNet: LRN after conv1 and conv2, 2 groups in conv2/4/5; 60,954,656 prunable "
    "weights (torchvision's alexnet is a different network)",
    "init": "Caffe's bvlc_alexnet fillers (see prunebench.models.AlexNetCaffe)",
    "weight decay": "applies to every trainable parameter, the methods' own included (the paper is silent)",
}

# From the papers or uncalibrated starting points: docs/calibration.md says which, and how they were made.
DT_VGG = {"lam": 1.8e-4, "tau": 0.03}
DT_ALEXNET = {"lam": 2e-5, "tau": 0.03}
MAGNITUDE_VGG = {"rounds": 5, "quality": (0.553, 0.961, 2.054, 1.2), "layer_rule": "first-conv-fc-last"}
DNS_VGG = {"gamma": 1e-4, "power": 1.0, "c_rate": (-0.3, 0.27, 1.91, 1.99), "iter_stop": (10_000, 10_000, 8_000, 8_000),
           "layer_rule": "first-conv-fc-last"}
MAGNITUDE_ALEXNET = {"rounds": 5, "quality": (0.202, 0.878, 0.935, 0.896, 0.896, 1.695, 1.695, 1.15)}
DNS_ALEXNET = {"gamma": 1e-4, "power": 1.0, "c_rate": (-0.3, 0.05, 0.43, 0.32, 0.31, 2.14, 1.73, 1.99),
               "iter_stop": (10_000, 10_000, 10_000, 10_000, 10_000, 8_000, 8_000, 8_000)}
MAGNITUDE_RESNET56 = {"rounds": 5, "quality": (0.202, 0.896, 1.15, 1.15), "layer_rule": "first-conv-fc-last"}


def _cifar10_task(name: str, description: str, architecture: Callable[[], nn.Module], *, weight_decay: float,
                  epochs: int, lr_milestones: tuple[int, ...], open_choices: dict[str, str],
                  method_defaults: dict[str, dict[str, Any]]) -> Task:
    """A CIFAR-10 task: resident images augmented on the device, momentum SGD (0.9) at lr 0.1, batch 128,
    `epochs` with lr / 10 at `lr_milestones`, an evaluation every epoch; the paper's network wants a GPU."""
    per_epoch = CIFAR10_TRAIN // CIFAR10_BATCH
    protocol = Protocol(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=weight_decay, batch_size=CIFAR10_BATCH,
                        epochs=epochs, steps_per_epoch=per_epoch, iterations=epochs * per_epoch,
                        lr_milestones=lr_milestones, init="default", eval_every=per_epoch)
    return Task(name=name, description=description, architecture=architecture, load=_cifar10, protocol=protocol,
                loss_kind="cross_entropy", open_choices=open_choices, method_defaults=method_defaults,
                train_size=CIFAR10_TRAIN, augment=_cifar10_augment, data_verified=_cifar10_verified,
                eval_batch_size=1000, needs_gpu=True)


LARGE_TASKS: dict[str, Task] = {
    "vgg-cifar10": _cifar10_task(
        "vgg-cifar10", "VGG-like (cifar.torch) on CIFAR-10, 13 conv + 2 fc with BatchNorm, 14,977,728 weights "
        "(DT paper Table 2)", _vgg_like, weight_decay=5e-4, epochs=100, lr_milestones=(25, 50, 75),
        open_choices=VGG_CHOICES,
        method_defaults={"dynthresh": dict(DT_VGG), "magnitude": dict(MAGNITUDE_VGG), "dns": dict(DNS_VGG)}),
    "resnet56-cifar10": _cifar10_task(
        "resnet56-cifar10", "ResNet-56 (He et al. 2016) on CIFAR-10, 55 conv + 1 fc, 848,944 weights", _resnet56,
        weight_decay=1e-4, epochs=164, lr_milestones=(82, 123), open_choices=RESNET56_CHOICES,
        method_defaults={"dynthresh": dict(DT_VGG), "magnitude": dict(MAGNITUDE_RESNET56), "dns": dict(DNS_VGG)}),
    "alexnet-imagenet": Task(
        name="alexnet-imagenet",
        description="AlexNet (BVLC Caffe: LRN, grouped convs) on ImageNet, 60,954,656 weights (DT paper Table 2)",
        architecture=_alexnet_caffe,
        load=_no_resident_data,
        protocol=Protocol(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=IMAGENET_BATCH,
                          epochs=150, steps_per_epoch=IMAGENET_TRAIN // IMAGENET_BATCH,
                          iterations=150 * (IMAGENET_TRAIN // IMAGENET_BATCH), lr_milestones=(70, 115, 140),
                          init="default", eval_every=IMAGENET_TRAIN // IMAGENET_BATCH),
        loss_kind="cross_entropy",
        open_choices=IMAGENET_CHOICES,
        method_defaults={"dynthresh": dict(DT_ALEXNET), "magnitude": dict(MAGNITUDE_ALEXNET),
                         "dns": dict(DNS_ALEXNET), "sensitivity": dict(SENSITIVITY_IMAGENET)},
        train_size=IMAGENET_TRAIN,
        streamed=_imagenet,
        data_verified=_imagenet_verified,
        top5=True,
        eval_batch_size=250,
        needs_gpu=True,
    ),
}
TASKS.update(LARGE_TASKS)
