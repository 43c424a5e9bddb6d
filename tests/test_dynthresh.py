"""Dynamic thresholding: forward zeros, surrogate backward against autograd of Phi~, penalty, splicing."""

from __future__ import annotations

import math

import pytest
import torch
from prunebench.methods.dynthresh import (
    DTPruning,
    DynamicThresholding,
    DynThreshHparams,
    smooth_pruning,
    surrogate_grads,
)
from torch import nn

from prunebench.registry import get_task


def test_forward_exact_zeros_where_below_threshold():
    w = torch.tensor([-0.5, -0.2, -0.1, 0.0, 0.05, 0.1, 0.3])
    t = torch.full_like(w, 0.1)
    out = DTPruning.apply(w, t, 0.03)
    # |w| < t -> exactly 0; |w| >= t -> w unchanged (paper Eq. 1: pruned iff |w| < t).
    assert torch.equal(out, torch.tensor([-0.5, -0.2, -0.1, 0.0, 0.0, 0.1, 0.3]))
    assert (out[(w.abs() < t)] == 0).all()


@pytest.mark.parametrize("tau", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("t_shape", ["individual", "layer", "global"])
def test_backward_equals_autograd_of_smooth_function(tau, t_shape):
    gen = torch.Generator().manual_seed(1)
    w = (0.2 * torch.randn(30, 40, generator=gen, dtype=torch.float64)).requires_grad_()
    shape = {"individual": (30, 40), "layer": (1,), "global": (1,)}[t_shape]
    t = (0.05 + 0.1 * torch.rand(shape, generator=gen, dtype=torch.float64)).requires_grad_()
    upstream = torch.randn(30, 40, generator=gen, dtype=torch.float64)

    (DTPruning.apply(w, t, tau) * upstream).sum().backward()
    gw, gt = w.grad.clone(), t.grad.clone()
    w.grad = t.grad = None
    (smooth_pruning(w, t, tau) * upstream).sum().backward()
    torch.testing.assert_close(gw, w.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gt, t.grad, rtol=1e-10, atol=1e-12)


def test_surrogate_derivatives_by_hand_at_one_point():
    # w = 0.1, t = 0.05, tau = 0.1: the closed forms of METHODS.md with tau in them.
    w, t, tau = 0.1, 0.05, 0.1
    a, b = (w - t) / tau, (w + t) / tau
    dw = 0.5 * (math.erf(a) - math.erf(b) + 2) + w / (tau * math.sqrt(math.pi)) * (math.exp(-a * a) - math.exp(-b * b))
    dt = -w / (tau * math.sqrt(math.pi)) * (math.exp(-a * a) + math.exp(-b * b))
    gw, gt = surrogate_grads(torch.tensor([w], dtype=torch.float64), torch.tensor([t], dtype=torch.float64),
                             torch.ones(1, dtype=torch.float64), tau)
    assert gw.item() == pytest.approx(dw, rel=1e-12)
    assert gt.item() == pytest.approx(dt, rel=1e-12)
    assert dw > 0 and dt < 0  # paper sec. 3.4: dPhi~/dw > 0, dPhi~/dt opposite in sign to w


def _attached(scale: str, lam: float = 1e-3):
    task = get_task("lenet300")
    pruner = DynamicThresholding(DynThreshHparams(lam=lam, scale=scale), task)
    model = pruner.attach(task.build_model(0))
    return pruner, model


@pytest.mark.parametrize("scale,n_thresholds", [("individual", 266_200), ("layer", 3), ("global", 1)])
def test_penalty_value_and_gradient(scale, n_thresholds):
    lam = 1e-3
    pruner, model = _attached(scale, lam)
    params = {id(s): s for s, _ in pruner.threshold_params}
    assert sum(s.numel() for s in params.values()) == n_thresholds
    # s = -5 everywhere: L_p = -lam * N * log(sigmoid(-5)) whatever the scale (literal Eq. 3).
    expected = -lam * 266_200 * math.log(1 / (1 + math.exp(5)))
    penalty = pruner.plain_penalty()
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    # dL_p/ds = -lam * (1 - t) * (weights served by s)
    t0 = 1 / (1 + math.exp(5))
    for s, served in pruner.threshold_params:
        torch.testing.assert_close(s.grad, torch.full_like(s, -lam * (1 - t0) * served))


def test_threshold_gradient_reaches_s_through_the_sigmoid():
    pruner, model = _attached("layer", lam=0.0)
    x = torch.rand(8, 1, 28, 28)
    model(x).sum().backward()
    s = model.fc1.parametrizations.weight[0].s
    assert s.grad is not None and s.grad.shape == (1,) and s.grad.abs().item() > 0


def test_pruning_and_splicing_fig3():
    """Paper Fig. 3: a pruned weight whose loss gradient pushes its magnitude up grows past its
    threshold and is spliced back; a kept weight pushed down while t rises is pruned."""
    task = get_task("xor")

    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 1, bias=False)

        def forward(self, x):
            return self.fc(x)

    hp = DynThreshHparams(lam=0.0, tau=0.05, s_init=math.log(0.1 / 0.9))  # t = 0.1
    pruner = DynamicThresholding(hp, task)
    model = One()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[0.08, 0.3]]))  # w0 pruned (|w| < t), w1 kept
    pruner.attach(model)
    assert torch.equal(model.fc.weight, torch.tensor([[0.0, 0.3]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.tensor([[1.0, 1.0]])
    history = []
    for _ in range(200):
        # Loss wants w0 large (target 1.0 on the first input), w1 -> 0.
        loss = -model(torch.tensor([[1.0, 0.0]])).sum() + 5 * model(torch.tensor([[0.0, 1.0]])).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(model.fc.weight.detach()[0].clone())
    del x
    final = model.fc.weight.detach()[0]
    assert final[0] > pruner.threshold_of(model.fc)[0, 0] and final[0] != 0, "pruned weight was not spliced back"
    assert any(h[0] == 0 for h in history[:5]) and history[-1][0] != 0
    assert final[1] == 0, "weight pushed below its threshold was not pruned"


def test_scale_choices_and_ranges_rejected():
    for bad in (dict(lam=-1e-4), dict(tau=0.0), dict(tau=-1.0), dict(scale="row"), dict(t_max=0.0)):
        with pytest.raises(ValueError):
            DynThreshHparams(**bad).validate()


@pytest.mark.parametrize("lam", [0.0, 1e-3])
def test_fused_individual_path_equals_the_plain_formulas(lam, monkeypatch):
    """The fused path (one pass forward, one pass backward with the penalty's gradient in closed form,
    no penalty term in the loss) gives the plain path's outputs and gradients: DTPruning through
    autograd's sigmoid, plus autograd of -lam * sum(log t)."""
    task = get_task("lenet300")
    torch.manual_seed(0)
    x, y = torch.rand(32, 784), torch.randint(0, 10, (32,))
    grads = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("PRUNEBENCH_FUSED", fused)
        pruner = DynamicThresholding(DynThreshHparams(lam=lam, s_init=-3.0), task)
        model = pruner.attach(task.build_model(0))
        with torch.no_grad():  # thresholds spread around the weights' magnitudes
            for s, _ in pruner.threshold_params:
                s.copy_(torch.empty_like(s).uniform_(-6.0, -3.5, generator=torch.Generator().manual_seed(1)))
        loss = task.loss(model(x), y)
        penalty = pruner.penalty()
        assert (penalty is None) == (fused == "1" or lam == 0)
        (loss if penalty is None else loss + penalty).backward()
        grads[fused] = {name: p.grad.clone() for name, p in model.named_parameters()}
        grads[fused]["out"] = model(x).detach()
    assert grads["1"].keys() == grads["0"].keys()
    for name in grads["0"]:
        torch.testing.assert_close(grads["1"][name], grads["0"][name], rtol=1e-5, atol=1e-8, msg=name)


def test_erf_of_the_fused_path_is_within_float32_reach_of_erf():
    from prunebench.methods.dynthresh import erf_and_gaussian

    x = torch.linspace(-8, 8, 200_001, dtype=torch.float64)
    erf, gaussian = erf_and_gaussian(x.float())
    assert (erf.double() - torch.erf(x)).abs().max().item() < 1e-6  # A&S 7.1.26: 1.5e-7 exact, ~6e-7 in float32
    torch.testing.assert_close(gaussian.double(), torch.exp(-x * x), rtol=1e-6, atol=1e-7)
