"""Checkpoints: a run stopped twice and continued is, bit for bit, the run that never stopped (every
method, across its phases); a run killed hard continues too; `force` starts again from scratch."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from prunebench.checkpoint import checkpoint_dir, checkpoint_path, load_checkpoint, save_checkpoint
from prunebench.deploy import load_saved
from prunebench.harness import train
from prunebench.observers import Measure, Observer, Observers
from prunebench.pruner import Pruner
from prunebench.request import make_spec
from prunebench.store import ResultStore


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_digests(pruner: Pruner, model: nn.Module, data) -> dict:  # noqa: ARG001
    """The deployed network's and the trained model's exact bytes, and the method's own state."""
    return {"deployed": digest(pruner.deployed(model).state_dict()), "trained": digest(model.state_dict()),
            "method": hashlib.sha256(repr(pruner.state_dict()).encode()).hexdigest()}


def test_a_run_stopped_twice_continues_bit_for_bit(xor_method, stop_at, timeless, tmp_path):
    method, overrides = xor_method
    spec = make_spec("xor", method, seed=0, hparams=overrides, iterations=300, eval_every=50)
    straight = ResultStore(tmp_path / "straight.sqlite")
    train(spec, straight, tmp_path, device="cpu", observer=Measure(weights_digests), checkpoint_seconds=None)
    assert not checkpoint_path(checkpoint_dir(straight.path), spec.run_id).exists()

    stopped = ResultStore(tmp_path / "stopped.sqlite")
    for stop in (130, 230):  # checkpoints at every evaluation: continues from 100, then from 200
        with pytest.raises(KeyboardInterrupt):
            train(spec, stopped, tmp_path, device="cpu", observer=Observers(Measure(weights_digests), stop_at(stop)),
                  checkpoint_seconds=0)
        assert stopped.status(spec.run_id) == "interrupted"
        assert checkpoint_path(checkpoint_dir(stopped.path), spec.run_id).exists()
    result = train(spec, stopped, tmp_path, device="cpu", observer=Measure(weights_digests), checkpoint_seconds=0)

    assert result.status == "finished" and not result.skipped
    expected = timeless(straight.trajectory(spec.run_id))
    assert [p["step"] for p in expected] == [50, 100, 150, 200, 250, 300]
    assert timeless(stopped.trajectory(spec.run_id)) == expected
    environment = json.loads(stopped.run_row(spec.run_id)["environment"])
    assert [r["step"] for r in environment["resumed"]] == [100, 200]
    assert result.final["accuracy"] == straight.final_row(spec.run_id)["accuracy"]
    assert not checkpoint_path(checkpoint_dir(stopped.path), spec.run_id).exists()  # deleted once finished
    straight.close()
    stopped.close()


def test_a_run_killed_hard_continues_and_force_starts_again(store, stop_at, tmp_path):
    spec = make_spec("xor", "dns", seed=1, hparams={"c_rate": (0.0,), "gamma": 1e-3}, iterations=300, eval_every=50)
    with pytest.raises(KeyboardInterrupt):
        train(spec, store, tmp_path, observer=stop_at(180), checkpoint_seconds=0)
    with store.conn:  # as a SIGKILL leaves it: still 'running', no error recorded
        store.conn.execute("UPDATE runs SET status = 'running', error = NULL WHERE run_id = ?", (spec.run_id,))
    steps: list[int] = []

    class Record(Observer):
        def step(self, step: int) -> None:
            steps.append(step)

    train(spec, store, tmp_path, observer=Record(), checkpoint_seconds=0)
    assert steps[0] == 151 and steps[-1] == 300  # continued after the checkpoint at 150

    steps.clear()
    with pytest.raises(KeyboardInterrupt):
        train(spec, store, tmp_path, observer=stop_at(120), force=True, checkpoint_seconds=0)
    train(spec, store, tmp_path, observer=Record(), checkpoint_seconds=None, resume=False)
    assert steps[0] == 1  # resume=False: from scratch
    assert json.loads(store.run_row(spec.run_id)["environment"]).get("resumed") is None


def test_a_checkpoint_of_another_schedule_is_not_used(store, stop_at, tmp_path):
    spec = make_spec("xor", "dense", seed=2, iterations=200, eval_every=50)
    with pytest.raises(KeyboardInterrupt):
        train(spec, store, tmp_path, observer=stop_at(120), checkpoint_seconds=0)
    saved = load_checkpoint(checkpoint_dir(store.path), spec.run_id)
    assert saved is not None and saved.step == 100 and saved.phases == [["train", 200, spec.protocol.lr]]
    saved.phases = [["train", 150, spec.protocol.lr]]  # as if the method's schedule had changed since
    save_checkpoint(checkpoint_dir(store.path), saved)
    steps: list[int] = []

    class Record(Observer):
        def step(self, step: int) -> None:
            steps.append(step)

    train(spec, store, tmp_path, observer=Record(), checkpoint_seconds=0)
    assert steps[0] == 1 and steps[-1] == 200


def _final_weights(path) -> dict[str, torch.Tensor]:
    return load_saved(path).state_dict


def _stopped_and_continued(spec, data_dir, tmp_path, stop_at, stop: int, **options) -> tuple[dict, dict, list]:
    """The run trained straight, and stopped after step `stop` then continued: each one's final deployed
    weights (kept with `save_model`), and the resumed run's continuation steps."""
    straight = ResultStore(tmp_path / "straight.sqlite")
    train(spec, straight, data_dir, device="cpu", checkpoint_seconds=None, save_model=tmp_path / "straight.pt",
          **options)
    stopped = ResultStore(tmp_path / "stopped.sqlite")
    with pytest.raises(KeyboardInterrupt):
        train(spec, stopped, data_dir, device="cpu", checkpoint_seconds=0, observer=stop_at(stop), **options)
    result = train(spec, stopped, data_dir, device="cpu", checkpoint_seconds=0, save_model=tmp_path / "stopped.pt",
                   **options)
    assert result.status == "finished"
    resumed = [r["step"] for r in json.loads(stopped.run_row(spec.run_id)["environment"])["resumed"]]
    points = [straight.trajectory(spec.run_id), stopped.trajectory(spec.run_id)]
    straight.close()
    stopped.close()
    return _final_weights(tmp_path / "straight.pt"), _final_weights(tmp_path / "stopped.pt"), [resumed, *points]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"weights differ after resuming: {differ}"


@pytest.mark.slow
def test_lenet5_on_mnist_stopped_and_continued_ends_with_the_same_weights(mnist_dir, stop_at, timeless, tmp_path):
    """Real MNIST, LeNet-5 with dynamic thresholds, network and batches in channels_last (oneDNN's layout, the
    optimizer's state in it too): 40 steps straight, or stopped at 30 (checkpoint at 20) and continued: the
    final weights are equal bit for bit (few steps: each evaluation reads 10,000 test images)."""
    spec = make_spec("lenet5", "dynthresh", seed=0, iterations=40, eval_every=20, protocol={"channels_last": True})
    assert spec.run_id != make_spec("lenet5", "dynthresh", seed=0, iterations=40).run_id
    straight, continued, (resumed, expected, points) = _stopped_and_continued(spec, mnist_dir, tmp_path, stop_at, 30)
    assert resumed == [20]
    _assert_same_weights(straight, continued)
    assert any(bool((w == 0).any()) for w in straight.values())  # some weights pruned: the masks matter too
    assert timeless(points) == timeless(expected)


@pytest.mark.slow
def test_cifar10_with_augmentation_stopped_and_continued_ends_with_the_same_weights(stop_at, timeless, tmp_path):
    """ResNet-56 (BatchNorm buffers included) on generated CIFAR-10 files in the real format, random crops and
    flips on: 8 steps of batch 8 over 32 images (an epoch boundary crossed, reshuffled), stopped at 7
    (checkpoint at 4)."""
    from fakedata import write_fake_cifar10

    write_fake_cifar10(tmp_path, n_train=32, n_test=16, seed=0)
    spec = make_spec("resnet56-cifar10", "dynthresh", seed=0, iterations=8, eval_every=4, protocol={"batch_size": 8})
    assert spec.task.augment is not None
    straight, continued, (resumed, expected, points) = _stopped_and_continued(
        spec, tmp_path, tmp_path, stop_at, 7, allow_unverified_data=True)
    assert resumed == [4]
    _assert_same_weights(straight, continued)
    assert any("running_mean" in name for name in straight)
    assert timeless(points) == timeless(expected)
