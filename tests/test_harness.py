"""The harness: XOR end to end, identity hashing, faults (NaN, SIGTERM, Ctrl-C), skipping finished runs."""

from __future__ import annotations

import os
import re
import signal
import sqlite3

import pytest
import torch
from prunebench.methods.dynthresh import DynamicThresholding

from prunebench import harness
from prunebench.harness import train
from prunebench.protocol import OPTIMIZERS, Phase, Protocol, schedule_origin
from prunebench.request import RunRequest, make_spec
from prunebench.store import run_identity


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_each_optimizer_family_builds_its_torch_optimizer(name, cls):
    assert name in OPTIMIZERS
    protocol = Protocol(optimizer=name, lr=0.05, momentum=0.5, weight_decay=1e-4)
    protocol.validate()
    optimizer = protocol.make_optimizer([torch.nn.Parameter(torch.zeros(3))])
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.05, 1e-4)
    if cls is torch.optim.SGD:  # Adam has no momentum setting; its betas stay PyTorch's
        assert group["momentum"] == 0.5


@pytest.mark.parametrize("changes, message", [
    ({"optimizer": "rmsprop"}, "optimizer must be one of adam, sgd"),
    ({"momentum": 1.0}, "momentum must be in [0, 1)"),
    ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"lr_policy": "cosine"}, "lr_policy must be one of step, inv"),
    ({"lr_policy": "inv", "lr_power": 0.0}, "lr_power must be > 0"),
    ({"lr_policy": "inv", "lr_milestones": (2,), "steps_per_epoch": 10}, "lr_policy inv has no milestones"),
])
def test_protocol_rejects_invalid_values(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Protocol(**changes).validate()


@pytest.mark.slow  # 4,000 steps
def test_xor_trains_in_seconds_and_prunes_while_solving(store, tmp_path):
    spec = make_spec("xor", "dynthresh", seed=0, iterations=4000)
    result = train(spec, store, tmp_path)
    f = result.final
    assert result.status == "finished"
    assert f["weights_total"] == 15
    assert 0 < f["weights_nonzero"] < 15, f"expected some of the 15 weights pruned, got {f['per_layer']}"
    assert f["accuracy"] > 0.99  # still solves XOR on the held-out half
    assert f["train_seconds"] < 60
    points = store.trajectory(result.run_id)
    assert [p["step"] for p in points] == list(range(250, 4001, 250))


def test_identity_hash_is_pinned():
    # Changing these breaks every stored run's identity: only do it on purpose.
    assert run_identity("lenet300", Protocol(), "dynthresh", {}, 0)[0] == "66c1c7672bfbfc29"
    assert run_identity("lenet300", Protocol(iterations=2000), "dynthresh", {"lam": 5e-4}, 1)[0] == "348230cdc46fc6a9"
    # eval_every does not change what is trained; 1e4 and 10000 are the same protocol
    assert run_identity("lenet300", Protocol(eval_every=7), "dynthresh", {}, 0)[0] == "66c1c7672bfbfc29"
    assert run_identity("lenet300", Protocol(iterations=int(1e4)), "dynthresh", {}, 0)[0] == "66c1c7672bfbfc29"


def test_defaults_left_out_of_identity():
    spec_default = make_spec("lenet300", "dynthresh", 0)
    spec_explicit = make_spec("lenet300", "dynthresh", 0, {"lam": spec_default.hparams.lam})
    assert spec_default.run_id == spec_explicit.run_id
    assert make_spec("lenet300", "dynthresh", 0, {"lam": 1e-3}).run_id != spec_default.run_id
    assert make_spec("lenet300", "dynthresh", 1).run_id != spec_default.run_id


@pytest.mark.parametrize("kwargs,message", [
    (dict(task="lenet300", method="nope"), "unknown method 'nope'; choose from: "),
    (dict(task="mnist9", method="dense"), "unknown task 'mnist9'; choose from: xor, lenet300, lenet5"),
    (dict(task="lenet300", method="dynthresh", hparams={"lam": -1.0}), "lam must be >= 0"),
    (dict(task="lenet300", method="dynthresh", hparams={"tau": 0.0}), "tau must be > 0"),
    (dict(task="lenet300", method="dynthresh", iterations=0), "iterations must be >= 1"),
    (dict(task="lenet300", method="dense", hparams={"lam": 1.0}), "dense has no hyperparameter 'lam'"),
])
def test_bad_input_rejected_before_training(kwargs, message):
    with pytest.raises((KeyError, ValueError)) as info:
        make_spec(**kwargs)
    assert message in str(info.value)


def test_nan_loss_stops_and_is_stored_as_failed(store, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEBENCH_FUSED", "0")  # the plain path, whose penalty is a loss term to poison
    original = DynamicThresholding.plain_penalty
    calls = {"n": 0}

    def poisoned(self):
        calls["n"] += 1
        value = original(self)
        return value * float("nan") if calls["n"] == 37 else value

    monkeypatch.setattr(DynamicThresholding, "plain_penalty", poisoned)
    spec = make_spec("xor", "dynthresh", seed=0, iterations=2000, eval_every=100)
    result = train(spec, store, tmp_path)
    assert result.status == "failed" and result.failed_step == 37
    row = store.run_row(result.run_id)
    assert row["status"] == "failed" and row["failed_step"] == 37 and "NaN or infinite" in row["error"]
    assert store.trajectory(result.run_id) == []  # stopped at the first evaluation (step 100)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_interrupt_is_stored_with_its_trajectory(store, tmp_path, monkeypatch, how):
    def interrupting(self, step):
        if step == 1100:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt

    monkeypatch.setattr(DynamicThresholding, "after_step", interrupting)
    spec = make_spec("xor", "dynthresh", seed=0, iterations=5000, eval_every=250)
    with pytest.raises(KeyboardInterrupt):
        train(spec, store, tmp_path)
    with sqlite3.connect(store.path) as conn:  # readable by another connection
        status, failed_step = conn.execute("SELECT status, failed_step FROM runs WHERE run_id = ?",
                                           (spec.run_id,)).fetchone()
    assert status == "interrupted" and failed_step == 1100
    assert [p["step"] for p in store.trajectory(spec.run_id)] == [250, 500, 750, 1000]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_finished_identity_is_skipped_unless_forced(store, tmp_path):
    spec = make_spec("xor", "dense", seed=3, iterations=200, eval_every=100)
    first = train(spec, store, tmp_path)
    again = train(spec, store, tmp_path)
    assert again.skipped and again.final["accuracy"] == first.final["accuracy"]
    forced = train(spec, store, tmp_path, force=True)
    assert not forced.skipped and forced.final["accuracy"] == first.final["accuracy"]  # seeded: identical


def test_every_deployed_network_is_the_plain_architecture(tmp_path, store):
    """Under each threshold scale the run's kept network is XOR's plain net (its four tensors), its non-zero
    weights are the stored count, and the scales are three runs with their own thresholds."""
    from prunebench.deploy import load_saved
    from prunebench.registry import get_method

    plain_keys = list(make_spec("xor", "dense").task.architecture().state_dict())
    thresholds = {"individual": 15, "layer": 2, "global": 1}  # one per weight, per layer, for the network
    finals = {}
    for scale, count in thresholds.items():
        spec = make_spec("xor", "dynthresh", seed=0, iterations=300, hparams={"scale": scale}, eval_every=300)
        result = train(spec, store, tmp_path, save_model=tmp_path / f"{scale}.pt")
        assert result.status == "finished"
        saved = load_saved(tmp_path / f"{scale}.pt").state_dict
        assert list(saved) == plain_keys == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
        nonzero = sum(int((t != 0).sum()) for k, t in saved.items() if k.endswith("weight"))
        final = store.final_row(spec.run_id)
        assert final["weights_nonzero"] == result.final["weights_nonzero"] == nonzero
        assert final["weights_total"] == 15 and final["compression"] == pytest.approx(15 / nonzero)
        pruner = get_method("dynthresh")(spec.hparams, spec.task)
        pruner.attach(spec.task.build_model(0))
        assert sum(s.numel() for s, _ in pruner.threshold_params) == count
        finals[spec.run_id] = saved
    assert len(finals) == 3  # three identities

    task = spec.task
    pruner = get_method("dynthresh")(spec.hparams, task)
    model = pruner.attach(task.build_model(0))
    net = pruner.deployed(model)
    assert type(net) is type(task.architecture())
    assert not any(hasattr(m, "parametrizations") for m in net.modules())
    assert torch.equal(net.fc1.weight, model.fc1.weight)


def test_a_deployed_network_of_another_architecture_fails_the_run(store, tmp_path, monkeypatch):
    from prunebench.registry import get_method

    def other(self, model):  # the XOR weights, but in an nn.Sequential, not the task's XorNet
        return torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Sigmoid(), torch.nn.Linear(5, 1))

    monkeypatch.setattr(get_method("dense"), "deployed", other)
    spec = make_spec("xor", "dense", seed=0, iterations=100, eval_every=50)
    with pytest.raises(TypeError, match="dense's deployed network is not the task's plain XorNet"):
        train(spec, store, tmp_path)
    assert store.run_row(spec.run_id)["status"] == "failed"


def test_caffe_inv_policy_sets_every_steps_lr(store, tmp_path, monkeypatch):
    """lr_policy inv: the optimizer's lr at step t (1-based) of a phase is base (1 + gamma (t - 1))^-power, as
    Caffe's solver computes it from the iterations it has done (a new phase restarts the count, as a Caffe run
    from saved weights does); the policy is part of the run's identity."""
    inv = Protocol(lr_policy="inv", lr_gamma=1e-4, lr_power=0.75)
    assert inv.lr_factor(10_001) == pytest.approx(2 ** -0.75)
    assert inv.lr_factor(10_001, phase_step=1) == 1.0  # the first step of a later phase
    seen: list[float] = []
    original = harness.training_step

    def spy(forward, task, pruner, optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return original(forward, task, pruner, optimizer, *args, **kwargs)

    monkeypatch.setattr(harness, "training_step", spy)
    protocol = (("optimizer", "sgd"), ("lr", 0.1), ("lr_policy", "inv"), ("lr_gamma", 0.5), ("lr_power", 1.0))
    request = RunRequest("xor", "dense", 0, iterations=5, eval_every=5, protocol=protocol)
    result = train(request.resolve(), store, tmp_path, device="cpu")
    assert result.status == "finished"
    assert seen == pytest.approx([0.1 / (1 + 0.5 * t) for t in range(5)])
    phases = [Phase("a", 3, 0.1), Phase("b", 4, 0.1), Phase("c", 5, 0.1, continues=True), Phase("d", 2, 0.1)]
    assert [schedule_origin(phases, i) for i in range(4)] == [0, 3, 3, 12]  # c goes on counting from b's start
    plain = RunRequest("xor", "dense", 0, iterations=5, eval_every=5, protocol=protocol[:2]).resolve()
    assert request.resolve().run_id != plain.run_id
