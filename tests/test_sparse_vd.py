"""Sparse variational dropout: the KL approximation, local reparameterisation against Monte-Carlo
samples of the weights, the deployed mask log alpha < 3, the KL warm-up and the LR-schedule phases."""

from __future__ import annotations

import math

import pytest
import torch
from prunebench.methods.sparse_vd import (
    SparseVariationalDropout,
    SparseVDHparams,
    VariationalConv2d,
    VariationalLinear,
    kl_approximation,
    kl_weight,
)
from torch import nn
from torch.nn import functional as F

from prunebench.models import XorNet
from prunebench.registry import get_task


@pytest.mark.parametrize("log_alpha,kl", [
    # KL = k1 - k1 sigmoid(1.87320 + 1.48695 la) + 0.5 log(1 + e^-la), k1 = 0.63576, worked by hand:
    (-8.0, 4.635899),   # sigmoid(-10.0224) = 4.44e-5; 0.5 log(1 + e^8) = 4.000168
    (-2.0, 1.540533),   # sigmoid(-1.1007) = 0.249609; 0.5 log(1 + e^2) = 1.063464
    (0.0, 0.431239),    # sigmoid(1.8732) = 0.866828; 0.5 log 2 = 0.346574
    (1.0, 0.177970),    # sigmoid(3.36015) = 0.966436; 0.5 log(1 + e^-1) = 0.156632
    (3.0, 0.025420),    # sigmoid(6.33405) = 0.998228; 0.5 log(1 + e^-3) = 0.024294
    (8.0, 0.000168),    # sigmoid(13.7688) = 0.999999; 0.5 log(1 + e^-8) = 0.000168
])
def test_kl_approximation_by_hand(log_alpha, kl):
    assert kl_approximation(torch.tensor(log_alpha, dtype=torch.float64)).item() == pytest.approx(kl, abs=2e-6)


def test_kl_weight_warm_up():
    assert [kl_weight(e) for e in (0, 4, 5, 6, 12, 19, 20, 150)] == pytest.approx(
        [0, 0, 0, 1 / 15, 7 / 15, 14 / 15, 1, 1])


def _linear_layer(log_alpha_range=(-4.0, 1.5)) -> VariationalLinear:
    gen = torch.Generator().manual_seed(0)
    layer = VariationalLinear(nn.Linear(4, 3), train_clip=True)
    with torch.no_grad():
        layer.weight.copy_((0.3 + 0.5 * torch.rand(3, 4, generator=gen)) * torch.tensor([1.0, -1.0, 1.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        lo, hi = log_alpha_range
        target = lo + (hi - lo) * torch.rand(3, 4, generator=gen)
        layer.log_sigma2.copy_(target + torch.log(layer.weight ** 2))  # log alpha = target (below 3)
    return layer


def _compare(samples_lrt: torch.Tensor, samples_mc: torch.Tensor, n: int) -> None:
    """Means and variances of two sample sets agree within 5 standard errors."""
    mean_lrt, mean_mc = samples_lrt.mean(0), samples_mc.mean(0)
    var_lrt, var_mc = samples_lrt.var(0), samples_mc.var(0)
    se_mean = torch.sqrt((var_lrt + var_mc) / n)
    assert (torch.abs(mean_lrt - mean_mc) < 5 * se_mean).all(), (mean_lrt, mean_mc)
    se_var = torch.sqrt(2 / (n - 1) * (var_lrt ** 2 + var_mc ** 2))
    assert (torch.abs(var_lrt - var_mc) < 5 * se_var).all(), (var_lrt, var_mc)


def test_local_reparameterisation_linear_matches_sampled_weights():
    torch.manual_seed(1)
    layer = _linear_layer()
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3]])
    n = 40_000
    with torch.no_grad():
        mu, var = layer.moments(x)
        lrt = layer(x.expand(n, 4))  # training mode: one eps per example and output unit
        sigma = torch.exp(0.5 * layer.log_sigma2)
        weights = layer.weight + sigma * torch.randn(n, 3, 4)  # W ~ N(theta, sigma^2), one draw per sample
        mc = torch.einsum("j,sij->si", x[0], weights) + layer.bias
    # The analytic moments: mu = x theta^T + b, var = x^2 (sigma^2)^T.
    torch.testing.assert_close(mu[0], x[0] @ layer.weight.T + layer.bias)
    torch.testing.assert_close(var[0], (x[0] ** 2) @ (sigma ** 2).T, rtol=1e-5, atol=1e-9)
    _compare(lrt, mc, n)
    torch.testing.assert_close(mc.mean(0), mu[0], atol=5 * float(var.max().sqrt()) / math.sqrt(n), rtol=0)


def test_local_reparameterisation_conv_matches_sampled_weights():
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(3)
    layer = VariationalConv2d(nn.Conv2d(2, 3, 3, padding=1))
    with torch.no_grad():
        layer.weight.copy_(0.2 + 0.3 * torch.rand(3, 2, 3, 3, generator=gen))
        layer.weight.mul_(torch.where(torch.rand(3, 2, 3, 3, generator=gen) < 0.5, -1.0, 1.0))
        layer.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
        target = -3.0 + 4.0 * torch.rand(3, 2, 3, 3, generator=gen)
        layer.log_sigma2.copy_(target + torch.log(layer.weight ** 2))
    x = torch.randn(1, 2, 4, 4, generator=gen)
    n = 20_000
    with torch.no_grad():
        mu, var = layer.moments(x)
        lrt = layer(x.expand(n, 2, 4, 4))
        sigma = torch.exp(0.5 * layer.log_sigma2)
        weights = layer.weight + sigma * torch.randn(n, 3, 2, 3, 3)
        mc = F.conv2d(x, weights.reshape(n * 3, 2, 3, 3), padding=1).view(n, 3, 4, 4) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(mu, F.conv2d(x, layer.weight, layer.bias, padding=1))
    torch.testing.assert_close(var, F.conv2d(x ** 2, sigma ** 2, padding=1), rtol=1e-5, atol=1e-9)
    _compare(lrt, mc, n)


def test_train_clip_zeroes_dropped_weights_in_the_mean_only():
    layer = _linear_layer()
    with torch.no_grad():
        layer.log_sigma2[0, 0] = 5.0 + torch.log(layer.weight[0, 0] ** 2)  # log alpha = 5 >= 3
    x = torch.ones(1, 4)
    mu, var = layer.moments(x)
    theta = layer.weight.detach().clone()
    theta[0, 0] = 0
    torch.testing.assert_close(mu[0], theta.sum(1) + layer.bias.detach())
    sigma2 = torch.exp(layer.log_alpha().detach()) * layer.weight.detach() ** 2
    torch.testing.assert_close(var[0], sigma2.sum(1))
    assert sigma2[0, 0] > 0


def _xor_pruner(**hp):
    task = get_task("xor")
    pruner = SparseVariationalDropout(SparseVDHparams(**hp), task)
    model = pruner.attach(task.build_model(0))
    return pruner, model


def test_attach_swaps_every_layer_and_deployed_mask_is_log_alpha_below_3():
    pruner, model = _xor_pruner()
    assert type(model.fc1) is VariationalLinear and type(model.fc2) is VariationalLinear
    theta = torch.tensor([[0.5, -0.4], [0.3, -0.2], [0.1, 0.6], [-0.7, 0.8], [0.9, -0.05]])
    # log alpha per weight: just below / just above 3, and far from it.
    log_alpha = torch.tensor([[2.999, 3.001], [2.99, 3.01], [-5.0, 7.0], [2.9999, 3.0001], [0.0, 8.0]])
    with torch.no_grad():
        model.fc1.weight.copy_(theta)
        model.fc1.log_sigma2.copy_(log_alpha + torch.log(theta ** 2 + 1e-8))
    torch.testing.assert_close(model.fc1.log_alpha(), log_alpha, atol=1e-5, rtol=0)
    net = pruner.deployed(model)
    assert type(net) is XorNet and type(net.fc1) is nn.Linear and type(net.fc2) is nn.Linear
    expected = torch.tensor([[0.5, 0.0], [0.3, 0.0], [0.1, 0.0], [-0.7, 0.0], [0.9, 0.0]])
    assert torch.equal(net.fc1.weight, expected)
    assert torch.equal(net.fc1.bias, model.fc1.bias)
    # log sigma^2 = -10 and theta ~ N(0, 1): log alpha = -10 - log theta^2 < 3 unless |theta| < e^-6.5.
    assert torch.equal(net.fc2.weight, model.fc2.weight * (model.fc2.log_alpha() < 3))
    # Evaluation mode is deterministic and computes exactly the deployed network.
    x = torch.randn(7, 2)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        torch.testing.assert_close(model(x), net(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # training mode samples
    assert torch.equal(pruner.scores(model)["fc1"], -model.fc1.log_alpha().detach())


def test_threshold_is_strict_at_an_exactly_representable_log_alpha():
    # The clip makes log alpha exactly 8.0 for tiny theta; with threshold 8 those weights must go (< not <=).
    pruner, model = _xor_pruner(threshold=8.0)
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1e-6, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]))
    assert model.fc1.log_alpha()[0, 0].item() == 8.0
    assert pruner.deployed(model).fc1.weight.flatten().tolist() == [0.0] + [0.5] * 9


def test_penalty_is_beta_kl_over_n_with_epochs_from_steps():
    task = get_task("lenet300")  # N = 60,000, batch 100: 600 steps per epoch
    pruner = SparseVariationalDropout(SparseVDHparams(), task)
    model = pruner.attach(task.build_model(0))
    total_kl = sum(kl_approximation(m.log_alpha()).sum() for m in (model.fc1, model.fc2, model.fc3))
    for step, beta in [(0, 0.0), (2999, 0.0), (3000, 0.0), (3600, 1 / 15), (7799, 7 / 15), (12_000, 1.0)]:
        pruner.after_step(step)
        penalty = pruner.plain_penalty()
        if beta == 0:
            assert penalty is None
        else:
            assert penalty.item() == pytest.approx(beta * total_kl.item() / 60_000, rel=1e-5)
        # the fused path's backward applies the same scale (its own penalty() adds nothing to the loss)
        assert model.fc1.kl_scale.item() == pytest.approx(beta / 60_000, rel=1e-6, abs=0)
    penalty.backward()
    assert model.fc1.log_sigma2.grad is not None and model.fc1.weight.grad is not None


def test_phases_paper_schedule_and_equal_budget():
    lenet300 = get_task("lenet300")
    hp = SparseVDHparams(lr_decay_start=100)
    phases = SparseVariationalDropout(hp, lenet300, budget="paper").phases(lenet300.protocol)
    assert sum(p.iterations for p in phases) == 200 * 600
    assert (phases[0].iterations, phases[0].lr) == (100 * 600, 1e-3)
    assert [p.iterations for p in phases[1:]] == [10 * 600] * 10
    # Phase lr = mean of the code's per-epoch lr 1e-3 * (200 - e) / 100 over its 10 epochs.
    assert phases[1].lr == pytest.approx(1e-3 * (200 - 104.5) / 100)
    assert phases[-1].lr == pytest.approx(1e-3 * (200 - 194.5) / 100)
    assert all(a.lr > b.lr for a, b in zip(phases[:-1], phases[1:], strict=True))
    lenet5 = get_task("lenet5")
    phases5 = SparseVariationalDropout(SparseVDHparams(), lenet5, budget="paper").phases(lenet5.protocol)
    assert [p.iterations for p in phases5] == [20 * 600] * 10
    assert phases5[0].lr == pytest.approx(1e-3 * (200 - 9.5) / 200)
    equal = SparseVariationalDropout(SparseVDHparams(), lenet5).phases(lenet5.protocol.with_overrides(iterations=777))
    assert [(p.iterations, p.lr) for p in equal] == [(777, 1e-3)]


def test_adam_state_carries_across_lr_phases():
    pruner, model = _xor_pruner()
    first = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.on_phase_start(None, model, first)
    model(torch.ones(3, 2)).sum().backward()
    first.step()
    second = torch.optim.Adam(model.parameters(), lr=1e-4)
    pruner.on_phase_start(None, model, second)
    assert second.state[model.fc1.log_sigma2]["exp_avg"] is first.state[model.fc1.log_sigma2]["exp_avg"]


def test_conv_layers_of_lenet5_are_swapped():
    task = get_task("lenet5")
    pruner = SparseVariationalDropout(SparseVDHparams(), task)
    model = pruner.attach(task.build_model(0))
    assert [type(m) for _, m in pruner.layers] == [VariationalConv2d, VariationalConv2d,
                                                   VariationalLinear, VariationalLinear]
    out = model(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10)
    net = pruner.deployed(model)
    assert type(net.conv1) is nn.Conv2d and torch.equal(net.conv2.weight, model.conv2.weight * model.conv2.kept())


@pytest.mark.parametrize(("shape", "train_clip"), [((300, 784), True), ((20, 6, 5, 5), False), ((5, 2), True)])
def test_fused_posterior_equals_the_plain_formulas(shape, train_clip):
    """`SVDPosterior` (compiled for large layers, eager for small) against autograd through the plain
    formulas: mean and variance weights, and the gradients of theta and log sigma^2 with the KL term
    (beta / N = 0.3 here, large enough to matter) added, over log alphas on both sides of the clip."""
    from prunebench.methods.sparse_vd import LOG_ALPHA_CLIP, THETA_EPS, SVDPosterior

    gen = torch.Generator().manual_seed(3)
    theta = (0.05 * torch.randn(shape, generator=gen)).requires_grad_()
    log_sigma2 = (-8 + 6 * torch.randn(shape, generator=gen)).requires_grad_()
    g_mean, g_var = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    scale = 0.3
    log_alpha = torch.clamp(log_sigma2 - torch.log(theta * theta + THETA_EPS), -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
    mean = theta * (log_alpha < 3.0) if train_clip else theta
    var = torch.exp(log_alpha) * theta * theta
    ((mean * g_mean).sum() + (var * g_var).sum() + scale * kl_approximation(log_alpha).sum()).backward()
    expected = theta.grad.clone(), log_sigma2.grad.clone()
    theta.grad = log_sigma2.grad = None
    fast_mean, fast_var = SVDPosterior.apply(theta, log_sigma2, torch.tensor(scale), 3.0, train_clip)
    ((fast_mean * g_mean).sum() + (fast_var * g_var).sum()).backward()
    raw = (log_sigma2 - torch.log(theta * theta + THETA_EPS)).detach()
    assert (raw > LOG_ALPHA_CLIP).any() and (raw < 3).any() and ((raw > 3) & (raw < LOG_ALPHA_CLIP)).any()
    torch.testing.assert_close(fast_mean, mean, rtol=0, atol=0)
    torch.testing.assert_close(fast_var, var, rtol=1e-5, atol=1e-9)
    # dlog alpha/dtheta = -2 theta / (theta^2 + 1e-8) reaches 1e4 for the smallest thetas, and terms of that
    # size cancel: float32 rounding there, so the tolerance is relative to the largest gradient.
    for got, want in zip((theta.grad, log_sigma2.grad), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
