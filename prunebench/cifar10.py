"""CIFAR-10 (python version) through torchvision, checked against torchvision's published MD5s.

Files live in `<data_dir>/cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta), as extracted
from the official `cifar-10-python.tar.gz`. The expected names and MD5s are read from torchvision's
`CIFAR10` class attributes (`train_list`, `test_list`, `meta`, `tgz_md5`), not retyped here. The data is
returned resident as uint8 tensors (N, 3, 32, 32), as stored (about 180 MB in all): normalisation and
augmentation are the task's business, done on the device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from prunebench.data import TensorDataset, checksum_status, file_digest
from prunebench.errors import DataUnavailableError, UnverifiedDataError

# Per-channel mean and standard deviation of the 50,000 CIFAR-10 training images' pixels scaled to [0, 1]
# (the std over all pixels of a channel): the commonly quoted values, computed once on the real training set
# (a different std, (0.2023, 0.1994, 0.2010), also circulates). prunebench does not recompute them at load time.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_FOLDER = "cifar-10-batches-py"


def _torchvision_cifar10() -> type:
    from torchvision.datasets import CIFAR10

    return CIFAR10


def cifar10_dir(data_dir: Path) -> Path:
    return Path(data_dir) / CIFAR10_FOLDER


def cifar10_md5() -> dict[str, str]:
    """File name -> published MD5, read from torchvision's `CIFAR10` class (train, test, then meta)."""
    cls = _torchvision_cifar10()
    files = {name: md5 for name, md5 in cls.train_list + cls.test_list}
    files[cls.meta["filename"]] = cls.meta["md5"]
    return files


def cifar10_archive() -> tuple[str, str]:
    """The official archive's name and MD5 (torchvision's `filename`, `tgz_md5`)."""
    cls = _torchvision_cifar10()
    return cls.filename, cls.tgz_md5


def md5_file(path: Path) -> str:
    return file_digest(path, "md5")


def cifar10_status(data_dir: Path) -> dict[str, str]:
    """For each file torchvision lists: 'ok', 'missing' or 'bad checksum'."""
    return checksum_status(cifar10_dir(data_dir), cifar10_md5(), "md5")


def _placement_help(data_dir: Path) -> str:
    folder = cifar10_dir(data_dir)
    archive, archive_md5 = cifar10_archive()
    files = "\n".join(f"  {folder / name}  md5 {md5}" for name, md5 in cifar10_md5().items())
    return (f"Extract the official archive {archive} (md5 {archive_md5}) into {Path(data_dir)}, "
            f"which gives these files (names and MD5 must match):\n{files}")


def _download_torchvision(data_dir: Path) -> None:
    """torchvision's download: fetches and MD5-checks the archive, then extracts it into `data_dir`."""
    _torchvision_cifar10()(str(data_dir), train=True, download=True)


def fetch_cifar10(data_dir: Path, log: Callable[[str], None] | None = None) -> Path:
    """Make sure the six verified CIFAR-10 files are under `data_dir/cifar-10-batches-py`; return that folder.

    If any is missing or does not verify, try torchvision's download (which replaces the folder's files);
    on failure raise DataUnavailableError saying which files to place where."""
    data_dir = Path(data_dir)
    if all(s == "ok" for s in cifar10_status(data_dir).values()):
        return cifar10_dir(data_dir)
    log = log or (lambda message: print(message, file=sys.stderr))
    log("fetching CIFAR-10 through torchvision ...")
    try:
        _download_torchvision(data_dir)
    except Exception as exc:  # noqa: BLE001 - the failure is reported with the placement instructions
        tried = f"torchvision: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        status = cifar10_status(data_dir)
        if all(s == "ok" for s in status.values()):
            return cifar10_dir(data_dir)
        tried = f"torchvision: files did not verify: {status}"
    raise DataUnavailableError(
        f"CIFAR-10 is not available and could not be fetched ({tried}).\n{_placement_help(data_dir)}")


def _unchecked_cifar10() -> type:
    """torchvision's CIFAR10 with its expected MD5s set to None, so its constructor's integrity check
    (`check_integrity(path, None)`) only asks that the files exist. Used after prunebench has checked the
    MD5s itself (no second hashing) or the caller has accepted unverified files; the reading is torchvision's."""
    base = _torchvision_cifar10()

    class UncheckedCIFAR10(base):
        train_list = [[name, None] for name, _ in base.train_list]
        test_list = [[name, None] for name, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return UncheckedCIFAR10


def load_cifar10(data_dir: Path, allow_unverified: bool = False, fetch: bool = True) -> TensorDataset:
    """CIFAR-10 as uint8 tensors (N, 3, 32, 32) (NCHW, as stored) and int64 labels.

    Missing files: fetched first when `fetch`, else (or if that fails) DataUnavailableError. Files present
    whose MD5 does not match: UnverifiedDataError, unless `allow_unverified` (then they are loaded)."""
    data_dir = Path(data_dir)
    status = cifar10_status(data_dir)
    if fetch and "missing" in status.values():
        fetch_cifar10(data_dir)
        status = cifar10_status(data_dir)
    missing = [name for name, s in status.items() if s == "missing"]
    if missing:
        raise DataUnavailableError(
            f"CIFAR-10 files missing under {cifar10_dir(data_dir)}: {', '.join(missing)}.\n{_placement_help(data_dir)}")
    bad = [name for name, s in status.items() if s != "ok"]
    if bad and not allow_unverified:
        raise UnverifiedDataError(
            f"CIFAR-10 files under {cifar10_dir(data_dir)} do not match torchvision's published MD5s: "
            f"{', '.join(bad)}; --allow-unverified-data accepts them (results are then not comparable).")
    cls = _unchecked_cifar10()
    train = cls(str(data_dir), train=True, download=False)
    test = cls(str(data_dir), train=False, download=False)

    def images(ds) -> torch.Tensor:  # torchvision keeps (N, 32, 32, 3); back to the stored (N, 3, 32, 32)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

    def labels(ds) -> torch.Tensor:
        return torch.tensor(ds.targets, dtype=torch.int64)

    return TensorDataset(images(train), labels(train), images(test), labels(test))
