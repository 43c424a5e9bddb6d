"""The data-source seam and the epoch protocol: on-device augmentation, streamed batches that do not
depend on the loader's workers and resume at the right batch, the multi-step lr schedule."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from prunebench import harness
from prunebench.data import TensorDataset
from prunebench.observers import Observer
from prunebench.protocol import Protocol
from prunebench.request import make_spec
from prunebench.sources import ImageAugment, ResidentSource, StreamedSource


def test_lr_factor_steps_down_at_each_milestone_epoch():
    p = Protocol(optimizer="sgd", lr=0.1, epochs=100, steps_per_epoch=390, iterations=39_000,
                 lr_milestones=(25, 50, 75))
    p.validate()
    assert p.lr_factor(1) == 1.0
    assert p.lr_factor(25 * 390) == 1.0  # last step of epoch 24 (0-based)
    assert p.lr_factor(25 * 390 + 1) == pytest.approx(0.1)
    assert p.lr_factor(50 * 390 + 1) == pytest.approx(0.01)
    assert p.lr_factor(39_000) == pytest.approx(0.001)
    assert Protocol().lr_factor(10_000) == 1.0  # no schedule


def test_epoch_and_iteration_overrides():
    p = Protocol(epochs=100, steps_per_epoch=390, iterations=39_000)
    assert p.with_overrides(epochs=2).iterations == 780
    shorter = p.with_overrides(iterations=3)
    assert shorter.iterations == 3 and shorter.epochs is None  # an iteration budget replaces the epochs
    with pytest.raises(ValueError, match="no epochs"):
        Protocol().with_overrides(epochs=3)
    with pytest.raises(ValueError, match="lr_milestones"):
        Protocol(lr_milestones=(3,)).validate()


def test_new_fields_keep_old_identities():
    # Pinned before the epoch fields existed (tests/test_store.py pins more); MNIST protocols are unchanged.
    assert make_spec("lenet300", "dense").protocol.epochs is None
    assert make_spec("lenet300", "dynthresh", seed=0).run_id == "66c1c7672bfbfc29"  # as in test_identity_hash_is_pinned
    assert "protocol" not in make_spec("lenet300", "dense").identity[1]


def test_batch_size_override_keeps_the_epoch_budget():
    spec = make_spec("vgg-cifar10", "dense", protocol={"batch_size": 64})
    p = spec.protocol
    assert (p.steps_per_epoch, p.epochs, p.iterations, p.eval_every) == (781, 100, 78_100, 781)
    assert p.lr_factor(25 * 781 + 1) == pytest.approx(0.1)


def _candidates(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (pad,) * 4)
    h, w = image.shape[1:]
    crops = [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return crops + [c.flip(2) for c in crops]


def test_augment_is_a_padded_crop_and_flip_of_each_image_then_normalised():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=gen)
    augment = ImageAugment(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), pad=2)
    out = augment.train(x, torch.Generator().manual_seed(1))
    mean = torch.tensor(augment.mean).view(3, 1, 1)
    std = torch.tensor(augment.std).view(3, 1, 1)
    pixels = ((out * std + mean) * 255).round().to(torch.uint8)
    offsets = set()
    for i in range(16):
        matches = [k for k, c in enumerate(_candidates(x[i], 2)) if torch.equal(c, pixels[i])]
        assert matches, f"sample {i} is no crop/flip of its image"
        offsets.add(matches[0])
    assert len(offsets) > 4  # offsets and flips vary across the batch
    again = augment.train(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # determined by the generator alone
    assert torch.allclose(augment.normalise(x[:1]), (x[:1].float() / 255 - mean) / std)


def test_resident_source_without_augment_serves_the_stored_tensors():
    data = TensorDataset(torch.arange(40.0).view(20, 2), torch.arange(20), torch.zeros(5, 2), torch.zeros(5))
    source = ResidentSource(data, batch_size=4, seed=3, device=torch.device("cpu"))
    x, y = source.next_batch()
    assert torch.equal(x, data.x_train[y])  # rows drawn by index, unchanged
    assert [b[0].shape[0] for b in source.eval_batches()] == [5]


class _NoisyIndex(Dataset):
    """Sample i = (i + a draw from torch's global generator, label i): like a random-crop transform."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return torch.tensor([float(index), torch.rand(()).item()]), index


def _take(source: StreamedSource, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [source.next_batch() for _ in range(n)]


def test_streamed_batches_cover_each_epoch_and_do_not_depend_on_workers():
    cpu = torch.device("cpu")
    plain = StreamedSource(_NoisyIndex(22), _NoisyIndex(6), batch_size=5, seed=7, device=cpu, workers=0)
    batches = _take(plain, 9)  # 4 batches per epoch (2 left over, dropped): 2 epochs and a bit
    first_epoch = torch.cat([y for _, y in batches[:4]])
    assert len(set(first_epoch.tolist())) == 20
    assert not torch.equal(torch.cat([y for _, y in batches[4:8]]), first_epoch)  # reshuffled
    with_workers = StreamedSource(_NoisyIndex(22), _NoisyIndex(6), batch_size=5, seed=7, device=cpu, workers=2)
    for (xa, ya), (xb, yb) in zip(batches, _take(with_workers, 9), strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)  # same images, same random draws
    assert sum(y.shape[0] for _, y in plain.eval_batches()) == 6


def test_streamed_source_resumes_at_the_right_batch_of_its_epoch():
    cpu = torch.device("cpu")
    reference = StreamedSource(_NoisyIndex(22), _NoisyIndex(6), batch_size=5, seed=1, device=cpu)
    expected = _take(reference, 7)
    first = StreamedSource(_NoisyIndex(22), _NoisyIndex(6), batch_size=5, seed=1, device=cpu)
    _take(first, 3)
    state = first.state_dict()
    assert state == {"epoch": 0, "batch_in_epoch": 3}
    resumed = StreamedSource(_NoisyIndex(22), _NoisyIndex(6), batch_size=5, seed=1, device=cpu)
    resumed.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected[3:], _take(resumed, 4), strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_harness_applies_the_lr_schedule_to_every_group(monkeypatch, tmp_path, store):
    """xor with an epoch protocol (10 steps an epoch, lr x0.1 at epochs 1 and 2): the lr the optimizer
    steps with is 1e-2, 1e-3, 1e-4 in epochs 0, 1, 2."""
    from prunebench import tasks

    xor = tasks.TASKS["xor"]
    scheduled = tasks.Task(**{**xor.__dict__, "protocol": Protocol(
        optimizer="sgd", lr=1e-2, iterations=30, batch_size=1000, epochs=3, steps_per_epoch=10,
        lr_milestones=(1, 2), init="normal", init_std=1.0, eval_every=10)})
    monkeypatch.setitem(tasks.TASKS, "xor", scheduled)
    optimizers: list[torch.optim.Optimizer] = []
    original = Protocol.make_optimizer

    def capture(self, params, lr=None):
        optimizers.append(original(self, params, lr))
        return optimizers[-1]

    monkeypatch.setattr(Protocol, "make_optimizer", capture)
    seen: dict[int, float] = {}

    class LrObserver(Observer):
        def step(self, step: int) -> None:
            seen[step] = optimizers[-1].param_groups[0]["lr"]

    result = harness.train(make_spec("xor", "dense"), store, tmp_path, observer=LrObserver())
    assert result.status == "finished"
    assert seen[1] == pytest.approx(1e-2) and seen[10] == pytest.approx(1e-2)
    assert seen[11] == pytest.approx(1e-3) and seen[21] == pytest.approx(1e-4) and seen[30] == pytest.approx(1e-4)
