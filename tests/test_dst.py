"""Dynamic sparse training: the unit-step mask per row, the long-tailed derivative H, both backward
terms against their closed forms, the exp(-t) penalty, the code's threshold reset, the deployed net."""

from __future__ import annotations

import math

import pytest
import torch
from prunebench.methods.dst import (
    DSTHparams,
    DynamicSparseTraining,
    TrainableMask,
    long_tailed_derivative,
    masked_weight,
    unit_step,
)
from torch import nn
from torch.nn.utils import parametrize

from prunebench.harness import train
from prunebench.metrics import measure_compression
from prunebench.observers import Measure
from prunebench.registry import get_task
from prunebench.request import make_spec


def explicit_h(x: torch.Tensor) -> torch.Tensor:
    """H(x) written out piece by piece (independent of the module's torch.where form)."""
    a = x.abs()
    peak = (a <= 0.4).to(x.dtype)
    tail = ((a > 0.4) & (a <= 1.0)).to(x.dtype)
    return peak * (2 - 4 * a) + tail * 0.4


def _pruner(task: str = "xor", **hp) -> DynamicSparseTraining:
    return DynamicSparseTraining(DSTHparams(**hp), get_task(task))


# -- forward -------------------------------------------------------------------------------------
def test_forward_mask_is_unit_step_of_abs_weight_minus_row_threshold():
    w = torch.tensor([[0.30, -0.10, 0.05, -0.70],
                      [0.02, -0.02, 0.00, 0.50],
                      [0.25, -0.25, 0.40, 0.10]])
    t = torch.tensor([0.2, -0.01, 0.25])
    # row 0: |w| - 0.2 = 0.1, -0.1, -0.15, 0.5; row 1 (t < 0): everything kept, even w = 0;
    # row 2: |w| = t is not > t, pruned.
    expected_mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    mask = unit_step(w.abs() - t.view(-1, 1))
    assert torch.equal(mask, expected_mask)
    assert torch.equal(masked_weight(w, t), w * expected_mask)


def test_conv_layer_has_one_threshold_per_filter():
    pruner = _pruner("lenet5")
    model = pruner.attach(get_task("lenet5").build_model(0))
    assert [tuple(pruner.threshold_of(m).shape) for _, m in pruner.layers] == [(20,), (50,), (500,), (10,)]
    assert all(float(pruner.threshold_of(m).detach().abs().sum()) == 0.0 for _, m in pruner.layers)  # init 0
    conv = model.conv2
    w = pruner.weight_of(conv)
    with torch.no_grad():
        threshold = pruner.threshold_of(conv)
        threshold[3] = 10.0  # filter 3 fully pruned
        threshold[7] = float(w[7].abs().flatten().median())  # filter 7 about half pruned
    mask = pruner.mask_of(conv)
    assert mask.shape == w.shape
    assert mask[3].sum() == 0
    assert torch.equal(mask[7], (w[7].abs() > threshold[7]).float()) and 0 < mask[7].sum() < mask[7].numel()
    others = [i for i in range(50) if i not in (3, 7)]
    assert torch.equal(mask[others], (w[others] != 0).float())  # t = 0: every non-zero weight kept
    assert torch.equal(conv.weight, w * mask)  # the layer computes with W * M
    assert not parametrize.is_parametrized(conv, "bias")


# -- the long-tailed derivative ------------------------------------------------------------------
@pytest.mark.parametrize("x,h", [(0.0, 2.0), (0.2, 1.2), (-0.2, 1.2), (0.4, 0.4), (0.5, 0.4), (-0.5, 0.4),
                                 (1.0, 0.4), (-1.0, 0.4), (1.5, 0.0), (-3.0, 0.0)])
def test_long_tailed_derivative_piecewise_values(x, h):
    xt = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    assert long_tailed_derivative(xt.detach()).item() == pytest.approx(h, abs=1e-12)
    unit_step(xt).sum().backward()  # the step's backward is H
    assert xt.grad.item() == pytest.approx(h, abs=1e-12)


# -- backward ------------------------------------------------------------------------------------
def test_backward_by_hand_on_one_row():
    w = torch.tensor([[0.3, -0.1, 0.05, -0.7]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    (masked_weight(w, t) * g).sum().backward()
    # Q = 0.1, -0.1, -0.15, 0.5; M = 1, 0, 0, 1; H = 1.6, 1.6, 1.4, 0.4.
    # dL/dW = g M + g |W| H: 1 + 0.48, 0 + 0.32, 0 - 0.07, 0.5 + 0.14 (masked weights get g |W| H).
    torch.testing.assert_close(w.grad, torch.tensor([[1.48, 0.32, -0.07, 0.64]], dtype=torch.float64))
    # dL/dt = -sum g W H = -(0.48 - 0.32 - 0.07 - 0.14) = 0.05
    torch.testing.assert_close(t.grad, torch.tensor([0.05], dtype=torch.float64))


@pytest.mark.parametrize("shape", [(6, 9), (4, 3, 2, 2)])
def test_backward_matches_closed_forms(shape):
    gen = torch.Generator().manual_seed(0)
    w = (0.6 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()
    t = (0.4 * torch.randn(shape[0], generator=gen, dtype=torch.float64)).requires_grad_()
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    (masked_weight(w, t) * g).sum().backward()

    wd, td = w.detach(), t.detach().view(-1, *([1] * (len(shape) - 1)))
    q = wd.abs() - td
    m = (q > 0).to(wd.dtype)
    h = explicit_h(q)
    # Spread of Q over all three pieces of H, and both kept and masked weights.
    assert (q.abs() <= 0.4).any() and ((q.abs() > 0.4) & (q.abs() <= 1)).any() and (q.abs() > 1).any()
    assert 0 < m.sum() < m.numel()
    torch.testing.assert_close(w.grad, g * m + g * wd.abs() * h, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(t.grad, -(g * wd * h).flatten(1).sum(1), rtol=1e-12, atol=1e-14)
    structure = (g * wd.abs() * h)[m == 0]
    assert (structure != 0).any() and torch.equal(w.grad[m == 0], structure)


def test_gradients_reach_weights_and_thresholds_through_the_parametrised_layer():
    pruner = _pruner("xor")
    model = pruner.attach(get_task("xor").build_model(0))
    params = {id(p) for p in model.parameters()}
    assert all(id(pruner.threshold_of(m)) in params for _, m in pruner.layers)  # the optimizer sees t
    with torch.no_grad():
        pruner.threshold_of(model.fc1).fill_(0.5)
    x = torch.tensor([[0.1, 0.9], [1.0, 0.0], [0.8, 0.7]])
    model(x).sum().backward()
    w, t = pruner.weight_of(model.fc1), pruner.threshold_of(model.fc1)
    # Reference: the same net with fc1's weight as an explicit leaf W * M.
    wm = (w.detach() * pruner.mask_of(model.fc1)).requires_grad_()
    out = model.fc2(torch.sigmoid(nn.functional.linear(x, wm, model.fc1.bias)))
    out.sum().backward()
    g = wm.grad
    q = w.detach().abs() - t.detach().view(-1, 1)
    m, h = (q > 0).float(), explicit_h(q)
    torch.testing.assert_close(w.grad, g * m + g * w.detach().abs() * h)
    torch.testing.assert_close(t.grad, -(g * w.detach() * h).sum(1))


# -- penalty -------------------------------------------------------------------------------------
def test_penalty_is_alpha_times_summed_exp_minus_t():
    alpha = 3e-3
    pruner = _pruner("lenet300", alpha=alpha)
    model = pruner.attach(get_task("lenet300").build_model(0))
    # t = 0 everywhere: 300 + 100 + 10 thresholds, each exp(0) = 1, summed (not averaged).
    assert pruner.penalty().item() == pytest.approx(alpha * 410, rel=1e-6)
    with torch.no_grad():
        pruner.threshold_of(model.fc1).fill_(1.0)
        pruner.threshold_of(model.fc3)[:5] = -2.0
    expected = alpha * (300 * math.exp(-1) + 100 + 5 * math.exp(2) + 5)
    penalty = pruner.penalty()
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    t3 = pruner.threshold_of(model.fc3)
    torch.testing.assert_close(t3.grad, -alpha * torch.exp(-t3.detach()))
    assert _pruner("xor", alpha=0.0).penalty() is None


# -- the code's safety valve ---------------------------------------------------------------------
def _reset_fixture(keep: int, **hp) -> tuple[DynamicSparseTraining, nn.Module]:
    """A 10x10 layer (100 weights, |w| = 0.01 ... 1.00) keeping exactly `keep` weights, plus a 5x10
    layer keeping everything."""
    pruner = _pruner("xor", **hp)
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 5))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1, 101, dtype=torch.float32).view(10, 10) / 100)
        model[1].weight.fill_(0.5)
    pruner.attach(model)
    with torch.no_grad():
        t = pruner.threshold_of(model[0])
        t.fill_(5.0)
        t[9] = 1.0 - (keep - 0.5) / 100  # row 9 holds 0.91 ... 1.00: keeps its `keep` largest
    assert int(pruner.mask_of(model[0]).sum()) == keep
    return pruner, model


def test_threshold_reset_is_off_by_default():
    assert DSTHparams().threshold_reset is False
    pruner, model = _reset_fixture(keep=1)
    before = [pruner.threshold_of(m).detach().clone() for _, m in pruner.layers]
    pruner.after_step(1)
    assert all(torch.equal(b, pruner.threshold_of(m)) for b, (_, m) in zip(before, pruner.layers, strict=True))
    assert pruner.resets == []


@pytest.mark.parametrize("keep,reset", [(0, True), (1, True), (2, False)])
def test_threshold_reset_when_keep_ratio_at_most_one_percent(keep, reset):
    pruner, model = _reset_fixture(keep=keep, threshold_reset=True)
    other = pruner.threshold_of(model[1]).detach().clone()
    before = pruner.threshold_of(model[0]).detach().clone()
    pruner.after_step(7)
    t = pruner.threshold_of(model[0])
    if reset:  # keep ratio 0% or 1% <= 1%: every threshold of the layer back to 0
        assert torch.equal(t, torch.zeros(10)) and pruner.resets == [(7, "0")]
        assert int(pruner.mask_of(model[0]).sum()) == 100
    else:  # 2% > 1%: untouched
        assert torch.equal(t, before) and pruner.resets == []
    assert torch.equal(pruner.threshold_of(model[1]), other)  # the healthy layer is never reset


# -- deployed network and scores -----------------------------------------------------------------
def test_deployed_is_plain_with_the_masks_nonzeros(store, tmp_path):
    spec = make_spec("xor", "dst", seed=0, hparams={"alpha": 1e-2}, iterations=300, eval_every=100)
    task = spec.task
    plain_types = [type(m) for m in task.architecture().modules()]
    seen: list[tuple[int, int]] = []

    def check(pruner, model, data) -> dict:  # noqa: ARG001
        net = pruner.deployed(model)
        assert [type(m) for m in net.modules()] == plain_types
        assert not any(parametrize.is_parametrized(m) for m in net.modules())
        kept = 0
        for name, module in pruner.layers:
            mask = pruner.mask_of(module)
            deployed_weight = net.get_submodule(name).weight
            assert torch.equal(deployed_weight, pruner.weight_of(module).detach() * mask)
            assert torch.equal(deployed_weight, module.weight.detach())  # what the model computes with
            assert torch.equal(net.get_submodule(name).bias, module.bias.detach())  # biases not masked
            kept += int(mask.sum())
        nonzero = measure_compression(net).weights_nonzero
        seen.append((nonzero, kept))
        return {"kept": kept}

    result = train(spec, store, tmp_path, device="cpu", observer=Measure(check))
    assert result.status == "finished" and len(seen) == 3
    assert all(nonzero == kept for nonzero, kept in seen)
    assert 0 < result.final["weights_nonzero"] == seen[-1][0] < 15


def test_scores_are_positive_exactly_where_kept():
    pruner = _pruner("xor")
    model = pruner.attach(get_task("xor").build_model(0))
    with torch.no_grad():
        pruner.threshold_of(model.fc1).copy_(torch.tensor([0.0, 0.5, 1.0, 2.0, -1.0]))
    scores = pruner.scores(model)
    for name, module in pruner.layers:
        w, t = pruner.weight_of(module).detach(), pruner.threshold_of(module).detach()
        torch.testing.assert_close(scores[name], w.abs() - t.view(-1, 1))
        assert torch.equal((scores[name] > 0).float(), pruner.mask_of(module))


def test_trainable_mask_parametrisation_starts_at_zero_threshold():
    w = torch.randn(4, 3)
    mask = TrainableMask(w)
    assert torch.equal(mask.threshold, torch.zeros(4)) and isinstance(mask.threshold, nn.Parameter)
    assert torch.equal(mask(w), w)


def test_hyperparameter_ranges_rejected():
    for bad in (dict(alpha=-1e-4), dict(reset_keep_ratio=-0.1), dict(reset_keep_ratio=1.0),
                dict(alpha=float("nan"))):
        with pytest.raises(ValueError):
            DSTHparams(**bad).validate()
    DSTHparams(alpha=0.0, threshold_reset=True, reset_keep_ratio=0.0).validate()


# -- the fused path (issue 18) -------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(300, 784), (6, 9), (20, 6, 5, 5)])
def test_fused_path_equals_the_plain_formulas(shape):
    """`DSTMasked` (one compiled pass each way for large layers, eager for small) against autograd
    through `masked_weight`: the same output exactly, the same gradients up to float32 summation order."""
    from prunebench.methods.dst import DSTMasked

    gen = torch.Generator().manual_seed(1)
    w = (0.6 * torch.randn(shape, generator=gen)).requires_grad_()
    t = (0.4 * torch.randn(shape[0], generator=gen)).requires_grad_()
    g = torch.randn(shape, generator=gen)
    plain = masked_weight(w, t)
    (plain * g).sum().backward()
    plain_grads = w.grad.clone(), t.grad.clone()
    w.grad = t.grad = None
    fast = DSTMasked.apply(w, t)
    (fast * g).sum().backward()
    assert torch.equal(fast, plain)
    torch.testing.assert_close(w.grad, plain_grads[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(t.grad, plain_grads[1], rtol=1e-5, atol=1e-5)
    assert (w.grad != 0).sum() > (fast != 0).sum()  # the structure gradient reaches masked weights too
