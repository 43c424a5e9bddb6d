"""Gradual magnitude pruning: the cubic schedule's sparsity at given steps, the pruning window in steps, the
masks at each event (exact counts, largest |w| kept, nested), the global variant, pruned weights held at
zero through training, and its sparsity knob landing on a target with one probe."""

from __future__ import annotations

import pytest
import torch
from prunebench.methods.gmp import GMPHparams, GradualMagnitudePruning, cubic_sparsity, kept_count
from prunebench.methods.rigl import RigL

from prunebench.harness import train
from prunebench.protocol import Protocol
from prunebench.pruner import prunable_layers
from prunebench.registry import get_task
from prunebench.request import make_spec
from prunebench.running.curve import decide


def test_cubic_schedule_at_given_steps():
    # s_f = 0.9, s_i = 0.1, t0 = 100, n dt = 400: s_t = 0.9 - 0.8 (1 - (t - 100) / 400)^3
    assert cubic_sparsity(0, 0.1, 0.9, 100, 400) == pytest.approx(0.1)  # before t0: s_i
    assert cubic_sparsity(100, 0.1, 0.9, 100, 400) == pytest.approx(0.1)
    assert cubic_sparsity(200, 0.1, 0.9, 100, 400) == pytest.approx(0.9 - 0.8 * 0.75 ** 3)  # 0.5625
    assert cubic_sparsity(300, 0.1, 0.9, 100, 400) == pytest.approx(0.8)  # half way: 7/8 of the rise done
    assert cubic_sparsity(400, 0.1, 0.9, 100, 400) == pytest.approx(0.9 - 0.8 / 64)
    assert cubic_sparsity(500, 0.1, 0.9, 100, 400) == pytest.approx(0.9)
    assert cubic_sparsity(9000, 0.1, 0.9, 100, 400) == pytest.approx(0.9)  # after the window: s_f


def test_kept_count_rounds_half_to_even_and_keeps_one_weight():
    assert kept_count(1000, 0.98) == 20
    assert kept_count(10, 0.75) == 2  # 2.5 -> 2 (tf.round's half to even)
    assert kept_count(10, 0.65) == 4  # 3.5 -> 4
    assert kept_count(5, 0.99) == 1


def _pruner(task: str = "lenet300", iterations: int = 1000, **hp) -> tuple[GradualMagnitudePruning, torch.nn.Module]:
    spec_task = get_task(task)
    pruner = GradualMagnitudePruning(GMPHparams(**hp), spec_task)
    model = pruner.attach(spec_task.build_model(0))
    pruner.on_phase_start(pruner.phases(Protocol(iterations=iterations))[0], model,
                          torch.optim.Adam(model.parameters(), lr=1e-3))
    return pruner, model


def test_window_in_steps_and_events_reach_the_final_sparsity():
    pruner, _ = _pruner(iterations=1000, begin=0.1, end=0.5, frequency=100)
    assert (pruner.begin_step, pruner.span) == (100, 400)
    assert [t for t in range(1, 1001) if pruner.is_pruning_step(t)] == [100, 200, 300, 400, 500]
    # an uneven window holds whole events only, so the last event still reaches s_f
    pruner, _ = _pruner(iterations=1000, begin=0.1, end=0.58, frequency=100, sparsity=0.8)
    assert pruner.span == 400 and pruner.sparsity_at(500) == pytest.approx(0.8)
    # a window shorter than dt (10 iterations: t0 = 1, W = 4) holds one event at its end
    pruner, _ = _pruner(iterations=10, begin=0.1, end=0.5, frequency=100)
    assert [t for t in range(1, 11) if pruner.is_pruning_step(t)] == [1, 5] and pruner.sparsity_at(5) == 0.9
    with pytest.raises(ValueError, match="holds no step of the run's 1000 iterations"):
        _pruner(iterations=1000, begin=0.9999, end=1.0)
    with pytest.raises(ValueError, match="begin must be < end"):
        GMPHparams(begin=0.5, end=0.5).validate()
    with pytest.raises(ValueError, match="initial_sparsity must be <= sparsity"):
        GMPHparams(initial_sparsity=0.5, sparsity=0.4).validate()


def test_each_event_keeps_the_largest_weights_of_every_layer_in_exact_counts_and_masks_nest():
    pruner, model = _pruner(iterations=1000, begin=0.1, end=0.5, frequency=100, sparsity=0.95)
    previous = {name: torch.ones_like(m.weight) for name, m in prunable_layers(model)}
    for step in range(1, 501):
        with torch.no_grad():  # stand-in for training: move every weight a little
            for _, m in prunable_layers(model):
                m.weight.add_(torch.randn_like(m.weight) * 1e-3)
        before = {name: m.weight.detach().clone() for name, m in prunable_layers(model)}
        pruner.after_step(step)
        for name, m in prunable_layers(model):  # the noise reached pruned weights too: held at zero again
            if name in pruner.keep:
                assert int(torch.count_nonzero(m.weight)) == int(pruner.keep[name].sum())
        if not pruner.is_pruning_step(step):
            continue
        s = 0.95 - 0.95 * (1 - (step - 100) / 400) ** 3
        for name, m in prunable_layers(model):
            mask = pruner.keep[name]
            assert int(mask.sum()) == int(torch.count_nonzero(m.weight)) == kept_count(m.weight.numel(), s), name
            assert torch.all(mask <= previous[name]), "a pruned weight came back"
            kept = before[name][mask > 0].abs()
            dropped = before[name][(mask == 0) & (previous[name] > 0)].abs()
            if dropped.numel():
                assert float(kept.min()) >= float(dropped.max())
            previous[name] = mask.clone()
    assert [int(pruner.keep[n].sum()) for n in ("fc1", "fc2", "fc3")] == [11760, 1500, 50]  # 5% of each


def test_global_scope_keeps_the_largest_weights_over_all_layers():
    pruner, model = _pruner(iterations=1000, begin=0.1, end=0.5, frequency=100, sparsity=0.9, scope="global")
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable_layers(model)])
    pruner.prune(0.9)
    kept = torch.cat([pruner.keep[name].flatten() for name, _ in prunable_layers(model)])
    assert int(kept.sum()) == kept_count(266_200, 0.9) == 26_620
    assert float(magnitudes[kept > 0].min()) >= float(magnitudes[kept == 0].max())
    per_layer = [int(pruner.keep[n].sum()) for n in ("fc1", "fc2", "fc3")]
    assert per_layer != [23_520, 3_000, 100]  # not 10% of each layer: one threshold


def test_pruned_weights_stay_zero_through_training_and_the_run_lands_on_its_sparsity(store, tmp_path):
    spec = make_spec("xor", "gmp", hparams={"sparsity": 0.4, "frequency": 20}, iterations=400, eval_every=100)
    result = train(spec, store, tmp_path, device="cpu")
    assert result.status == "finished"
    points = store.trajectory(result.run_id)
    # window: t0 = 40, n = round(0.4 x 400 / 20) = 8 events, s_f at step 200; fc1 10 weights, fc2 5.
    # step 100: s = 0.4 - 0.4 (1 - 60/160)^3 = 0.302: fc1 keeps round(6.98) = 7, fc2 round(3.49) = 3
    assert [p["weights_nonzero"] for p in points] == [10, 9, 9, 9]
    final = store.final_row(result.run_id)
    assert final["weights_nonzero"] == kept_count(10, 0.4) + kept_count(5, 0.4) == 9


def test_a_sparsity_knob_starts_at_the_target_and_lands_with_one_probe():
    for cls in (GradualMagnitudePruning, RigL):
        knob = cls.knob
        assert knob.sparsity and knob.hparam == "sparsity"
        first = decide(knob, 0.9, [], 100.0, 0.1, 6)
        assert first.status == "searching" and first.value == 0.99
        assert decide(knob, 0.9, [(0.99, 99.7)], 100.0, 0.1, 6).status == "reached"
        assert decide(knob, 0.9, [], 30.0, 0.1, 6).value == 0.9667  # rounded on the density 0.0333
        # a distribution that does not set compression exactly (rigl's mnist-map) moves on its log density
        second = decide(knob, 0.9, [(0.99, 60.0)], 100.0, 0.1, 6)
        assert second.status == "searching" and 0.99 < second.value < 0.995
