"""Small generated datasets in the real on-disk formats of CIFAR-10 and ImageNet, for tests only.

Generated data exercises the loaders, the checks and the training loop; it never produces a result
shown as a task's result. Its checksums and counts do not match the published ones, so the loaders
refuse it unless told to accept unverified data (`allow_unverified=True`, `--allow-unverified-data`).
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes `bytes` as Python 2 `str` (BINSTRING opcodes), as the real CIFAR-10
    files do: loaded with `encoding='latin1'` (torchvision) they give `str`, with `encoding='bytes'` `bytes`."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        # numpy 2 names its array reconstructor numpy._core.multiarray; write the name the real files carry,
        # numpy.core.multiarray, which numpy 1 and 2 both resolve.
        if getattr(obj, "__module__", None) == "numpy._core.multiarray":
            qualname = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"numpy.core.multiarray\n{qualname}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def fake_cifar10_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N, 3072) in CIFAR-10's row layout (1024 red, 1024 green, 1024 blue values, each 32x32
    row-major): a per-class colour tint, a per-image colour shift and per-pixel Gaussian noise. Weakly
    class-dependent: a short run learns something (nearest class-mean colour gets well above chance, not all)."""
    palette = np.random.default_rng(1234).uniform(60, 196, size=(len(CIFAR10_LABEL_NAMES), 3))
    base = (palette[labels] + rng.normal(0.0, 25.0, size=(len(labels), 3)))[:, :, None, None]  # (N, 3, 1, 1)
    noise = rng.normal(0.0, 40.0, size=(len(labels), 3, 32, 32))
    return np.clip(base + noise, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_fake_cifar10(data_dir: Path, n_train: int = 500, n_test: int = 100, seed: int = 0) -> Path:
    """Write `<data_dir>/cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) as pickles of the
    real files' structure; return that folder. The training images are split over the five batches."""
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, batch_label: str, start: int) -> dict[bytes, object]:
        labels = rng.permutation(np.arange(n) % len(CIFAR10_LABEL_NAMES))
        names = [f"fake_{CIFAR10_LABEL_NAMES[y]}_s_{start + i:06d}.png".encode() for i, y in enumerate(labels)]
        return {b"batch_label": batch_label.encode(), b"labels": [int(y) for y in labels],
                b"data": fake_cifar10_images(labels, rng), b"filenames": names}

    start = 0
    for i, n in enumerate(len(part) for part in np.array_split(np.arange(n_train), 5)):
        (folder / f"data_batch_{i + 1}").write_bytes(_py2_pickle(batch(n, f"training batch {i + 1} of 5", start)))
        start += n
    (folder / "test_batch").write_bytes(_py2_pickle(batch(n_test, "testing batch 1 of 1", start)))
    meta = {b"num_cases_per_batch": 10000, b"label_names": [name.encode() for name in CIFAR10_LABEL_NAMES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_pickle(meta))
    return folder


def fake_wnids(n_classes: int, seed: int = 0) -> list[str]:
    """`n_classes` distinct sorted ids of WordNet's form (n + 8 digits)."""
    rng = np.random.default_rng(seed)
    ids: set[str] = set()
    while len(ids) < n_classes:
        ids.add(f"n{int(rng.integers(1_000_000, 10_000_000)):08d}")
    return sorted(ids)


def write_fake_imagefolder(data_dir: Path, n_classes: int = 4, train_per_class: int = 8, val_per_class: int = 4,
                           size: tuple[int, int] = (64, 80), seed: int = 0) -> Path:
    """Write `<data_dir>/imagenet/{train,val}/<wnid>/<name>.JPEG` as real JPEG files; return `<data_dir>/imagenet`.

    Each image's height and width are drawn from `size` = (smallest, largest) side, so resizing matters;
    colours are tinted per class; the first validation image is greyscale (ImageNet has some)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(data_dir) / "imagenet"
    wnids = fake_wnids(n_classes, seed)
    palette = rng.uniform(40, 216, size=(n_classes, 3))
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, size=2))
                pixels = np.clip(palette[c] + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if split == "val" and c == 0 and i == 0:
                    image = image.convert("L")
                stem = f"{wnid}_{i + 1}" if split == "train" else f"ILSVRC2012_val_{c * per_class + i + 1:08d}"
                name = f"{stem}.JPEG"
                image.save(folder / name, format="JPEG", quality=90)
    return root
