"""CIFAR-10 (python version) through torchvision, checked against torchvision's published MD5s.

Files live in `<data_dir>/cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta), as extracted
from the official `cifar-10-python.tar.gz`. The expected names and MD5s are read from torchvision's
`CIFAR10` class attributes (`train_list`, `test_list`, `meta`, `tgz_md5`), not retyped here. The data is
returned resident as uint8 tensors (N, 3, 32, 32), as stored (about 180 MB in all): normalisation and
augmentation are the task's business, done on the device.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from prunebench.data import TensorDataset, checksum_status, file_digest
from prunebench.errors import DataUnavailableError, UnreadableDataError, UnverifiedDataError, describe

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
        tried = f"torchvision: {describe(exc)}"
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


#: The keys each file must have (torchvision's reading: `label_names` in the meta file).
_BATCH_KEYS = ("data", "labels")
_META_KEYS = ("label_names",)
CIFAR10_PIXELS = 3 * 32 * 32
CIFAR10_CLASSES = 10


def check_cifar10_file(path: Path) -> None:
    """Raise UnreadableDataError (one line naming `path`) unless it reads as torchvision reads it (a pickle,
    latin-1 strings) into what CIFAR-10's python version holds: for a batch, `data` uint8 of shape (N, 3072)
    (1024 red, green, blue values per row) and N `labels` in 0..9; for batches.meta, `label_names`."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except Exception as exc:  # noqa: BLE001 - pickle raises many types for a damaged file
        raise UnreadableDataError(f"CIFAR-10 file {path} is not a readable pickle ({describe(exc)}): "
                                  "truncated or damaged; extract the official archive again") from None
    if not isinstance(entry, dict):
        raise UnreadableDataError(f"CIFAR-10 file {path} holds a {type(entry).__name__}, not the dict of a CIFAR-10 "
                                  "batch")
    required = _META_KEYS if path.name == "batches.meta" else _BATCH_KEYS
    missing = [key for key in required if key not in entry]
    if missing:
        keys = ", ".join(repr(key) for key in list(entry)[:4])
        why = (f"its keys are bytes ({keys}): pickled by Python 3 from bytes keys, as some converters write; the "
               "official python-version batches give str keys") if any(isinstance(k, bytes) for k in entry) else (
               f"its keys: {keys}")
        raise UnreadableDataError(f"CIFAR-10 file {path} lacks the key {missing[0]!r} ({why})")
    if path.name == "batches.meta":
        return
    data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR10_PIXELS:
        raise UnreadableDataError(f"CIFAR-10 file {path}: 'data' is {data.dtype} of shape {tuple(data.shape)}, "
                                  f"expected uint8 of shape (N, {CIFAR10_PIXELS}) (1024 red, green, blue values "
                                  "per image)")
    if labels.shape != (data.shape[0],):
        raise UnreadableDataError(f"CIFAR-10 file {path}: {labels.size} labels for {data.shape[0]} images")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                        or labels.max() >= CIFAR10_CLASSES):
        raise UnreadableDataError(f"CIFAR-10 file {path}: labels must be whole numbers 0..9, found "
                                  f"{labels.dtype} from {labels.min()} to {labels.max()}")


def load_cifar10(data_dir: Path, allow_unverified: bool = False, fetch: bool = True) -> TensorDataset:
    """CIFAR-10 as uint8 tensors (N, 3, 32, 32) (NCHW, as stored) and int64 labels.

    Missing files: fetched first when `fetch`, else (or if that fails) DataUnavailableError. Files present
    whose MD5 does not match: UnverifiedDataError, unless `allow_unverified` (then they are loaded, each first
    checked by `check_cifar10_file`: a malformed one is an UnreadableDataError naming it)."""
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
    for name in bad:  # the official files read; others are checked first, so that each fault is one line
        check_cifar10_file(cifar10_dir(data_dir) / name)
    cls = _unchecked_cifar10()
    try:
        train = cls(str(data_dir), train=True, download=False)
        test = cls(str(data_dir), train=False, download=False)
    except Exception as exc:  # noqa: BLE001 - whatever torchvision meets becomes one line naming the folder
        raise UnreadableDataError(f"CIFAR-10 under {cifar10_dir(data_dir)} cannot be read by torchvision "
                                  f"({describe(exc)})") from None

    def images(ds) -> torch.Tensor:  # torchvision keeps (N, 32, 32, 3); back to the stored (N, 3, 32, 32)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

    def labels(ds) -> torch.Tensor:
        return torch.tensor(ds.targets, dtype=torch.int64)

    return TensorDataset(images(train), labels(train), images(test), labels(test))
