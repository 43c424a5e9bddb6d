"""Checkpoints: a run stopped twice and continued is, bit for bit, the run that never stopped (every
method, across its phases); a run killed hard continues too; `force` starts again from scratch."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from test_deployed import METHODS  # the XOR overrides under which every method prunes within 300 steps
from torch import nn

from prunebench.checkpoint import checkpoint_dir, checkpoint_path, load_checkpoint, save_checkpoint
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


class StopAt(Observer):
    """Ctrl-C after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.at = step

    def step(self, step: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt


def comparable(points: list[dict]) -> list[dict]:
    """The trajectory without its timings (the only thing a resumed run may differ in)."""
    return [{k: v for k, v in p.items() if k not in ("train_seconds", "eval_seconds")} for p in points]


@pytest.mark.parametrize("method", list(METHODS))
def test_a_run_stopped_twice_continues_bit_for_bit(method, tmp_path):
    spec = make_spec("xor", method, seed=0, hparams=METHODS[method], iterations=300, eval_every=50)
    straight = ResultStore(tmp_path / "straight.sqlite")
    train(spec, straight, tmp_path, device="cpu", observer=Measure(weights_digests), checkpoint_seconds=None)
    assert not checkpoint_path(checkpoint_dir(straight.path), spec.run_id).exists()

    stopped = ResultStore(tmp_path / "stopped.sqlite")
    for stop in (130, 230):  # checkpoints at every evaluation: continues from 100, then from 200
        with pytest.raises(KeyboardInterrupt):
            train(spec, stopped, tmp_path, device="cpu", observer=Observers(Measure(weights_digests), StopAt(stop)),
                  checkpoint_seconds=0)
        assert stopped.status(spec.run_id) == "interrupted"
        assert checkpoint_path(checkpoint_dir(stopped.path), spec.run_id).exists()
    result = train(spec, stopped, tmp_path, device="cpu", observer=Measure(weights_digests), checkpoint_seconds=0)

    assert result.status == "finished" and not result.skipped
    expected = comparable(straight.trajectory(spec.run_id))
    assert [p["step"] for p in expected] == [50, 100, 150, 200, 250, 300]
    assert comparable(stopped.trajectory(spec.run_id)) == expected
    environment = json.loads(stopped.run_row(spec.run_id)["environment"])
    assert [r["step"] for r in environment["resumed"]] == [100, 200]
    assert result.final["accuracy"] == straight.final_row(spec.run_id)["accuracy"]
    assert not checkpoint_path(checkpoint_dir(stopped.path), spec.run_id).exists()  # deleted once finished
    straight.close()
    stopped.close()


def test_a_run_killed_hard_continues_and_force_starts_again(store, tmp_path):
    spec = make_spec("xor", "dns", seed=1, hparams=METHODS["dns"], iterations=300, eval_every=50)
    with pytest.raises(KeyboardInterrupt):
        train(spec, store, tmp_path, observer=StopAt(180), checkpoint_seconds=0)
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
        train(spec, store, tmp_path, observer=StopAt(120), force=True, checkpoint_seconds=0)
    train(spec, store, tmp_path, observer=Record(), checkpoint_seconds=None, resume=False)
    assert steps[0] == 1  # resume=False: from scratch
    assert json.loads(store.run_row(spec.run_id)["environment"]).get("resumed") is None


def test_a_checkpoint_of_another_schedule_is_not_used(store, tmp_path):
    spec = make_spec("xor", "dense", seed=2, iterations=200, eval_every=50)
    with pytest.raises(KeyboardInterrupt):
        train(spec, store, tmp_path, observer=StopAt(120), checkpoint_seconds=0)
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
