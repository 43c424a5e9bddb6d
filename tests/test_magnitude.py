"""Iterative magnitude pruning: exact masks on hand-made tensors, pruned weights stay zero under Adam
and momentum SGD, the schedule under both budgets, per-layer hyperparameters."""

from __future__ import annotations

import pytest
import torch
from prunebench.methods.magnitude import (
    MagnitudeHparams,
    MagnitudePruning,
    magnitude_mask,
    magnitude_threshold,
)

from prunebench.protocol import Phase, Protocol
from prunebench.registry import get_task

# Zero mean, so the population std is the RMS: sqrt((4*4 + 2*1 + 2*0.25 + 0) / 10) = sqrt(1.85) = 1.360147.
HAND_MADE = torch.tensor([2.0, -2.0, 2.0, -2.0, 1.0, -1.0, 0.5, -0.5, 0.0, 0.0])
STD = 1.3601470508735443


def test_threshold_is_quality_times_population_std():
    assert magnitude_threshold(HAND_MADE, 1.0).item() == pytest.approx(STD, rel=1e-6)
    assert magnitude_threshold(HAND_MADE, 0.7).item() == pytest.approx(0.7 * STD, rel=1e-6)


@pytest.mark.parametrize("quality,expected_kept", [
    (0.0, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]),  # threshold 0: only the exact zeros go
    (0.3, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]),  # 0.408: all |w| >= 0.5 stay
    (0.5, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]),  # 0.680: the +-0.5 go
    (0.7, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]),  # 0.952: the +-1 stay (the unbiased std, 1.434, would prune them)
    (1.0, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]),  # 1.360: only the +-2 stay
    (1.5, [0] * 10),                        # 2.040: everything goes
])
def test_mask_removes_exactly_the_entries_below_q_std(quality, expected_kept):
    mask = magnitude_mask(HAND_MADE, magnitude_threshold(HAND_MADE, quality))
    assert mask.tolist() == expected_kept


def test_weight_at_exactly_the_threshold_is_pruned():
    w = torch.tensor([0.5, -0.5, 0.50001])
    assert magnitude_mask(w, 0.5).tolist() == [0.0, 0.0, 1.0]


def _xor_pruner(**hp) -> tuple[MagnitudePruning, torch.nn.Module]:
    task = get_task("xor")
    pruner = MagnitudePruning(MagnitudeHparams(**hp), task)
    model = pruner.attach(task.build_model(0))
    with torch.no_grad():
        model.fc1.weight.copy_(HAND_MADE.view(5, 2))
        model.fc2.weight.copy_(torch.tensor([[3.0, -1.0, 0.1, 0.2, -2.0]]))
    return pruner, model


def test_rounds_ramp_the_threshold_to_q_std_of_the_dense_layer():
    # K = 2, q = 1.4: round 1 at 0.7 * std (0.952), round 2 at 1.4 * std (1.904) of the *dense* layer.
    pruner, model = _xor_pruner(rounds=2, quality=(1.4, 0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.on_phase_start(Phase("dense", 10, 1e-3), model, opt)
    assert pruner.masks == {}
    pruner.on_phase_start(Phase("retrain-1", 10, 1e-4), model, opt)
    assert pruner.masks["fc1"].flatten().tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert model.fc1.weight.flatten().tolist() == [2, -2, 2, -2, 1, -1, 0, 0, 0, 0]
    assert pruner.masks["fc2"].flatten().tolist() == [1, 1, 1, 1, 1]  # q = 0: nothing below 0
    # Retraining shrinks one survivor below the round-2 threshold; the std is not re-measured.
    with torch.no_grad():
        model.fc1.weight[0, 0] = 1.9
    pruner.on_phase_start(Phase("retrain-2", 10, 1e-4), model, opt)
    assert pruner.masks["fc1"].flatten().tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert int(torch.count_nonzero(pruner.deployed(model).fc1.weight)) == 3


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_pruned_weights_stay_exactly_zero_under_many_optimizer_steps(optimizer):
    task = get_task("lenet300")
    pruner = MagnitudePruning(MagnitudeHparams(rounds=1, quality=(1.0,)), task)
    model = pruner.attach(task.build_model(0))
    protocol = Protocol(optimizer=optimizer, weight_decay=5e-4, momentum=0.9)
    # Dense phase: a few steps so that the optimizer state is non-zero everywhere before the prune.
    opt = protocol.make_optimizer(model.parameters(), lr=1e-2)
    pruner.on_phase_start(Phase("dense", 5, 1e-2), model, opt)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 784, generator=gen)
    target = torch.randint(0, 10, (64,), generator=gen)

    def step(opt: torch.optim.Optimizer, n: int) -> None:
        # Large gradients everywhere, pruned entries included: the CE plus 1e3 * <W, random>.
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss = loss + 1e3 * sum((m.weight * torch.randn(m.weight.shape, generator=gen)).sum()
                                for _, m in pruner.layers)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.after_step(n)

    for n in range(1, 6):
        step(opt, n)
    opt = protocol.make_optimizer(model.parameters(), lr=1e-2)  # the harness builds one per phase
    pruner.on_phase_start(Phase("retrain-1", 100, 1e-3), model, opt)
    masks = {name: mask.clone() for name, mask in pruner.masks.items()}
    kept_before = {name: m.weight.detach().clone() for name, m in pruner.layers}
    for name, mask in masks.items():
        assert 0 < mask.mean() < 1, f"{name}: q = 1 should prune part of the layer"
    for n in range(6, 106):
        step(opt, n)
        for name, module in pruner.layers:
            pruned = masks[name] == 0
            assert torch.count_nonzero(module.weight[pruned]) == 0, f"{name} pruned weights revived at step {n}"
    for name, module in pruner.layers:
        pruned = masks[name] == 0
        state = opt.state[module.weight]
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in state:
                assert torch.count_nonzero(state[key][pruned]) == 0, f"{name} {key} non-zero at pruned entries"
        # The survivors did train (the optimizer is live, not frozen by the masking).
        assert not torch.equal(module.weight[~pruned], kept_before[name][~pruned])
    net = pruner.deployed(model)
    assert all(torch.equal(net.get_submodule(name).weight != 0, masks[name].bool() & (m.weight != 0))
               for name, m in pruner.layers)


def test_phases_equal_and_paper_budgets():
    task = get_task("lenet300")
    protocol = task.protocol
    pruner = MagnitudePruning(MagnitudeHparams(rounds=3), task, budget="equal")
    phases = pruner.phases(protocol.with_overrides(iterations=1001))
    assert [p.name for p in phases] == ["dense", "retrain-1", "retrain-2", "retrain-3"]
    assert [p.iterations for p in phases] == [500, 167, 167, 167]  # 1001 // 2 rounds to 500 (banker's)
    assert sum(p.iterations for p in phases) == 1001
    assert [p.lr for p in phases] == [1e-3, pytest.approx(1e-4), pytest.approx(1e-4), pytest.approx(1e-4)]
    paper = MagnitudePruning(MagnitudeHparams(), task, budget="paper").phases(protocol)
    assert [p.iterations for p in paper] == [10_000] + [4_600] * 5
    with pytest.raises(ValueError, match="too few"):
        MagnitudePruning(MagnitudeHparams(rounds=5), task).phases(protocol.with_overrides(iterations=8))


def test_per_layer_quality_parsing_and_validation():
    assert MagnitudeHparams(quality="1.75, 1.7,1.13").quality == (1.75, 1.7, 1.13)  # as the CLI passes it
    assert MagnitudeHparams(quality=0.5).quality == (0.5,)
    task = get_task("lenet300")
    assert MagnitudePruning(MagnitudeHparams(quality=(0.5,)), task).quality == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="quality needs 1 or 3 values"):
        MagnitudePruning(MagnitudeHparams(quality=(1.0, 2.0)), task)
    for bad in (dict(quality=(-1.0,)), dict(rounds=0), dict(retrain_lr_factor=0.0), dict(pretrain_fraction=1.0)):
        with pytest.raises(ValueError):
            MagnitudeHparams(**bad).validate()
    with pytest.raises(ValueError):
        MagnitudeHparams(quality="1.0,abc")


def test_scores_are_magnitudes_of_kept_weights():
    pruner, model = _xor_pruner(rounds=1, quality=(1.0, 0.0))
    pruner.prune(1)
    scores = pruner.scores(model)
    assert scores["fc1"].flatten().tolist() == [2, 2, 2, 2, 0, 0, 0, 0, 0, 0]
    assert scores["fc2"].flatten().tolist() == pytest.approx([3.0, 1.0, 0.1, 0.2, 2.0])
