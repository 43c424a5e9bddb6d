"""RigL: ERK's per-layer densities for both LeNets, the cosine-annealed drop fraction, drop/grow counts and
choices on hand-made tensors, the update steps (the only steps that read the dense gradient, and on which
the optimizer applies no update), grown weights and their optimizer state starting at zero, a constant
number of active weights, and the distributions' options."""

from __future__ import annotations

import math

import pytest
import torch
from prunebench.methods.rigl import RigL, RigLHparams, drop_and_grow, drop_fraction_at, erk_densities, layer_densities

from prunebench.harness import train
from prunebench.protocol import Protocol
from prunebench.pruner import prunable_layers
from prunebench.registry import get_task
from prunebench.request import make_spec

LENET300 = [(300, 784), (100, 300), (10, 100)]
LENET5 = [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]


def test_erk_densities_of_lenet300_follow_the_closed_form_and_keep_the_total():
    # No layer saturates at S = 0.98: density_l = eps sum(shape_l) / n_l, eps = 0.02 N / sum_l sum(shape_l)
    eps = 0.02 * 266_200 / (1084 + 400 + 110)
    densities = erk_densities(LENET300, 0.98)
    assert densities == pytest.approx([eps * 1084 / 235_200, eps * 400 / 30_000, eps * 110 / 1000])
    assert [round(1 - d, 3) for d in densities] == [0.985, 0.955, 0.633]  # METHODS.md sec. 12: .985/.956/.633
    assert sum(d * n for d, n in zip(densities, (235_200, 30_000, 1000), strict=True)) == pytest.approx(5324)


def test_erk_densities_of_lenet5_make_saturated_layers_dense():
    sizes = [500, 25_000, 400_000, 5000]
    at98 = erk_densities(LENET5, 0.98)
    assert [round(1 - d, 3) for d in at98] == [0.722, 0.986, 0.985, 0.543]  # METHODS.md sec. 12
    assert sum(d * n for d, n in zip(at98, sizes, strict=True)) == pytest.approx(0.02 * 430_500)
    at90 = erk_densities(LENET5, 0.90)  # conv1 (raw 31/500) and then fc2 (raw 510/5000) saturate: dense
    assert at90[0] == 1.0 and at90[3] == 1.0
    eps = (0.1 * 430_500 - 500 - 5000) / (80 + 1300)  # the others share the rest by sum(shape)
    assert at90[1:3] == pytest.approx([eps * 80 / 25_000, eps * 1300 / 400_000])
    assert [round(1 - d, 3) for d in at90] == [0.0, 0.913, 0.912, 0.0]
    assert erk_densities(LENET5, 0.0) == [1.0] * 4


def test_uniform_and_mnist_map_distributions():
    assert layer_densities(LENET300, 0.9, "uniform") == pytest.approx([0.1, 0.1, 0.1])
    assert layer_densities(LENET300, 0.98, "mnist-map") == pytest.approx([0.02, 1 - 0.882, 1.0])
    with pytest.raises(ValueError, match="3 layers"):
        layer_densities(LENET5, 0.98, "mnist-map")


def test_drop_fraction_anneals_by_cosine_to_zero_at_t_end():
    assert drop_fraction_at(0, 0.3, 7500) == pytest.approx(0.3)
    assert drop_fraction_at(3750, 0.3, 7500) == pytest.approx(0.15)
    assert drop_fraction_at(2500, 0.3, 7500) == pytest.approx(0.15 * (1 + math.cos(math.pi / 3)))  # 0.225
    assert drop_fraction_at(7500, 0.3, 7500) == pytest.approx(0.0, abs=1e-12)


def test_drop_and_grow_on_a_hand_made_layer():
    mask = torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    weight = torch.tensor([0.9, -0.1, 0.5, 0.05, -0.7, 0.0, 0.0, 0.0, 0.0, 0.0])
    grad = torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0, 0.2, -3.0, 0.1, 0.4, 2.0])
    new, n = drop_and_grow(mask, weight, grad, 0.5)
    # int(5 x 0.5) = 2 dropped: the two smallest active |w| (0.05 at 3, 0.1 at 1); grown: the largest |g| among
    # the rest, 5.0 at 1 (just dropped: grown again) and -3.0 at 6
    assert n == 2
    assert new.tolist() == [1, 1, 1, 0, 1, 0, 1, 0, 0, 0]
    assert int(new.sum()) == 5
    new, n = drop_and_grow(mask, weight, grad, 0.3)  # int(1.5) = 1: drop index 3 (0.05), grow index 6 (-3.0)
    assert n == 1 and new.tolist() == [1, 1, 1, 0, 1, 0, 1, 0, 0, 0]
    same, n = drop_and_grow(mask, weight, grad, 0.1)  # int(0.5) = 0: nothing moves
    assert n == 0 and torch.equal(same, mask)


def _setup(iterations: int = 1000, **hp) -> tuple[RigL, torch.nn.Module, torch.optim.Optimizer]:
    task = get_task("lenet300")
    torch.manual_seed(0)
    pruner = RigL(RigLHparams(**hp), task)
    model = pruner.attach(task.build_model(0))
    (phase,) = pruner.phases(Protocol(iterations=iterations))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.on_phase_start(phase, model, optimizer)
    return pruner, model, optimizer


def test_random_initial_masks_have_the_erk_counts_and_zero_the_masked_weights():
    pruner, model, _ = _setup(sparsity=0.98)
    counts = [int(pruner.keep[n].sum()) for n in ("fc1", "fc2", "fc3")]
    assert counts == [round(n * d) for n, d in zip((235_200, 30_000, 1000), pruner.densities, strict=True)]
    assert abs(sum(counts) - 5324) <= 2
    assert all(int(torch.count_nonzero(m.weight)) == int(pruner.keep[name].sum()) for name, m in prunable_layers(model))


def test_update_steps_are_every_dt_until_t_end_and_skip_the_optimizer():
    pruner, _, _ = _setup(iterations=1000, update_every=100, end=0.75)
    updates = [s for s in range(1, 1001) if pruner.is_update_step(s)]
    assert updates == [1, 101, 201, 301, 401, 501, 601, 701]  # t = step - 1 in 0, 100, ..., 700 <= T_end = 750
    assert all(pruner.skips_optimizer_step(s) == (s in updates) for s in range(1, 1001))


def test_training_reads_the_gradient_only_on_update_steps_which_move_no_weight(store, mnist_dir, monkeypatch):
    calls: list[int] = []
    active: list[int] = []
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    original_update, original_after = RigL.update_masks, RigL.after_step

    def update_masks(self, t):
        calls.append(t + 1)
        before = {name: m.weight.detach().clone() for name, m in self.layers}
        grads = {name: m.weight.grad.detach().clone() for name, m in self.layers}
        masks = {name: mask.clone() for name, mask in self.keep.items()}
        original_update(self, t)
        snapshots[t + 1] = {"before": before, "grads": grads, "masks": masks}

    def after_step(self, step):
        original_after(self, step)
        active.append(sum(int(mask.sum()) for mask in self.keep.values()))
        if step in snapshots:
            record = snapshots[step]
            state = self.optimizer.state
            for name, m in self.layers:
                old, new, w = record["masks"][name], self.keep[name], m.weight.detach()
                assert int(new.sum()) == int(old.sum())  # drop = grow
                stayed = (old > 0) & (new > 0)
                assert torch.equal(w[stayed], record["before"][name][stayed])  # no optimizer update this step
                grown = (old == 0) & (new > 0)
                assert torch.all(w[grown] == 0)  # grown weights start at zero...
                if m.weight in state:
                    assert torch.all(state[m.weight]["exp_avg"][grown] == 0)  # ...with zero optimizer state
                    assert torch.all(state[m.weight]["exp_avg_sq"][grown] == 0)
                assert torch.all(w[(old > 0) & (new == 0)] == 0)  # dropped weights are zero
                if int(grown.sum()):  # grown where the step's gradient is largest among the others
                    candidates = record["grads"][name].abs()[new == 0]
                    assert float(record["grads"][name].abs()[grown].min()) >= float(candidates.max())

    monkeypatch.setattr(RigL, "update_masks", update_masks)
    monkeypatch.setattr(RigL, "after_step", after_step)
    spec = make_spec("lenet300", "rigl", hparams={"sparsity": 0.95, "update_every": 40, "end": 0.5},
                     iterations=250, eval_every=125)
    result = train(spec, store, mnist_dir, device="cpu")
    assert result.status == "finished"
    assert calls == [1, 41, 81, 121]  # t = 0, 40, 80, 120 <= T_end = 125
    densities = erk_densities(LENET300, 0.95)
    expected = sum(round(n * d) for n, d in zip((235_200, 30_000, 1000), densities, strict=True))
    assert len(active) == 250 and set(active) == {expected}  # the active count never moved
    # The harness counts exact zeros: a weight grown where a rare pixel lit up may get no gradient after
    # (Adam moves it by 0/(0 + eps)) and stay 0; a handful at most.
    final = store.final_row(result.run_id)
    assert expected - 20 <= final["weights_nonzero"] <= expected
    assert final["accuracy"] > 0.5


def test_the_first_update_drops_alpha_of_the_active_weights():
    pruner, model, optimizer = _setup(iterations=1000, sparsity=0.9, drop_fraction=0.3)
    x = torch.rand(100, 1, 28, 28)
    y = torch.randint(0, 10, (100,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    active = {name: int(mask.sum()) for name, mask in pruner.keep.items()}
    pruner.after_step(1)
    assert pruner.updates == [(1, sum(int(n * 0.3) for n in active.values()))]
