"""Learned threshold pruning: soft and hard pruning on hand-made tensors, the gradients LTP keeps (against
the hand formulas and against autograd of the full formula), the soft L0 penalty, the temperature, the
schedule under both budgets, frozen thresholds while pretraining, and the deployed network on XOR."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import xor_weights
from prunebench.methods.ltp import (
    LearnedThresholdPruning,
    LTPHparams,
    LTPSoftPrune,
    hard_mask,
    magnitude_variance,
    soft_l0,
    soft_prune,
    soft_prune_exact,
)
from torch import nn
from torch.nn.utils import parametrize

from prunebench.harness import train
from prunebench.metrics import measure_compression
from prunebench.observers import Measure
from prunebench.protocol import Phase
from prunebench.registry import get_task
from prunebench.request import make_spec

# Hand-made layer: w^2 = 0, 0.01, 0.04, 0.09, 0.25, 0.25, 0.36, 1.0 (0.5^2 = 0.25 exactly in binary).
W = torch.tensor([0.0, 0.1, -0.2, 0.3, 0.5, -0.5, -0.6, 1.0], dtype=torch.float64)
TAU = 0.25
T = 0.1
# Upstream gradient dL/dv, one value per weight.
G = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.25, -0.75], dtype=torch.float64)
# Overrides that make LTP prune part of the 15 XOR weights within 300 iterations (also used by test_deployed).
XOR_OVERRIDES = {"lam": 0.1}


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def by_hand() -> tuple[list[float], list[float], list[float], float]:
    """v, dL/dw as LTP keeps it, dL/dw in full, and dL/dtau, element by element with math."""
    v, d_kept, d_full, d_tau = [], [], [], 0.0
    for w, g in zip(W.tolist(), G.tolist(), strict=True):
        s = sig((w * w - TAU) / T)
        v.append(w * s)
        d_kept.append(g * s)
        d_full.append(g * (s + 2 * w * w / T * s * (1 - s)))
        d_tau += g * (-(w / T) * s * (1 - s))
    return v, d_kept, d_full, d_tau


def test_soft_pruning_values_follow_the_formula():
    v, _, _, _ = by_hand()
    out = soft_prune(W, torch.tensor(TAU, dtype=torch.float64), T)
    assert out.tolist() == pytest.approx(v, rel=1e-12, abs=1e-15)
    # w^2 == tau: exactly half the weight survives in training.
    assert out[4].item() == pytest.approx(0.25) and out[5].item() == pytest.approx(-0.25)


def test_hard_mask_is_exactly_w2_greater_than_tau():
    # 0.5^2 == 0.25 == tau exactly: pruned (strict >). 0.5 + 1 ulp is kept.
    assert hard_mask(W, TAU).tolist() == [False, False, False, False, False, False, True, True]
    just_above = torch.nextafter(torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    assert hard_mask(just_above.view(1), TAU).tolist() == [True]
    # tau = 0 prunes only exact zeros.
    assert hard_mask(W, 0.0).tolist() == [False] + [True] * 7
    assert hard_mask(W, torch.tensor(0.05, dtype=torch.float64)).tolist() == [False, False, False] + [True] * 5


def test_weight_gradient_is_the_sigmoid_only_not_the_full_derivative():
    _, d_kept, d_full, _ = by_hand()
    w = W.clone().requires_grad_()
    (soft_prune(w, torch.tensor(TAU, dtype=torch.float64), T) * G).sum().backward()
    assert w.grad.tolist() == pytest.approx(d_kept, rel=1e-12, abs=1e-15)
    # Autograd of the full formula gives the full derivative, sigma + (2 w^2/T) sigma (1 - sigma) ...
    w_full = W.clone().requires_grad_()
    (soft_prune_exact(w_full, torch.tensor(TAU, dtype=torch.float64), T) * G).sum().backward()
    assert w_full.grad.tolist() == pytest.approx(d_full, rel=1e-12, abs=1e-15)
    # ... which differs wherever a non-zero weight sits in the sigmoid's transition band.
    differs = (w.grad - w_full.grad).abs() > 1e-6
    assert differs[1:].all() and not differs[0]


def test_threshold_gradient_follows_the_formula():
    _, _, _, d_tau = by_hand()
    tau = torch.tensor(TAU, dtype=torch.float64, requires_grad=True)
    (soft_prune(W, tau, T) * G).sum().backward()
    assert tau.grad.item() == pytest.approx(d_tau, rel=1e-12)
    # The tau path is exact: autograd of the full formula agrees.
    tau_full = torch.tensor(TAU, dtype=torch.float64, requires_grad=True)
    (soft_prune_exact(W, tau_full, T) * G).sum().backward()
    assert tau_full.grad.item() == pytest.approx(d_tau, rel=1e-12)


def test_custom_function_equals_the_detach_trick():
    gen = torch.Generator().manual_seed(0)
    w = (0.3 * torch.randn(20, 30, generator=gen, dtype=torch.float64)).requires_grad_()
    tau = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(20, 30, generator=gen, dtype=torch.float64)
    (LTPSoftPrune.apply(w, tau, 0.02) * upstream).sum().backward()
    gw, gt = w.grad.clone(), tau.grad.clone()
    w.grad = tau.grad = None
    (w * torch.sigmoid((w.detach() ** 2 - tau) / 0.02) * upstream).sum().backward()
    torch.testing.assert_close(gw, w.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gt, tau.grad, rtol=1e-12, atol=1e-14)


def test_soft_l0_value():
    expected = sum(sig((w * w - TAU) / T) for w in W.tolist())
    assert soft_l0(W, torch.tensor(TAU, dtype=torch.float64), T).item() == pytest.approx(expected, rel=1e-12)


# XOR's fc1 (5x2) and fc2 (1x5): 15 weights.
FC1, FC2 = xor_weights()


def _xor_pruner(budget: str = "paper", **hp) -> tuple[LearnedThresholdPruning, nn.Module]:
    task = get_task("xor")
    pruner = LearnedThresholdPruning(LTPHparams(**hp), task, budget)
    model = pruner.attach(task.build_model(0))
    with torch.no_grad():
        model.fc1.parametrizations.weight.original.copy_(FC1)
        model.fc2.parametrizations.weight.original.copy_(FC2)
    return pruner, model


def _start_prune(pruner: LearnedThresholdPruning, model: nn.Module, lr: float = 0.0) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    pruner.on_phase_start(Phase("prune", 10, lr), model, optimizer)
    return optimizer


def _thresholds(model: nn.Module) -> list[nn.Module]:
    return [model.fc1.parametrizations.weight[0], model.fc2.parametrizations.weight[0]]


def test_temperature_is_t0_times_the_pretrained_variance_of_magnitudes():
    # |fc1| = 0.1 ... 1.0: mean 0.55, mean of squares 0.385, Var(|w|) = 0.0825.
    # |fc2| = 1 ... 5: mean 3, mean of squares 11, Var(|w|) = 2.
    assert magnitude_variance(FC1) == pytest.approx(0.0825, rel=1e-6)
    assert magnitude_variance(torch.tensor([0.5, -0.5])) == pytest.approx(0.25)  # zero variance: mean(w^2)
    pruner, model = _xor_pruner(t0=0.5)
    _start_prune(pruner, model)
    fc1, fc2 = _thresholds(model)
    assert (fc1.unit, fc1.temperature) == (pytest.approx(0.0825, rel=1e-6), pytest.approx(0.04125, rel=1e-6))
    assert (fc2.unit, fc2.temperature) == (pytest.approx(2.0), pytest.approx(1.0))
    # Fixed after the start: moving the weights changes neither.
    with torch.no_grad():
        model.fc1.parametrizations.weight.original.mul_(3.0)
    pruner.after_step(1)
    assert fc1.temperature == pytest.approx(0.04125, rel=1e-6)


def test_penalty_is_lambda_times_soft_count_over_the_weight_count():
    pruner, model = _xor_pruner(lam=0.3, t0=2.0)
    assert pruner.penalty() is None  # pretrain phase: no penalty
    _start_prune(pruner, model)
    fc1, fc2 = _thresholds(model)
    with torch.no_grad():
        fc1.s.fill_(2.0)  # tau = 0.165, T = 0.165
        fc2.s.fill_(4.0)  # tau = 8, T = 4
    count = sum(sig((w * w - 0.165) / 0.165) for w in FC1.flatten().tolist())
    count += sum(sig((w * w - 8.0) / 4.0) for w in FC2.flatten().tolist())
    assert pruner.plain_penalty().item() == pytest.approx(0.3 * count / 15, rel=1e-5)
    assert LearnedThresholdPruning(LTPHparams(lam=0.0), get_task("xor")).penalty() is None


def test_penalty_gradient_reaches_weights_and_thresholds_in_full():
    pruner, model = _xor_pruner(lam=0.3, t0=2.0)
    _start_prune(pruner, model)
    fc1, _ = _thresholds(model)
    with torch.no_grad():
        fc1.s.fill_(2.0)  # tau = 0.165, T = 0.165
    pruner.plain_penalty().backward()
    tau, temp, scale = 0.165, 0.165, 0.3 / 15
    band = [sig((w * w - tau) / temp) * (1 - sig((w * w - tau) / temp)) for w in FC1.flatten().tolist()]
    # d/dw sigmoid((w^2 - tau)/T) = (2w/T) sigma (1 - sigma); d/ds = u * d/dtau = -(u/T) sum sigma (1 - sigma).
    d_weight = [scale * 2 * w / temp * b for w, b in zip(FC1.flatten().tolist(), band, strict=True)]
    grad = model.fc1.parametrizations.weight.original.grad.flatten().tolist()
    assert grad == pytest.approx(d_weight, rel=1e-4)
    assert fc1.s.grad.item() == pytest.approx(-scale * 0.0825 / temp * sum(band), rel=1e-4)


def test_forward_soft_deployed_hard_and_scores():
    pruner, model = _xor_pruner(t0=1.0)
    _start_prune(pruner, model)
    fc1, _ = _thresholds(model)
    with torch.no_grad():
        fc1.s.fill_(0.26 / 0.0825)  # tau = 0.26: |w| <= 0.5 pruned
    tau = fc1.tau().item()
    assert tau == pytest.approx(0.26)
    expected = FC1 * torch.sigmoid((FC1 ** 2 - tau) / 0.0825)
    torch.testing.assert_close(model.fc1.weight, expected)
    net = pruner.deployed(model)
    kept = FC1.square() > tau
    assert torch.equal(net.fc1.weight, FC1 * kept)
    assert int(kept.sum()) == 5 and pruner.masks(model)["fc1"].tolist() == kept.tolist()
    torch.testing.assert_close(pruner.scores(model)["fc1"], FC1 ** 2 - tau)
    assert torch.equal(net.fc2.weight, FC2)  # tau_fc2 = 0 prunes nothing


def test_thresholds_get_their_own_parameter_group():
    pruner, model = _xor_pruner(threshold_lr_factor=7.0)
    optimizer = _start_prune(pruner, model, lr=0.01)
    thresholds = {id(t.s) for t in _thresholds(model)}
    assert [len(g["params"]) for g in optimizer.param_groups] == [4, 2]  # 2 weights + 2 biases; 2 thresholds
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == thresholds
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[1]["lr"] == pytest.approx(0.07)


@pytest.mark.parametrize("nonnegative", [True, False])
def test_negative_thresholds_are_projected_to_zero(nonnegative):
    pruner, model = _xor_pruner(nonnegative_tau=nonnegative)
    _start_prune(pruner, model)
    fc1, fc2 = _thresholds(model)
    with torch.no_grad():
        fc1.s.fill_(-0.5)
        fc2.s.fill_(0.5)
    pruner.after_step(1)
    assert fc1.s.item() == (0.0 if nonnegative else -0.5) and fc2.s.item() == 0.5


def test_phases_under_both_budgets():
    task = get_task("xor")
    paper = LearnedThresholdPruning(LTPHparams(finetune_lr_factor=0.5), task, "paper").phases(task.protocol)
    lr = task.protocol.lr
    assert [(p.name, p.iterations) for p in paper] == [("pretrain", 10_000), ("prune", 14_000)]
    assert [p.lr for p in paper] == pytest.approx([lr, 0.5 * lr])
    equal = LearnedThresholdPruning(LTPHparams(), task, "equal")
    for total, split in [(10_000, (4_167, 5_833)), (300, (125, 175)), (2, (1, 1)), (24, (10, 14))]:
        phases = equal.phases(task.protocol.with_overrides(iterations=total))
        assert tuple(p.iterations for p in phases) == split and sum(split) == total
    with pytest.raises(ValueError, match="at least 2"):
        equal.phases(task.protocol.with_overrides(iterations=1))


def test_thresholds_neither_move_nor_apply_while_pretraining(store, tmp_path):
    """Through the harness: at every pretrain evaluation the network is dense, each threshold has no
    gradient and its value is the one it started with; in the prune phase they move."""
    spec = make_spec("xor", "ltp", hparams={**XOR_OVERRIDES, "nonnegative_tau": False}, iterations=300,
                     eval_every=25)
    seen: list[dict] = []

    def record(pruner, model, data) -> dict:  # noqa: ARG001
        if not seen:  # the first evaluation: give s a value a moving threshold could not keep by chance
            with torch.no_grad():
                for t in _thresholds(model):
                    t.s.fill_(0.3)
        fc1, fc2 = _thresholds(model)
        seen.append({"s": [fc1.s.item(), fc2.s.item()], "grad": [t.s.grad for t in (fc1, fc2)],
                     "dense": all(torch.equal(m.weight, m.parametrizations.weight.original)
                                  for m in (model.fc1, model.fc2)),
                     "active": pruner.active})
        return {}

    result = train(spec, store, tmp_path, device="cpu", observer=Measure(record))
    assert result.status == "finished"
    pretrain, prune = seen[:5], seen[5:]  # 125 pretrain steps, evaluations at 25, 50, ..., 125
    assert seen[0]["s"] == pytest.approx([0.3, 0.3])
    assert all(p["s"] == seen[0]["s"] and p["grad"] == [None, None] and p["dense"] and not p["active"]
               for p in pretrain), pretrain
    assert all(p["active"] and not p["dense"] for p in prune)
    assert prune[-1]["s"] != seen[0]["s"] and all(g is not None for g in prune[-1]["grad"])


def test_deployed_is_the_plain_architecture_with_the_hard_mask_count(store, tmp_path):
    spec = make_spec("xor", "ltp", seed=0, hparams=XOR_OVERRIDES, iterations=300, eval_every=100)
    task = spec.task
    plain_types = [type(m) for m in task.architecture().modules()]
    seen: list[dict] = []

    def check(pruner, model, data) -> dict:  # noqa: ARG001
        net = pruner.deployed(model)
        assert [type(m) for m in net.modules()] == plain_types
        assert not any(parametrize.is_parametrized(m) for m in net.modules())
        masks = pruner.masks(model)
        for name, mask in masks.items():  # kept weights carry exactly their trained value
            weight = model.get_submodule(name).parametrizations.weight.original.detach()
            assert torch.equal(net.get_submodule(name).weight, weight * mask)
        record = {"measured": measure_compression(net).weights_nonzero,
                  "kept": sum(int(mask.sum()) for mask in masks.values())}
        seen.append(record)
        return record

    result = train(spec, store, tmp_path, device="cpu", observer=Measure(check))
    assert result.status == "finished" and len(seen) == 3
    points = store.trajectory(result.run_id)
    for point, record in zip(points, seen, strict=True):
        assert record["measured"] == record["kept"] == point["weights_nonzero"], record
        assert "trained_accuracy" in point  # soft network measured beside the deployed one
    assert 0 < result.final["weights_nonzero"] < 15, "ltp should prune part of XOR's 15 weights"


def test_conv_layers_of_lenet5():
    task = get_task("lenet5")
    pruner = LearnedThresholdPruning(LTPHparams(), task)
    model = pruner.attach(task.build_model(0))
    _start_prune(pruner, model)
    conv1 = model.conv1.parametrizations.weight
    with torch.no_grad():
        conv1[0].s.fill_(1.0)  # tau = Var(|w|): the smaller weights go
    w, t = conv1.original.detach(), conv1[0]
    torch.testing.assert_close(model.conv1.weight, w * torch.sigmoid((w * w - t.tau()) / t.temperature))
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert all(p.s.grad is not None and p.s.grad.shape == () for p in (t, model.fc1.parametrizations.weight[0]))
    net = pruner.deployed(model)
    assert [type(m) for m in net.modules()] == [type(m) for m in task.architecture().modules()]
    kept = pruner.masks(model)
    assert 0 < int(kept["conv1"].sum()) < 500 and int(kept["fc1"].sum()) == 400_000
    assert measure_compression(net).weights_nonzero == sum(int(m.sum()) for m in kept.values())


def test_validation():
    for bad in (dict(lam=-1.0), dict(t0=0.0), dict(threshold_lr_factor=0.0), dict(pretrain_iterations=0),
                dict(finetune_iterations=0), dict(finetune_lr_factor=-1.0)):
        with pytest.raises(ValueError):
            LTPHparams(**bad).validate()


@pytest.mark.parametrize("shape", [(300, 784), (4, 5)])
def test_fused_path_equals_soft_pruning_plus_the_penalty(shape):
    """`LTPFused` (compiled for the large layer, eager for the small one) against the plain path: autograd
    through `soft_prune` plus c * `soft_l0` as a loss term, c = lam / N."""
    from prunebench.methods.ltp import LTPFused

    gen = torch.Generator().manual_seed(2)
    w = (0.1 * torch.randn(shape, generator=gen)).requires_grad_()
    s = torch.tensor(0.6, requires_grad=True)
    unit, temperature, scale = 0.01, 0.004, 0.7
    g = torch.randn(shape, generator=gen)
    plain = soft_prune(w, unit * s, temperature)
    ((plain * g).sum() + scale * soft_l0(w, unit * s, temperature)).backward()
    expected = w.grad.clone(), s.grad.clone()
    w.grad = s.grad = None
    fast = LTPFused.apply(w, unit * s, torch.tensor(1 / temperature), torch.tensor(scale))
    (fast * g).sum().backward()
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-7)
    # The two terms of dL/dw reach ~10 here (1/T = 250) and cancel in places: float32 rounding of the terms.
    torch.testing.assert_close(w.grad, expected[0], rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(s.grad, expected[1], rtol=1e-4, atol=1e-6)
    assert w.grad.abs().max() > 1
    gate = torch.sigmoid((w.detach() ** 2 - unit * 0.6) / temperature)
    assert 0.05 < (gate * (1 - gate)).mean() < 0.25  # the penalty's gradient is not negligible here
