"""CIFAR-10 and ImageNet loaders on small generated files in the real on-disk formats (no download here).

Generated data only exercises the loaders and checks: its checksums and counts are not the published ones.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fakedata import write_fake_cifar10, write_fake_imagefolder
from torchvision.datasets import CIFAR10

from prunebench import cifar10, imagenet
from prunebench.cifar10 import cifar10_dir, cifar10_md5, cifar10_status, fetch_cifar10, load_cifar10, md5_file
from prunebench.cli import main
from prunebench.errors import DataUnavailableError, UnreadableDataError, UnverifiedDataError
from prunebench.imagenet import imagenet_datasets, imagenet_status, imagenet_verified

CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta"]


@pytest.fixture()
def offline(monkeypatch):
    """torchvision's CIFAR-10 download fails as it does without network; records the calls."""
    calls = []

    def fail(data_dir):
        calls.append(data_dir)
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar10, "_download_torchvision", fail)
    return calls


@pytest.fixture()
def fake_cifar(tmp_path):
    write_fake_cifar10(tmp_path, n_train=50, n_test=20, seed=3)
    return tmp_path


def _written(folder, names):
    batches = [pickle.loads((folder / name).read_bytes(), encoding="bytes") for name in names]
    return np.concatenate([b[b"data"] for b in batches]), [y for b in batches for y in b[b"labels"]]


def test_generated_cifar10_loads_when_unverified_is_allowed(fake_cifar, offline):
    ds = load_cifar10(fake_cifar, allow_unverified=True)
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert int(ds.y_train.min()) >= 0 and int(ds.y_train.max()) <= 9
    folder = cifar10_dir(fake_cifar)
    data, labels = _written(folder, [f"data_batch_{i}" for i in range(1, 6)])
    assert torch.equal(ds.x_train.reshape(50, 3072), torch.from_numpy(data))  # NCHW, exactly as stored
    assert ds.y_train.tolist() == labels
    data, labels = _written(folder, ["test_batch"])
    assert torch.equal(ds.x_test.reshape(20, 3072), torch.from_numpy(data)) and ds.y_test.tolist() == labels
    assert offline == []  # nothing was missing, so no download was tried


def test_generated_cifar10_is_learnable_from_colour(tmp_path):
    write_fake_cifar10(tmp_path, n_train=200, n_test=100)
    ds = load_cifar10(tmp_path, allow_unverified=True, fetch=False)
    means = torch.stack([ds.x_train[ds.y_train == c].float().mean((0, 2, 3)) for c in range(10)])
    pred = torch.cdist(ds.x_test.float().mean((2, 3)), means).argmin(1)
    assert 0.4 < (pred == ds.y_test).float().mean() < 1.0  # chance is 0.1; weakly class-dependent, not trivial


def test_generated_cifar10_is_refused_without_allow_unverified(fake_cifar, offline):
    with pytest.raises(UnverifiedDataError, match="--allow-unverified-data") as info:
        load_cifar10(fake_cifar)
    assert isinstance(info.value, DataUnavailableError)
    assert "data_batch_1" in str(info.value) and "batches.meta" in str(info.value)
    assert offline == []  # present but unverified files are not overwritten by a download


def test_missing_cifar10_says_where_to_place_it(tmp_path, offline):
    with pytest.raises(DataUnavailableError) as info:
        load_cifar10(tmp_path / "empty")
    assert not isinstance(info.value, UnverifiedDataError)
    message = str(info.value)
    assert len(offline) == 1 and "network unreachable" in message
    assert str(tmp_path / "empty" / "cifar-10-batches-py" / "data_batch_1") in message
    assert "cifar-10-python.tar.gz" in message and CIFAR10.tgz_md5 in message
    assert CIFAR10.train_list[0][1] in message and CIFAR10.meta["md5"] in message
    with pytest.raises(DataUnavailableError, match="missing"):
        load_cifar10(tmp_path / "empty", fetch=False, allow_unverified=True)
    assert len(offline) == 1  # fetch=False tried nothing


def test_cifar10_status_bad_missing_and_ok(fake_cifar, monkeypatch):
    assert list(cifar10_md5()) == CIFAR_FILES
    assert cifar10_status(fake_cifar) == dict.fromkeys(CIFAR_FILES, "bad checksum")
    (cifar10_dir(fake_cifar) / "data_batch_5").unlink()
    assert cifar10_status(fake_cifar)["data_batch_5"] == "missing"
    # the ok path, honestly: torchvision's expected MD5 for data_batch_1 set to the generated file's MD5
    actual = md5_file(cifar10_dir(fake_cifar) / "data_batch_1")
    monkeypatch.setattr(CIFAR10, "train_list", [["data_batch_1", actual], *CIFAR10.train_list[1:]])
    status = cifar10_status(fake_cifar)
    assert status["data_batch_1"] == "ok" and status["data_batch_2"] == "bad checksum"


def test_cifar10_with_matching_md5s_loads_without_allow_unverified(fake_cifar, monkeypatch, offline):
    folder = cifar10_dir(fake_cifar)
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5_file(folder / f"data_batch_{i}")]
                                                for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5_file(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5_file(folder / "batches.meta")})
    assert set(cifar10_status(fake_cifar).values()) == {"ok"}
    assert fetch_cifar10(fake_cifar) == folder and offline == []
    ds = load_cifar10(fake_cifar)
    assert ds.x_train.shape == (50, 3, 32, 32)


@pytest.fixture()
def fake_imagenet(tmp_path):
    write_fake_imagefolder(tmp_path, n_classes=3, train_per_class=4, val_per_class=2, seed=1)
    return tmp_path


def test_imagefolder_status_counts_and_is_not_verified(fake_imagenet):
    status = imagenet_status(fake_imagenet)
    assert status["train classes"] == "3 (expected 1,000)" and status["val classes"] == "3 (expected 1,000)"
    assert status["train images"] == "12 (expected 1,281,167)" and status["val images"] == "6 (expected 50,000)"
    assert status["class names"] == "ok"
    assert status["ILSVRC2012_img_train.tar"] == "absent (optional)"
    assert not imagenet_verified(status)


def test_imagefolder_refused_without_allow_unverified_and_loads_with_it(fake_imagenet):
    with pytest.raises(UnverifiedDataError, match="--allow-unverified-data") as info:
        imagenet_datasets(fake_imagenet)
    assert "train images: 12 (expected 1,281,167)" in str(info.value)
    train, val = imagenet_datasets(fake_imagenet, allow_unverified=True)
    assert len(train) == 12 and len(val) == 6
    assert train.class_to_idx == val.class_to_idx and len(train.classes) == 3
    x, y = train[5]
    assert x.dtype == torch.float32 and x.shape == (3, 227, 227) and 0 <= y < 3
    x, y = val[0]  # the greyscale JPEG, read as RGB
    assert x.dtype == torch.float32 and x.shape == (3, 227, 227) and y == 0
    assert torch.equal(val[1][0], val[1][0])  # evaluation transform is deterministic (centre crop, no flip)
    small, _ = imagenet_datasets(fake_imagenet, allow_unverified=True, train_crop=24, resize=32)
    assert small[0][0].shape == (3, 24, 24)


def test_imagefolder_with_the_published_shape_is_verified(fake_imagenet, monkeypatch):
    for name, value in (("IMAGENET_CLASSES", 3), ("IMAGENET_TRAIN_IMAGES", 12), ("IMAGENET_VAL_IMAGES", 6)):
        monkeypatch.setattr(imagenet, name, value)
    status = imagenet_status(fake_imagenet)
    assert status["train classes"] == "3 ok" and status["val images"] == "6 ok" and imagenet_verified(status)
    train, val = imagenet_datasets(fake_imagenet)
    assert len(train) == 12
    # an archive present with a wrong MD5 is reported, and only hashed when asked
    (fake_imagenet / "imagenet" / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(b"not the devkit")
    assert imagenet_status(fake_imagenet)["ILSVRC2012_devkit_t12.tar.gz"].endswith("MD5 not checked")
    status = imagenet_status(fake_imagenet, check_archives=True)
    assert status["ILSVRC2012_devkit_t12.tar.gz"] == "bad checksum" and not imagenet_verified(status)


def test_imagefolder_class_mismatch_and_odd_names(fake_imagenet):
    extra = fake_imagenet / "imagenet" / "train" / "not_a_wnid"
    extra.mkdir()
    (extra / "a.JPEG").write_bytes((next((fake_imagenet / "imagenet" / "val").rglob("*.JPEG"))).read_bytes())
    status = imagenet_status(fake_imagenet)
    assert "1 not WordNet ids (e.g. not_a_wnid)" in status["class names"]
    assert "1 only in train, 0 only in val" in status["class names"]
    with pytest.raises(DataUnavailableError, match="different class folders"):
        imagenet_datasets(fake_imagenet, allow_unverified=True)


def test_missing_imagefolder_gives_the_expected_layout(tmp_path):
    status = imagenet_status(tmp_path)
    assert status["train images"] == "missing" and status["class names"] == "missing"
    with pytest.raises(DataUnavailableError) as info:
        imagenet_datasets(tmp_path, allow_unverified=True)
    assert not isinstance(info.value, UnverifiedDataError)
    assert str(tmp_path / "imagenet" / "train") in str(info.value) and "1,281,167" in str(info.value)


def test_cli_data_status_shows_the_three_datasets(fake_cifar, offline):
    write_fake_imagefolder(fake_cifar, n_classes=2, train_per_class=1, val_per_class=1)
    result = CliRunner().invoke(main, ["data", "status", "--data-dir", str(fake_cifar)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("MNIST", "CIFAR-10", "ImageNet", "train-images-idx3-ubyte", "missing", "data_batch_1",
                 "bad checksum", "2 (expected 1,000)", "absent (optional)", "not verified", "never fetched",
                 str(fake_cifar / "cifar-10-batches-py" / "test_batch")):
        assert text in out, text
    result = CliRunner().invoke(main, ["data", "fetch", "cifar10", "--data-dir", str(fake_cifar / "x")])
    assert result.exit_code == 2 and "cifar-10-python.tar.gz" in result.output and len(offline) == 1
    result = CliRunner().invoke(main, ["data", "fetch", "imagenet", "--data-dir", str(fake_cifar)])
    assert result.exit_code == 2 and "image-net.org" in result.output


# -- malformed files (issue 32): one line naming the file, never a traceback ---------------------------------

def _batch(folder, name="data_batch_1"):
    return pickle.loads((folder / name).read_bytes(), encoding="latin1")


def _malformed(fake_cifar, name: str, payload: bytes) -> str:
    path = cifar10_dir(fake_cifar) / name
    path.write_bytes(payload)
    with pytest.raises(UnreadableDataError) as info:
        load_cifar10(fake_cifar, allow_unverified=True, fetch=False)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(path) in message
    return message


def test_cifar10_with_bytes_keys_names_the_file_and_the_key(fake_cifar):
    folder = cifar10_dir(fake_cifar)
    entry = _batch(folder)
    converted = {key.encode(): value for key, value in entry.items()}  # what Python-3 converters write
    message = _malformed(fake_cifar, "data_batch_1", pickle.dumps(converted))
    assert message == (f"CIFAR-10 file {folder / 'data_batch_1'} lacks the key 'data' (its keys are bytes "
                       "(b'batch_label', b'labels', b'data', b'filenames'): pickled by Python 3 from bytes keys, as "
                       "some converters write; the official python-version batches give str keys)")


def test_cifar10_truncated_wrong_shape_and_labels(fake_cifar):
    folder = cifar10_dir(fake_cifar)
    whole = (folder / "test_batch").read_bytes()
    entry = _batch(folder, "test_batch")
    assert "is not a readable pickle (" in _malformed(fake_cifar, "test_batch", whole[: len(whole) // 2])
    hwc = {**entry, "data": entry["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)}
    assert "'data' is uint8 of shape (20, 32, 32, 3), expected uint8 of shape (N, 3072)" in _malformed(
        fake_cifar, "test_batch", pickle.dumps(hwc))
    floats = {**entry, "data": entry["data"].astype(np.float32)}
    assert "'data' is float32 of shape (20, 3072)" in _malformed(fake_cifar, "test_batch", pickle.dumps(floats))
    short = {**entry, "labels": entry["labels"][:-1]}
    assert "19 labels for 20 images" in _malformed(fake_cifar, "test_batch", pickle.dumps(short))
    eleven = {**entry, "labels": [10] + entry["labels"][1:]}
    assert "labels must be whole numbers 0..9" in _malformed(fake_cifar, "test_batch", pickle.dumps(eleven))
    assert "holds a list, not the dict" in _malformed(fake_cifar, "test_batch", pickle.dumps([1, 2]))
    (folder / "test_batch").write_bytes(whole)
    assert "lacks the key 'label_names' (its keys: 'num_cases_per_batch'" in _malformed(
        fake_cifar, "batches.meta", pickle.dumps({"num_cases_per_batch": 10}))


def test_cli_run_on_malformed_cifar10_is_one_line(fake_cifar, tmp_path):
    folder = cifar10_dir(fake_cifar)
    entry = _batch(folder)
    (folder / "data_batch_1").write_bytes(pickle.dumps({key.encode(): value for key, value in entry.items()}))
    result = CliRunner().invoke(main, ["run", "--method", "dense", "--task", "resnet56-cifar10", "--data-dir",
                                       str(fake_cifar), "--db", str(tmp_path / "r.sqlite"), "--iterations", "1",
                                       "--allow-unverified-data"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        f"error: CIFAR-10 file {folder / 'data_batch_1'} lacks the key 'data' (its keys are bytes")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_jpeg_met_mid_epoch_stops_with_one_line(fake_imagenet, workers):
    """A damaged JPEG is not skipped: the batch that draws it raises UnreadableDataError naming the file, also
    from a DataLoader worker (whose traceback torch wraps around the message)."""
    from prunebench.sources import StreamedSource

    train, val = imagenet_datasets(fake_imagenet, allow_unverified=True, train_crop=24, resize=32)
    damaged = Path(train.samples[7][0])
    damaged.write_bytes(damaged.read_bytes()[:40])  # a truncated JPEG
    source = StreamedSource(train, val, batch_size=4, seed=0, device=torch.device("cpu"), workers=workers)
    with pytest.raises(UnreadableDataError) as info:
        for _ in range(source.batches_per_epoch):
            source.next_batch()
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"ImageNet image {damaged} cannot be read (")
    assert message.endswith("replace or remove it and run the same command again (images are not skipped: the run "
                            "would train on another dataset)")
    (Path(val.samples[1][0])).write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableDataError, match=rf"^ImageNet image {val.samples[1][0]} cannot be read "
                                                  r"\(UnidentifiedImageError: "):
        list(source.eval_batches())
