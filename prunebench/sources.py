"""Where a run's batches come from: resident on the device, or streamed from disk (DESIGN.md, the data seam).

The training loop asks a `DataSource` for the next training batch and for the evaluation batches; it
does not care which kind it has.

- `ResidentSource`: the whole dataset lives on the device as tensors (MNIST as floats, CIFAR-10 as uint8,
  about 150 MB). Batches are drawn by index from one seeded generator (`BatchOrder`), and the augmentation
  (random crop with zero padding, horizontal flip) and the per-channel normalisation run on the device,
  per batch, drawing from that same generator. No DataLoader workers on the hot path.
- `StreamedSource`: a torchvision-style dataset (ImageNet's `ImageFolder`) through a `DataLoader` with
  workers, pinned memory and non-blocking copies. The epoch's order comes from the run's seed and the
  epoch number, and each sample's augmentation from (seed, epoch, index) alone, so the batches do not
  depend on the number of workers, and a run continued from a checkpoint starts at the right batch of
  its epoch with exactly the images and crops it would have seen.

Both keep their position in `state_dict()`, which goes into the run's checkpoint.

A resident source may also hold a validation split (`Protocol.validation`: images held out of the training set
by `prunebench.data.hold_out`, the same for every seed): it trains on the rest only and evaluates the held-out
images through `validation_batches()`. A streamed source has none (`Task.make_source` refuses one).

Under DDP (`prunebench.distributed`) both take a `Shard` (rank, world size): each rank gets its contiguous
slice of the global batch that one process would train on, and random augmentation is drawn for the
whole global batch, so every rank's generator stays in step and the slices together are the
one-process batch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prunebench.data import TensorDataset
from prunebench.errors import UnreadableDataError

#: Samples per evaluation batch of a resident dataset: 500, measured fastest of 250-10,000 for LeNet-5 and
#: LeNet-300-100 on CPU (LeNet-5's 10,000 test images in 1.59 s against 2.57 s at the 2,000 used before;
#: `benchmarks/eval_batch.py`, the eval-batch section of leaderboards/method-cost.md).
RESIDENT_EVAL_BATCH = 500


@dataclass(frozen=True)
class Shard:
    """This process's part of every global batch: slice `rank` of `world` equal slices."""

    rank: int = 0
    world: int = 1

    def take(self, batch: torch.Tensor) -> torch.Tensor:
        """Rows [rank * b, (rank + 1) * b) of a global batch of world * b rows."""
        if self.world == 1:
            return batch
        size = batch.shape[0] // self.world
        return batch[self.rank * size:(self.rank + 1) * size]


WHOLE = Shard()


class BatchOrder:
    """Endless index batches, reshuffled each epoch (the last partial batch of an epoch is dropped).

    Its state (the generator, the epoch's permutation and the position in it) goes into checkpoints."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        if n < batch_size:
            raise ValueError(f"the training set has {n} examples, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device
        self.perm: torch.Tensor | None = None
        self.position = 0

    def __next__(self) -> torch.Tensor:
        if self.perm is None or self.position + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator, device=self.device)
            self.position = 0
        batch = self.perm[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(),
                "perm": None if self.perm is None else self.perm.cpu(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.position = state["position"]


@dataclass(frozen=True)
class ImageAugment:
    """Per-batch image preprocessing on the device, for uint8 NCHW batches.

    Training: random crop of the original size from the image zero-padded by `pad` pixels (black, as
    torchvision's RandomCrop(padding=pad) pads), then a horizontal flip with probability 1/2. Both:
    scale to [0, 1] and normalise per channel with `mean` and `std`."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 4
    flip: bool = True

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255.0) - mean) / std

    def train(self, x: torch.Tensor, generator: torch.Generator, shard: Shard = WHOLE) -> torch.Tensor:
        """`x` is this shard's slice of the global batch; the random draws are made for the whole global
        batch (world * b) and sliced, so they match a one-process run's."""
        b, _, h, w = x.shape
        n = b * shard.world
        if self.pad:
            padded = torch.nn.functional.pad(x, (self.pad,) * 4)
            dy = shard.take(torch.randint(0, 2 * self.pad + 1, (n,), generator=generator, device=x.device))
            dx = shard.take(torch.randint(0, 2 * self.pad + 1, (n,), generator=generator, device=x.device))
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (b, 1, h, 1)
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (b, 1, 1, w)
            batch = torch.arange(b, device=x.device)[:, None, None, None]
            channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, channel, rows, cols]
        if self.flip:
            flip = shard.take(torch.rand(n, generator=generator, device=x.device)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return self.normalise(x)


class DataSource:
    """What the training loop needs from a dataset. `train_size`: examples in the training set as
    loaded; `example`: one evaluation input (no batch dimension) on the device, for counting FLOPs."""

    train_size: int
    example: torch.Tensor
    validation_size: int = 0  #: images held out of the training set for validation (0: no validation split)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch (inputs, targets), augmented, on the device."""
        raise NotImplementedError

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole evaluation set in batches, preprocessed for evaluation, on the device."""
        raise NotImplementedError

    def validation_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out validation images in batches, preprocessed for evaluation, on the device."""
        raise ValueError("this data source has no validation split")

    @property
    def resident(self) -> TensorDataset | None:
        """The tensors themselves when the dataset is resident (for evaluation-only extras), else None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class ResidentSource(DataSource):
    """A `TensorDataset` on the device; batches by index. With `augment`, inputs are uint8 images that
    are augmented (training) and normalised (both) per batch on the device; without it, inputs are used
    as stored (MNIST: floats in [0, 1]), exactly as before this seam existed. `validation`: the held-out
    (inputs, targets) of a validation split (`data` is then the training set without them)."""

    def __init__(self, data: TensorDataset, batch_size: int, seed: int, device: torch.device,
                 augment: ImageAugment | None = None, eval_batch_size: int = RESIDENT_EVAL_BATCH,
                 shard: Shard = WHOLE, validation: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.data = data.to(device)
        self.validation = None if validation is None else (validation[0].to(device), validation[1].to(device))
        self.validation_size = 0 if validation is None else int(validation[1].shape[0])
        self.augment, self.shard = augment, shard
        self.eval_batch_size = eval_batch_size
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.order = BatchOrder(self.data.x_train.shape[0], batch_size, self.generator, device)
        self.train_size = self.data.x_train.shape[0]
        self.example = self._eval_input(self.data.x_test[:1])[0]

    def _eval_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.augment.normalise(x) if self.augment is not None else x

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.shard.take(next(self.order))
        x = self.data.x_train[idx]
        if self.augment is not None:
            x = self.augment.train(x, self.generator, self.shard)
        return x, self.data.y_train[idx]

    def _batches(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, x.shape[0], self.eval_batch_size):
            yield self._eval_input(x[start:start + self.eval_batch_size]), y[start:start + self.eval_batch_size]

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._batches(self.data.x_test, self.data.y_test)

    def validation_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.validation is None:
            return super().validation_batches()
        return self._batches(*self.validation)

    @property
    def resident(self) -> TensorDataset | None:
        return self.data

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()  # the augmentation draws from the same generator

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order: a function of the run and the epoch only."""
    return seed * 1_000_003 + epoch


def sample_seed(seed: int, epoch: int, index: int, size: int) -> int:
    """The seed of one sample's augmentation: a function of the run, the epoch and the index only."""
    return epoch_seed(seed, epoch) * max(size, 1) + index


class _EpochSampler(Sampler):
    """One epoch's order (a permutation drawn from the run's seed and the epoch number), from a
    position on, as (index, augmentation seed) pairs; batches of the epoch that were already trained
    on are skipped without loading them. With a `shard`, only this rank's slice of each global batch of
    `batch_size` (the last partial global batch is dropped, as a one-process run drops it)."""

    def __init__(self, size: int, seed: int, epoch: int, start: int, batch_size: int = 1,
                 shard: Shard = WHOLE) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, epoch, start
        self.batch_size, self.shard = batch_size, shard

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()[self.start:]
        if self.shard.world == 1:
            return order
        part = self.batch_size // self.shard.world
        mine = []
        for first in range(0, len(order) - self.batch_size + 1, self.batch_size):
            begin = first + self.shard.rank * part
            mine += order[begin:begin + part]
        return mine

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._order():
            yield index, sample_seed(self.seed, self.epoch, index, self.size)

    def __len__(self) -> int:
        if self.shard.world == 1:
            return self.size - self.start
        return (self.size - self.start) // self.batch_size * (self.batch_size // self.shard.world)


class _SeededSamples(Dataset):
    """Wraps a dataset whose transforms draw from torch's global generator: each sample is loaded with
    that generator seeded from the sample's own seed (and the caller's generator state restored)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class StreamedSource(DataSource):
    """A map-style dataset of (image tensor, label) pairs, streamed through DataLoader workers."""

    def __init__(self, train: Dataset, test: Dataset, batch_size: int, seed: int, device: torch.device,
                 workers: int = 0, eval_batch_size: int = 250, shard: Shard = WHOLE) -> None:
        self.train, self.test = train, test
        self.batch_size, self.seed, self.device, self.shard = batch_size, seed, device, shard
        self.workers, self.eval_batch_size = workers, eval_batch_size
        self.train_size = len(train)  # type: ignore[arg-type]
        if self.train_size < batch_size:
            raise ValueError(f"the training set has {self.train_size} examples, fewer than one batch of {batch_size}")
        self.batches_per_epoch = self.train_size // batch_size
        self.epoch, self.batch_in_epoch = 0, 0
        self._iterator: Iterator | None = None
        self.example = self._to_device(test[0][0].unsqueeze(0))[0]

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if self.workers else None)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    def _start_epoch(self) -> None:
        sampler = _EpochSampler(self.train_size, self.seed, self.epoch, self.batch_in_epoch * self.batch_size,
                                self.batch_size, self.shard)
        local = self.batch_size // self.shard.world
        self._iterator = iter(self._loader(_SeededSamples(self.train), local, sampler, drop_last=True))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch, self.batch_in_epoch, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._start_epoch()
        try:
            x, y = next(self._iterator)  # type: ignore[arg-type]
        except UnreadableDataError as exc:  # from a worker: its message wrapped in the worker's traceback
            self._iterator = None
            raise UnreadableDataError.from_worker(exc) from None
        self.batch_in_epoch += 1
        return self._to_device(x), self._to_device(y)

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in self._loader(self.test, self.eval_batch_size):
                yield self._to_device(x), self._to_device(y)
        except UnreadableDataError as exc:
            raise UnreadableDataError.from_worker(exc) from None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch, self._iterator = state["epoch"], state["batch_in_epoch"], None
