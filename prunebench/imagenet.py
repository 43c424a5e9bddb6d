"""ImageNet (ILSVRC-2012) in torchvision's ImageFolder layout, checked by its published shape, streamed.

Layout: `<data_dir>/imagenet/train/<wnid>/*.JPEG` and `<data_dir>/imagenet/val/<wnid>/*.JPEG`. prunebench
never downloads ImageNet (it requires registration and accepting its terms at image-net.org). A folder of
extracted JPEGs has no published per-file checksums, so "verified" means its published shape: exactly
1,000 class folders named like WordNet ids (n + 8 digits), the same set in train and val, 1,281,167
training and 50,000 validation images. The original archives, when present in `<data_dir>/imagenet/`,
can be checked against torchvision's published MD5s (`torchvision.datasets.imagenet.ARCHIVE_META`).

Preprocessing follows Caffe's AlexNet (the DT paper's ImageNet model): images warped to 256x256, a random
227x227 crop and horizontal flip for training, the centre 227x227 crop for evaluation. Caffe subtracts a
mean image; we normalise per channel with the usual ImageNet mean/std instead (a recorded open choice).

An image that cannot be read (truncated, not an image), met when a batch draws it, stops the run with one
line naming the file (`read_image`, an `UnreadableDataError`); it is not skipped, since a run that skipped
images would train on another dataset than the one its row names. The run keeps its last checkpoint: replace
the file and the same command continues.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prunebench.cifar10 import md5_file
from prunebench.errors import DataUnavailableError, UnreadableDataError, UnverifiedDataError, describe

if TYPE_CHECKING:
    from PIL import Image
    from torchvision.datasets import ImageFolder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000
WNID = re.compile(r"n\d{8}")
# The rows of `imagenet_status` that must be ok for the folder to count as verified.
CHECK_ROWS = ("train classes", "train images", "val classes", "val images", "class names")


def imagenet_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "imagenet"


def imagenet_archives() -> dict[str, str]:
    """Archive file name -> published MD5, from torchvision's `ARCHIVE_META` (train, val, devkit)."""
    from torchvision.datasets.imagenet import ARCHIVE_META

    return dict(ARCHIVE_META.values())


def _count_images(folder: str) -> int:
    """Image files (ImageFolder's extensions) under `folder`, recursively, by os.scandir: no image is opened."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    count = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                count += _count_images(entry.path)
            elif entry.name.lower().endswith(IMG_EXTENSIONS) and entry.is_file():
                count += 1
    return count


def _scan_split(folder: Path) -> dict[str, int] | None:
    """Class folder name -> image count; None when `folder` does not exist."""
    if not folder.is_dir():
        return None
    with os.scandir(folder) as entries:
        classes = sorted(entry.name for entry in entries if entry.is_dir())
    return {name: _count_images(str(folder / name)) for name in classes}


def _count_row(found: int, expected: int) -> str:
    return f"{found:,} ok" if found == expected else f"{found:,} (expected {expected:,})"


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def imagenet_status(data_dir: Path, check_archives: bool = False) -> dict[str, str]:
    """Rows: 'train classes', 'train images', 'val classes', 'val images' ('1,000 ok', '3 (expected 1,000)'
    or 'missing'), 'class names' ('ok' or what is wrong), then one row per archive file name: 'absent
    (optional)', 'present, <size>, MD5 not checked' or, with `check_archives`, 'ok' / 'bad checksum'."""
    root = imagenet_dir(data_dir)
    status: dict[str, str] = {}
    splits = {}
    for split, expected in (("train", IMAGENET_TRAIN_IMAGES), ("val", IMAGENET_VAL_IMAGES)):
        scan = splits[split] = _scan_split(root / split)
        if scan is None:
            status[f"{split} classes"] = status[f"{split} images"] = "missing"
        else:
            status[f"{split} classes"] = _count_row(len(scan), IMAGENET_CLASSES)
            status[f"{split} images"] = _count_row(sum(scan.values()), expected)
    train, val = splits["train"], splits["val"]
    if train is None or val is None:
        status["class names"] = "missing"
    else:
        problems = []
        odd = sorted(name for name in set(train) | set(val) if not WNID.fullmatch(name))
        if odd:
            problems.append(f"{len(odd)} not WordNet ids (e.g. {', '.join(odd[:3])})")
        if set(train) != set(val):
            problems.append(f"train and val differ: {len(set(train) - set(val))} only in train, "
                            f"{len(set(val) - set(train))} only in val")
        status["class names"] = "; ".join(problems) if problems else "ok"
    for name, md5 in imagenet_archives().items():
        path = root / name
        if not path.is_file():
            status[name] = "absent (optional)"
        elif check_archives:
            status[name] = "ok" if md5_file(path) == md5 else "bad checksum"
        else:
            status[name] = f"present, {_size(path)}, MD5 not checked"
    return status


def _row_ok(value: str) -> bool:
    return value == "ok" or value.endswith(" ok")


def imagenet_verified(status: dict[str, str]) -> bool:
    """True when every CHECK_ROWS row is ok and no archive was found with a bad checksum."""
    return all(_row_ok(status.get(row, "")) for row in CHECK_ROWS) and "bad checksum" not in status.values()


def _has_class_folder(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(entry.is_dir() for entry in entries)


def imagenet_locations(data_dir: Path) -> dict[str, str]:
    """Where each `imagenet_status` row is expected on disk."""
    root = imagenet_dir(data_dir)
    locations = {"train classes": f"{root / 'train'}/n########/", "train images": f"{root / 'train'}/n########/*.JPEG",
                 "val classes": f"{root / 'val'}/n########/", "val images": f"{root / 'val'}/n########/*.JPEG",
                 "class names": f"{root / 'train'}/ and {root / 'val'}/"}
    locations.update({name: str(root / name) for name in imagenet_archives()})
    return locations


def imagenet_layout_help(data_dir: Path) -> str:
    root = imagenet_dir(data_dir)
    return (f"prunebench does not download ImageNet (ILSVRC-2012): it requires registration and accepting its terms "
            f"at image-net.org. Place it yourself in the ImageFolder layout:\n"
            f"  {root / 'train'}/<wnid>/*.JPEG   ({IMAGENET_CLASSES:,} folders n########, "
            f"{IMAGENET_TRAIN_IMAGES:,} images)\n"
            f"  {root / 'val'}/<wnid>/*.JPEG     (the same {IMAGENET_CLASSES:,} folders, "
            f"{IMAGENET_VAL_IMAGES:,} images)\n"
            f"With ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz in {root}, "
            f"torchvision.datasets.ImageNet('{root}', split='train') and split='val' extract them into this layout "
            f"(validation images sorted into class folders by the devkit's labels).")


def read_image(path: str) -> Image.Image:
    """ImageFolder's loader (PIL, converted to RGB) with an unreadable file as an UnreadableDataError naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, ValueError, DecompressionBombError, ...
        raise UnreadableDataError(f"ImageNet image {path} cannot be read ({describe(exc)}); "
                                  "replace or remove it and run the same command again (images are not skipped: "
                                  "the run would train on another dataset)") from None


def imagenet_transforms(train_crop: int = 227, resize: int = 256, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD, flip: bool = True) -> tuple[Callable, Callable]:
    """(training, evaluation) transforms: warp to resize x resize (Caffe), then a random (training) or centre
    (evaluation) train_crop x train_crop crop, horizontal flip for training, ToTensor, per-channel normalisation."""
    from torchvision import transforms as T

    warp = T.Resize((resize, resize))
    tail = [T.ToTensor(), T.Normalize(list(mean), list(std))]
    train = [warp, T.RandomCrop(train_crop)] + ([T.RandomHorizontalFlip()] if flip else []) + tail
    return T.Compose(train), T.Compose([warp, T.CenterCrop(train_crop), *tail])


def imagenet_datasets(data_dir: Path, allow_unverified: bool = False, train_crop: int = 227, resize: int = 256,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      flip: bool = True) -> tuple[ImageFolder, ImageFolder]:
    """(train, val) torchvision ImageFolders with `imagenet_transforms`; class indices equal in both.

    DataUnavailableError when a split folder is missing or unreadable as an ImageFolder, or the two class lists
    differ; UnverifiedDataError when the folder does not have ImageNet's published shape, unless
    `allow_unverified`."""
    from torchvision.datasets import ImageFolder

    root = imagenet_dir(data_dir)
    empty = [split for split in ("train", "val") if not _has_class_folder(root / split)]
    if empty:
        raise DataUnavailableError(f"ImageNet {' and '.join(empty)} folder(s) missing or without class folders "
                                   f"under {root}.\n{imagenet_layout_help(data_dir)}")
    status = imagenet_status(data_dir)
    if not allow_unverified and not imagenet_verified(status):
        failing = "; ".join(f"{row}: {status[row]}" for row in CHECK_ROWS if not _row_ok(status[row]))
        failing += "".join(f"; {name}: bad checksum" for name, s in status.items() if s == "bad checksum")
        raise UnverifiedDataError(f"ImageNet under {root} does not have the published ILSVRC-2012 shape ({failing}); "
                                  f"--allow-unverified-data accepts it (results are then not comparable).")
    train_tf, eval_tf = imagenet_transforms(train_crop, resize, mean, std, flip)
    try:
        train = ImageFolder(str(root / "train"), transform=train_tf, loader=read_image)
        val = ImageFolder(str(root / "val"), transform=eval_tf, loader=read_image)
    except FileNotFoundError as exc:  # e.g. a class folder without images
        raise DataUnavailableError(f"ImageNet under {root} cannot be read as ImageFolders: {exc}") from None
    if train.classes != val.classes:
        raise DataUnavailableError(f"ImageNet train and val under {root} have different class folders, so their "
                                   f"class indices would differ ({len(train.classes)} vs {len(val.classes)} classes).")
    return train, val
