"""Dynamic network surgery: thresholds from the pretrained statistics, the prune/splice/keep rule,
the straight-through gradient to masked weights, the update-probability schedule and iter_stop."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import xor_weights
from prunebench.methods.dns import (
    DNSHparams,
    DynamicNetworkSurgery,
    StraightThroughMask,
    surgery_mask,
    surgery_thresholds,
)
from torch.nn import functional as F

from prunebench.protocol import Phase
from prunebench.registry import get_task

# |w| = 0.1 ... 1.0: mu = 0.55, mean w^2 = 0.385, sigma = sqrt(0.385 - 0.3025) = 0.287228.
FC1, FC2 = xor_weights()
PRETRAINED = FC1.flatten()


@pytest.mark.parametrize("c_rate,a,b", [
    (0.0, 0.9 * 0.55, 1.1 * 0.55),
    (1.0, 0.9 * 0.837228, 1.1 * 0.837228),
    (-1.0, 0.9 * 0.262772, 1.1 * 0.262772),
    (-5.0, 0.0, 0.0),  # mu - 5 sigma < 0: m = max(., 0) = 0
])
def test_thresholds_from_mean_and_std_of_magnitudes(c_rate, a, b):
    got_a, got_b = surgery_thresholds(PRETRAINED, c_rate)
    assert got_a == pytest.approx(a, abs=1e-6) and got_b == pytest.approx(b, abs=1e-6)


def test_mask_rule_prune_splice_keep():
    a, b = 0.9, 1.1
    weight = torch.tensor([0.5, -0.9, 1.0, 1.2, 0.5, -0.95, 1.0, -1.1, 1.2])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    # kept:   0.5 <= a pruned; 0.9 <= a pruned (boundary); 1.0 in between kept; 1.2 kept
    # pruned: 0.5 stays; 0.95 in between stays; 1.0 stays; 1.1 = b is not > b, stays; 1.2 > b spliced
    assert surgery_mask(weight, mask, a, b).tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 1]


def _xor_surgery(**hp) -> tuple[DynamicNetworkSurgery, torch.nn.Module]:
    task = get_task("xor")
    torch.manual_seed(0)
    pruner = DynamicNetworkSurgery(DNSHparams(**hp), task, budget="paper")
    model = pruner.attach(task.build_model(0))
    with torch.no_grad():
        model.fc1.parametrizations.weight.original.copy_(PRETRAINED.view(5, 2))
        model.fc2.parametrizations.weight.original.copy_(FC2)
    return pruner, model


def test_surgery_prunes_below_a_splices_above_b_and_keeps_in_between():
    # gamma = 0: the update probability is 1 at every iteration.
    pruner, model = _xor_surgery(gamma=0.0, c_rate=(0.0, 10.0), iter_stop=(100, 100))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.on_phase_start(Phase("pretrain", 10, 0.0), model, opt)
    pruner.after_step(10)  # pretraining never touches the masks
    assert model.fc1.parametrizations.weight[0].mask.flatten().tolist() == [1] * 10
    pruner.on_phase_start(Phase("surgery", 100, 0.0), model, opt)
    fc1 = pruner.layers[0]
    assert (fc1.a, fc1.b) == (pytest.approx(0.495), pytest.approx(0.605))  # m = mu = 0.55
    # Iteration 0 updates with probability 1: |w| <= 0.495 pruned.
    assert fc1.mask.flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert model.fc1.weight.flatten().tolist() == pytest.approx([0, 0, 0, 0, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0])
    # The statistics are fixed: move weights, then one more surgery iteration.
    with torch.no_grad():
        w = fc1.weight.view(-1)
        w[0] = 0.7    # pruned, > b: spliced back
        w[1] = -0.55  # pruned, between a and b: stays pruned
        w[4] = 0.45   # kept, <= a: pruned
        w[5] = 0.55   # kept, between a and b: stays kept
    pruner.after_step(11)
    assert fc1.mask.flatten().tolist() == [1, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert model.fc1.weight.flatten().tolist() == pytest.approx([0.7, 0, 0, 0, 0, 0.55, 0.7, -0.8, 0.9, -1.0])
    # fc2 with c = 10: m = mu + 10 sigma = 3 + 10 * sqrt(11 - 9) = 17.14, everything is pruned.
    assert pruner.layers[1].mask.flatten().tolist() == [0] * 5
    assert int(torch.count_nonzero(pruner.deployed(model).fc1.weight)) == 6


def test_masked_weights_receive_the_gradient_of_the_masked_network():
    pruner, model = _xor_surgery(gamma=0.0, c_rate=(0.0, -5.0))
    pruner.on_phase_start(Phase("surgery", 100, 0.0), model, torch.optim.SGD(model.parameters(), lr=0.0))
    mask = pruner.layers[0].mask.clone()
    assert (mask == 0).sum() == 4
    x = torch.tensor([[0.3, -1.2], [1.5, 0.7], [-0.4, 0.9]])
    model(x).sum().backward()
    grad = model.fc1.parametrizations.weight.original.grad
    # Reference: dL/d(W*T) for the plain layer with weight W*T (what Caffe accumulates into every W).
    w_t = (PRETRAINED.view(5, 2) * mask).requires_grad_()
    fc2 = model.fc2.weight.detach()
    (F.linear(torch.sigmoid(F.linear(x, w_t, model.fc1.bias.detach())), fc2, model.fc2.bias.detach())).sum().backward()
    torch.testing.assert_close(grad, w_t.grad)
    assert (grad[mask == 0] != 0).all(), "masked weights must receive gradient (straight-through)"


def test_straight_through_function():
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    m = torch.tensor([1.0, 0.0, 0.0])
    out = StraightThroughMask.apply(w, m)
    assert out.tolist() == [1.0, 0.0, 0.0]
    (out * torch.tensor([2.0, 3.0, 4.0])).sum().backward()
    assert w.grad.tolist() == [2.0, 3.0, 4.0]


@pytest.mark.parametrize("gamma,power", [(1e-4, 1.0), (1e-3, 0.75)])
@pytest.mark.parametrize("iteration", [0, 2_000, 10_000, 40_000])
def test_update_frequency_follows_the_probability_schedule(gamma, power, iteration):
    pruner, _ = _xor_surgery(gamma=gamma, power=power, iter_stop=(10**9,))
    p = (1 + gamma * iteration) ** (-power)
    assert pruner.update_probability(iteration) == pytest.approx(p, rel=1e-12)
    draws = 10_000  # two layers, one r each per draw
    decisions = [d for _ in range(draws) for d in pruner.draw_updates(iteration)]
    n = len(decisions)
    frequency = sum(decisions) / n
    if p == 1.0:
        assert frequency == 1.0
    else:
        assert abs(frequency - p) < 4 * math.sqrt(p * (1 - p) / n), (frequency, p)


def test_no_update_at_or_after_iter_stop():
    pruner, _ = _xor_surgery(gamma=0.0, iter_stop=(500, 1000))
    assert pruner.draw_updates(499) == [True, True]
    assert pruner.draw_updates(500) == [False, True]
    assert pruner.draw_updates(999.5) == [False, True]
    assert pruner.draw_updates(1000) == [False, False]


def test_r_comes_from_a_generator_seeded_by_the_run_seed():
    def decisions(seed: int) -> list[bool]:
        task = get_task("xor")
        pruner = DynamicNetworkSurgery(DNSHparams(gamma=1e-3), task)
        pruner.attach(task.build_model(seed))
        return [d for _ in range(200) for d in pruner.draw_updates(1000)]

    assert decisions(3) == decisions(3)
    assert decisions(3) != decisions(4)


def test_equal_budget_compresses_the_schedule_and_stops_each_layer_at_its_iter_stop():
    task = get_task("xor")
    hp = DNSHparams(gamma=0.0, iter_stop=(2_400, 10_000), pretrain_iterations=10_000, frozen_iterations=4_000)
    pruner = DynamicNetworkSurgery(hp, task, budget="equal")
    model = pruner.attach(task.build_model(0))
    # 10k + 10k + 4k paper iterations into 1,000: scale 1/24.
    phases = pruner.phases(task.protocol.with_overrides(iterations=1000))
    assert [(p.name, p.iterations) for p in phases] == [("pretrain", 417), ("surgery", 417), ("frozen", 166)]
    assert pruner.time_scale == pytest.approx(1 / 24)
    step = 0
    for phase in phases:
        pruner.on_phase_start(phase, model, torch.optim.SGD(model.parameters(), lr=0.0))
        for _ in range(phase.iterations):
            step += 1
            pruner.after_step(step)
    # fc1 stops at paper iteration 2,400 = surgery step 100: iteration 0 plus steps 1..99.
    # fc2 stops at 10,000 = step 416.7: iteration 0 plus steps 1..416. Nothing after that.
    assert [layer.updates for layer in pruner.layers] == [100, 417]


def test_lr_factors_scale_the_surgery_and_frozen_phases_only():
    task = get_task("xor")
    hp = DNSHparams(surgery_lr_factor=0.5, frozen_lr_factor=0.1, iter_stop=(100,), pretrain_iterations=50,
                    frozen_iterations=20)
    phases = DynamicNetworkSurgery(hp, task, budget="paper").phases(task.protocol)
    lr = task.protocol.lr
    assert [(p.name, p.iterations) for p in phases] == [("pretrain", 50), ("surgery", 100), ("frozen", 20)]
    assert [p.lr for p in phases] == pytest.approx([lr, 0.5 * lr, 0.1 * lr])


def test_frozen_phase_keeps_the_optimizer_state_of_the_surgery():
    pruner, model = _xor_surgery()
    surgery_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.on_phase_start(Phase("surgery", 1, 1e-3), model, surgery_opt)
    model(torch.ones(4, 2)).sum().backward()
    surgery_opt.step()
    frozen_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.on_phase_start(Phase("frozen", 1, 1e-3), model, frozen_opt)
    original = model.fc1.parametrizations.weight.original
    assert frozen_opt.state[original]["exp_avg"] is surgery_opt.state[original]["exp_avg"]


def test_per_layer_values_and_validation():
    assert DNSHparams(c_rate="1, 3,4,2.5", iter_stop="14000,14000,1e4,10000").iter_stop == (14000, 14000, 10000, 10000)
    with pytest.raises(ValueError, match="c_rate needs 1 or 2 values"):
        DynamicNetworkSurgery(DNSHparams(c_rate=(1.0, 2.0, 3.0)), get_task("xor"))
    for bad in (dict(gamma=-1.0), dict(power=-0.5), dict(iter_stop=(0,)), dict(frozen_iterations=-1),
                dict(surgery_lr_factor=0.0), dict(frozen_lr_factor=-1.0)):
        with pytest.raises(ValueError):
            DNSHparams(**bad).validate()
    with pytest.raises(ValueError, match="whole numbers"):
        DNSHparams(iter_stop="100.5")


def test_masked_biases_pool_into_the_statistics_and_follow_the_weight_thresholds():
    """mask_biases (the authors' layers): mu and sigma over |w| and |b| together, the bias mask by the same a, b."""
    pruner, model = _xor_surgery(gamma=0.0, c_rate=(0.0, 10.0), iter_stop=(100, 100), mask_biases=True)
    with torch.no_grad():
        model.fc1.parametrizations.bias.original.copy_(torch.tensor([0.05, 0.5, 1.1, -0.3, 0.0]))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.on_phase_start(Phase("surgery", 100, 0.0), model, opt)
    fc1 = pruner.layers[0]
    pooled = torch.cat([PRETRAINED, torch.tensor([0.05, 0.5, 1.1, -0.3, 0.0])]).abs().double()
    m = float(pooled.mean())  # c = 0: m = mu over the 15 magnitudes
    assert (fc1.a, fc1.b) == (pytest.approx(0.9 * m), pytest.approx(1.1 * m))
    assert fc1.a != pytest.approx(0.495)  # not the weights-only threshold
    expected_bias_mask = (pooled[10:] > 0.9 * m).float().tolist()  # 0.05, 0.3, 0 pruned; 0.5 and 1.1 kept
    assert fc1.bias_mask.tolist() == expected_bias_mask == [0, 1, 1, 0, 0]
    net = pruner.deployed(model)
    assert net.fc1.bias.tolist() == pytest.approx([0.0, 0.5, 1.1, 0.0, 0.0])  # deployed biases b * T_b
    without, _ = _xor_surgery(gamma=0.0, c_rate=(0.0, 10.0))
    assert without.layers[0].bias is None and without.layers[0].bias_mask is None
