"""Srinivas et al.'s gate variables (reconstruction): the straight-through gradients of the Bernoulli gate
on known numbers, the regulariser's value and gradient, the clip to [0, 1], the deployed mask g > 0.5,
the schedule, a short XOR run through the harness (and one stopped and continued), and the state round
trip."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import xor_weights
from prunebench.methods import srinivas
from prunebench.methods.srinivas import (
    SrinivasGates,
    SrinivasHparams,
    StraightThroughGate,
    gate_regulariser,
    gated_weight,
    keep_mask,
)
from torch import nn
from torch.nn.utils import parametrize

from prunebench.checkpoint import checkpoint_dir, checkpoint_path
from prunebench.harness import train
from prunebench.metrics import measure_compression
from prunebench.observers import Measure, Observers
from prunebench.protocol import Phase
from prunebench.registry import get_task
from prunebench.request import make_spec
from prunebench.store import ResultStore

# Hand-made numbers (all exact in binary): weights, a fixed draw z, the upstream gradient dL/d(wz).
W = torch.tensor([0.5, -1.5, 2.0, -0.25, 3.0])
Z = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
G = torch.tensor([2.0, -1.0, 0.5, 4.0, -0.75])
# XOR's fc1 (5x2) and fc2 (1x5): 15 weights.
FC1, FC2 = xor_weights()
# Overrides under which srinivas prunes part of XOR's 15 weights within 300 iterations (seed 0: 13 of 15
# kept at step 300, at 99.5% accuracy), spelled out so that no task default changes the test.
XOR_OVERRIDES = {"lambda1": 0.01, "lambda2": 0.1, "gate_init": 1.0}


def _xor_pruner(budget: str = "paper", **hp) -> tuple[SrinivasGates, nn.Module]:
    task = get_task("xor")
    pruner = SrinivasGates(SrinivasHparams(**hp), task, budget)
    model = pruner.attach(task.build_model(0))
    with torch.no_grad():
        model.fc1.parametrizations.weight.original.copy_(FC1)
        model.fc2.parametrizations.weight.original.copy_(FC2)
    return pruner, model


def _start_gated(pruner: SrinivasGates, model: nn.Module, lr: float = 0.0,
                 optimizer_class: type = torch.optim.SGD) -> torch.optim.Optimizer:
    optimizer = optimizer_class(model.parameters(), lr=lr)
    pruner.on_phase_start(Phase("gated", 10, lr), model, optimizer)
    return optimizer


def _gates(model: nn.Module) -> list[nn.Parameter]:
    return [model.fc1.parametrizations.weight[0].gate, model.fc2.parametrizations.weight[0].gate]


# -- 1. the straight-through gate ----------------------------------------------------------------
def test_straight_through_gradients_on_a_fixed_draw():
    w = W.clone().requires_grad_()
    g = torch.full_like(W, 0.7, requires_grad=True)
    out = StraightThroughGate.apply(w, g, Z)
    assert out.tolist() == [0.5, 0.0, 2.0, 0.0, 3.0]  # w * z; -1.5 * 0 = -0.0 compares equal
    (out * G).sum().backward()
    assert w.grad.tolist() == [2.0, 0.0, 0.5, 0.0, -0.75]  # dL/dw = dL/d(wz) * z
    assert g.grad.tolist() == [1.0, 1.5, 1.0, -1.0, -2.25]  # dL/dg = dL/d(wz) * w, dropped weights too


def test_gates_at_zero_and_one_draw_deterministically_through_the_layer():
    """Through the parametrised fc2 in training mode: gates exactly 1 or 0 make z = g, so the gradients
    of out.sum() are sum_b h_b * z for the weights and sum_b h_b * w for the gates."""
    pruner, model = _xor_pruner()
    _start_gated(pruner, model)
    fc2_gate = _gates(model)[1]
    with torch.no_grad():
        fc2_gate.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]]))
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.5, 0.5, 0.5, 0.5]])
    model.train()
    model.fc2(h).sum().backward()
    column = h.sum(0)  # dL/d(wz)_j = sum_b h_bj = [1.5, 2.5, 3.5, 4.5, 5.5]
    assert model.fc2.parametrizations.weight.original.grad.tolist() == [[1.5, 0.0, 3.5, 0.0, 5.5]]
    assert fc2_gate.grad.tolist() == (column * FC2).tolist() == [[1.5, -5.0, 10.5, -18.0, 27.5]]


def test_the_draw_comes_from_the_global_generator_and_eval_uses_the_expected_weight():
    pruner, model = _xor_pruner()
    _start_gated(pruner, model)
    gate = _gates(model)[0]
    with torch.no_grad():
        gate.copy_(torch.linspace(0.1, 0.9, 10).view(5, 2))
    model.train()
    torch.manual_seed(123)
    trained = model.fc1.weight.detach().clone()
    torch.manual_seed(123)
    expected = FC1 * torch.bernoulli(gate.detach())
    assert torch.equal(trained, expected)
    assert 0 < int((trained == 0).sum()) < 10  # a real draw: some weights dropped, some kept
    torch.manual_seed(123)
    assert torch.equal(gated_weight(FC1, gate.detach()), expected)
    # Eval mode: w * g, and no draw (the generator is left where it was).
    model.eval()
    state = torch.get_rng_state()
    torch.testing.assert_close(model.fc1.weight, FC1 * gate.detach())
    assert torch.equal(torch.get_rng_state(), state)


def test_dense_and_frozen_before_the_gated_phase():
    pruner, model = _xor_pruner()
    assert torch.equal(model.fc1.weight, FC1)  # pretrain phase: the parametrisation returns w
    assert all(not g.requires_grad for g in _gates(model)) and pruner.penalty() is None
    model(torch.ones(3, 2)).sum().backward()
    assert all(g.grad is None for g in _gates(model))


# -- 2. the regulariser --------------------------------------------------------------------------
def test_regulariser_value_and_gradient_on_known_numbers():
    g = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], requires_grad=True)
    value = gate_regulariser(g, 0.3, 0.2)
    # 0.3 * (0 + 0.1875 + 0.25 + 0.1875 + 0) + 0.2 * 2.5 = 0.1875 + 0.5
    assert value.item() == pytest.approx(0.6875, rel=1e-7)
    value.backward()
    # d/dg = lambda1 (1 - 2g) + lambda2
    assert g.grad.tolist() == pytest.approx([0.5, 0.35, 0.2, 0.05, -0.1], rel=1e-6)


@pytest.mark.parametrize("reduction, divisor", [("mean", 15), ("sum", 1)])
def test_penalty_over_the_network(reduction, divisor):
    pruner, model = _xor_pruner(lambda1=0.3, lambda2=0.2, weight_decay=0.1, reduction=reduction)
    _start_gated(pruner, model)
    fc1_gate, fc2_gate = _gates(model)
    with torch.no_grad():
        fc1_gate.copy_(torch.tensor([[0.0, 0.25], [0.5, 0.75], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]))
        fc2_gate.fill_(0.5)
    # Gates: 0, 0.25, 0.5, 0.75, 1 as above (0.6875) + five more at 1 (0.2 each) + five at 0.5 (0.3 * 0.25
    # + 0.2 * 0.5 = 0.175 each); weight decay 0.05 * (sum FC1^2 = 3.85 + sum FC2^2 = 55).
    gates_term = 0.6875 + 5 * 0.2 + 5 * 0.175
    expected = gates_term / divisor + 0.05 * (3.85 + 55.0)
    penalty = pruner.penalty()
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    assert fc1_gate.grad.flatten().tolist() == pytest.approx(
        [v / divisor for v in [0.5, 0.35, 0.2, 0.05, -0.1, -0.1, -0.1, -0.1, -0.1, -0.1]], rel=1e-6)
    assert fc2_gate.grad.flatten().tolist() == pytest.approx([0.2 / divisor] * 5, rel=1e-6)
    # The slab's weight decay: d/dw (0.1 / 2) w^2 = 0.1 w, not divided by the gate count.
    torch.testing.assert_close(model.fc2.parametrizations.weight.original.grad, 0.1 * FC2)
    assert SrinivasGates(SrinivasHparams(lambda1=0.0, lambda2=0.0), get_task("xor")).penalty() is None


# -- 3. the clip ---------------------------------------------------------------------------------
def test_gates_are_clipped_to_the_unit_interval_after_a_step():
    pruner, model = _xor_pruner()
    optimizer = _start_gated(pruner, model, lr=1.0)  # plain SGD, gate lr 1: a step of -grad
    fc1_gate, fc2_gate = _gates(model)
    with torch.no_grad():
        fc1_gate.fill_(0.5)
        fc2_gate.copy_(torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.5]]))
    fc1_gate.grad = torch.zeros_like(fc1_gate)
    fc2_gate.grad = torch.tensor([[-0.5, 0.25, 0.7, -0.25, 0.0]])
    optimizer.step()
    assert fc2_gate.flatten().tolist() == pytest.approx([1.4, -0.15, -0.2, 0.75, 0.5])  # left [0, 1] before the clip
    pruner.after_step(1)
    assert fc2_gate.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 0.75, 0.5])
    assert fc2_gate.min() >= 0 and fc2_gate.max() <= 1 and torch.equal(fc1_gate, torch.full_like(fc1_gate, 0.5))


def test_gates_get_their_own_parameter_group():
    pruner, model = _xor_pruner(gate_lr_factor=7.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    pruner.on_phase_start(Phase("gated", 10, 0.01), model, optimizer)
    assert [len(g["params"]) for g in optimizer.param_groups] == [4, 2]  # 2 weights + 2 biases; 2 gate tensors
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(g) for g in _gates(model)}
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.07) and optimizer.param_groups[1]["weight_decay"] == 0
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[0]["weight_decay"] == 1e-4


# -- 4. the deployed mask ------------------------------------------------------------------------
def test_deployed_keeps_exactly_the_weights_whose_gate_exceeds_one_half():
    pruner, model = _xor_pruner()
    _start_gated(pruner, model)
    fc1_gate, fc2_gate = _gates(model)
    gates = torch.tensor([[0.0, 0.3], [0.5, 0.5000001], [0.51, 1.0], [0.49, 0.75], [1.0, 0.5]])
    with torch.no_grad():
        fc1_gate.copy_(gates)
        fc2_gate.copy_(torch.tensor([[1.0, 0.2, 0.6, 0.0, 0.5]]))
    kept = [[False, False], [False, True], [True, True], [False, True], [True, False]]
    assert pruner.masks(model)["fc1"].tolist() == kept
    assert keep_mask(torch.tensor([0.5]), 0.5).tolist() == [False]  # exactly 0.5 is pruned
    net = pruner.deployed(model)
    assert [type(m) for m in net.modules()] == [type(m) for m in get_task("xor").architecture().modules()]
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    assert net.fc1.weight.tolist() == [[0.0, 0.0], [0.0, FC1[1, 1].item()], [FC1[2, 0].item(), FC1[2, 1].item()],
                                       [0.0, FC1[3, 1].item()], [FC1[4, 0].item(), 0.0]]
    assert net.fc2.weight.tolist() == [[1.0, 0.0, 3.0, 0.0, 0.0]]
    assert not (torch.signbit(net.fc1.weight) & (net.fc1.weight == 0)).any()  # +0.0, never -0.0
    assert torch.equal(net.fc1.bias, model.fc1.bias) and torch.equal(net.fc2.bias, model.fc2.bias)
    assert measure_compression(net).weights_nonzero == 5 + 2
    torch.testing.assert_close(pruner.scores(model)["fc1"], gates - 0.5)
    # deploy_threshold moves the cut.
    pruner.hp.deploy_threshold = 0.25
    assert int(pruner.masks(model)["fc1"].sum()) == 9
    assert measure_compression(pruner.deployed(model)).weights_nonzero == 9 + 3


def test_pretrained_network_deploys_dense():
    pruner, model = _xor_pruner()
    net = pruner.deployed(model)
    assert torch.equal(net.fc1.weight, FC1) and torch.equal(net.fc2.weight, FC2)


def test_conv_layers_of_lenet5_are_gated_per_weight():
    task = get_task("lenet5")
    pruner = SrinivasGates(SrinivasHparams(), task)
    model = pruner.attach(task.build_model(0))
    _start_gated(pruner, model)
    conv1 = model.conv1.parametrizations.weight
    assert conv1[0].gate.shape == conv1.original.shape == (20, 1, 5, 5) and pruner.gate_count == 430_500
    with torch.no_grad():
        conv1[0].gate.view(-1)[:100] = 0.0
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    assert conv1[0].gate.grad.shape == (20, 1, 5, 5) and model.fc1.parametrizations.weight[0].gate.grad is not None
    assert (conv1.original.grad.view(-1)[:100] == 0).all()  # z = 0: no gradient to the dropped weights
    net = pruner.deployed(model)
    assert measure_compression(net).weights_nonzero == 430_500 - 100


# -- schedule ------------------------------------------------------------------------------------
def test_phases_under_both_budgets():
    task = get_task("xor")
    lr = task.protocol.lr
    paper = SrinivasGates(SrinivasHparams(gated_lr_factor=0.5), task, "paper").phases(task.protocol)
    assert [(p.name, p.iterations) for p in paper] == [("pretrain", 10_000), ("gated", 14_000)]
    assert [p.lr for p in paper] == pytest.approx([lr, 0.5 * lr])
    equal = SrinivasGates(SrinivasHparams(), task, "equal")
    for total, split in [(10_000, (4_167, 5_833)), (300, (125, 175)), (2, (1, 1))]:
        phases = equal.phases(task.protocol.with_overrides(iterations=total))
        assert tuple(p.iterations for p in phases) == split and sum(split) == total
    with pytest.raises(ValueError, match="at least 2"):
        equal.phases(task.protocol.with_overrides(iterations=1))


def test_validation():
    for bad in (dict(gate_init=0.5), dict(gate_init=1.1), dict(lambda1=-1.0), dict(lambda2=-0.1),
                dict(weight_decay=-1.0), dict(gate_lr_factor=0.0), dict(deploy_threshold=1.0),
                dict(deploy_threshold=0.95, gate_init=0.9), dict(deploy_threshold=-0.1),
                dict(pretrain_iterations=0), dict(gated_iterations=0), dict(gated_lr_factor=0.0),
                dict(reduction="max"), dict(lambda1=float("nan"))):
        with pytest.raises(ValueError):
            SrinivasHparams(**bad).validate()
    assert SrinivasGates.provenance == "reconstruction" and SrinivasGates.trained_network_differs
    assert srinivas.SrinivasGates.name == "srinivas"


# -- 5. end to end on XOR ------------------------------------------------------------------------
def test_xor_run_prunes_part_of_the_weights(store, tmp_path):
    spec = make_spec("xor", "srinivas", seed=0, hparams=XOR_OVERRIDES, iterations=300, eval_every=100)
    seen: list[dict] = []

    def check(pruner, model, data) -> dict:  # noqa: ARG001
        net = pruner.deployed(model)
        masks = pruner.masks(model)
        gates = pruner.gates(model)
        for name, mask in masks.items():  # kept weights carry exactly their trained value; the rest are 0
            weight = model.get_submodule(name).parametrizations.weight.original.detach()
            assert torch.equal(net.get_submodule(name).weight, torch.where(mask, weight, torch.zeros_like(weight)))
        record = {"kept": sum(int(m.sum()) for m in masks.values()), "active": pruner.active,
                  "gates_in_unit_interval": all(bool(((g >= 0) & (g <= 1)).all()) for g in gates.values())}
        seen.append(record)
        return record

    result = train(spec, store, tmp_path, device="cpu", observer=Measure(check))
    assert result.status == "finished"
    points = store.trajectory(result.run_id)
    assert [p["phase"] for p in points] == ["pretrain", "gated", "gated"]  # 125 pretrain steps, then gated
    assert [r["active"] for r in seen] == [False, True, True] and all(r["gates_in_unit_interval"] for r in seen)
    for point, record in zip(points, seen, strict=True):
        assert point["weights_nonzero"] == record["kept"] and "trained_accuracy" in point
    assert points[0]["weights_nonzero"] == 15  # dense while pretraining
    assert 0 < result.final["weights_nonzero"] < 15, "srinivas should prune part of XOR's 15 weights"
    assert result.final["accuracy"] > 0.9


def test_a_stopped_run_continues_bit_for_bit_in_the_gated_phase(stop_at, timeless, tmp_path):
    """The Bernoulli draws come from the checkpointed global generator: stopped at step 170 (checkpoint at
    150, inside the gated phase) and continued, the run is the one that never stopped."""
    spec = make_spec("xor", "srinivas", seed=0, hparams=XOR_OVERRIDES, iterations=200, eval_every=50)

    def digest(pruner, model, data) -> dict:  # noqa: ARG001
        return {"gates": [g.flatten().tolist() for g in pruner.gates(model).values()],
                "state": pruner.state_dict()}

    straight = ResultStore(tmp_path / "straight.sqlite")
    train(spec, straight, tmp_path, device="cpu", observer=Measure(digest), checkpoint_seconds=None)
    stopped = ResultStore(tmp_path / "stopped.sqlite")
    with pytest.raises(KeyboardInterrupt):
        train(spec, stopped, tmp_path, device="cpu", observer=Observers(Measure(digest), stop_at(170)),
              checkpoint_seconds=0)
    assert checkpoint_path(checkpoint_dir(stopped.path), spec.run_id).exists()
    train(spec, stopped, tmp_path, device="cpu", observer=Measure(digest), checkpoint_seconds=0)

    expected = timeless(straight.trajectory(spec.run_id))
    assert [p["step"] for p in expected] == [50, 100, 150, 200]
    assert timeless(stopped.trajectory(spec.run_id)) == expected
    first, last = (json.loads(p["extra"]) if isinstance(p["extra"], str) else p["extra"] for p in (expected[0],
                                                                                                expected[-1]))
    assert first["state"] == {"active": False} and last["state"] == {"active": True}
    assert last["gates"] != first["gates"]  # the gates did move
    straight.close()
    stopped.close()


# -- 6. state round trip -------------------------------------------------------------------------
@pytest.mark.parametrize("gated", [False, True])
def test_state_round_trip_on_a_fresh_pruner(gated):
    pruner, model = _xor_pruner(lambda2=0.3)
    if gated:
        _start_gated(pruner, model)
        with torch.no_grad():
            _gates(model)[0].copy_(torch.linspace(0.0, 1.0, 10).view(5, 2))
            _gates(model)[1].copy_(torch.tensor([[0.2, 0.8, 0.4, 0.6, 0.55]]))
    state = pruner.state_dict()
    assert state == {"active": gated}

    task = get_task("xor")
    fresh = SrinivasGates(SrinivasHparams(lambda2=0.3), task, "paper")
    fresh_model = fresh.attach(task.build_model(1))
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and fresh.active == gated
    assert all(g.requires_grad == gated for g in _gates(fresh_model))
    for name, mask in pruner.masks(model).items():
        assert torch.equal(fresh.masks(fresh_model)[name], mask)
    for a, b in zip(pruner.deployed(model).state_dict().values(), fresh.deployed(fresh_model).state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    penalty, fresh_penalty = pruner.penalty(), fresh.penalty()
    assert (penalty is None and fresh_penalty is None) if not gated else torch.equal(penalty, fresh_penalty)
    if gated:  # the fresh pruner's gated forward draws like the original one
        model.train()
        fresh_model.train()
        torch.manual_seed(5)
        a = model.fc1.weight.detach().clone()
        torch.manual_seed(5)
        assert torch.equal(fresh_model.fc1.weight, a)
