"""Every method but dense declares its compression knob (prunebench/knob.py): a real hyperparameter, bounds a
search can use, and a direction that training on XOR bears out."""

from __future__ import annotations

import dataclasses
import math

import pytest

from prunebench.data import default_data_dir
from prunebench.knob import CompressionKnob, round_knob
from prunebench.pruner import make_hparams
from prunebench.registry import get_method, get_task, method_names, task_names
from prunebench.request import RunRequest
from prunebench.running.runner import train_requests


def test_every_method_but_dense_declares_a_knob_on_a_real_hyperparameter_with_sane_bounds():
    assert get_method("dense").knob is None
    for name in method_names():
        cls = get_method(name)
        if name == "dense":
            continue
        knob = cls.knob
        assert isinstance(knob, CompressionKnob), f"{name} declares no compression knob"
        f = {f.name: f for f in dataclasses.fields(cls.hparams_class)}.get(knob.hparam)
        assert f is not None, f"{name}: knob {knob.hparam!r} is not a hyperparameter"
        assert isinstance(f.default, tuple) == knob.scale, f"{name}: a per-layer knob must be a scale, and only one"
        assert knob.low < knob.high and (not knob.log or knob.low > 0)
        assert round_knob(knob.low) == knob.low and round_knob(knob.high) == knob.high
        if knob.sparsity:  # the compressions its bounds set
            spread = (1 - knob.low) / (1 - knob.high)
        else:
            spread = knob.high / knob.low if knob.log else knob.high - knob.low
        assert spread >= (100 if knob.logarithmic else 4), f"{name}: bounds too narrow to search"
        for task in task_names():
            base = make_hparams(cls, get_task(task), {})
            assert knob.low <= knob.start(base) <= knob.high
            if not knob.scale:  # the calibrated value lies inside the search interval
                assert knob.low <= getattr(base, knob.hparam) <= knob.high, (name, task)
        for value in (knob.low, knob.high):  # both ends are valid settings on the task
            base = make_hparams(cls, get_task("xor"), {})
            RunRequest("xor", name, 0, knob.overrides(base, value)).resolve()


def test_a_scale_knob_multiplies_the_calibrated_per_layer_values_and_rounds():
    knob = get_method("dns").knob
    base = make_hparams(get_method("dns"), get_task("lenet300"), {})
    assert base.c_rate == (5.0, 5.0, 5.5)
    assert knob.overrides(base, 0.5) == {"c_rate": (2.5, 2.5, 2.75)}
    assert knob.overrides(base, 1 / 3) == {"c_rate": (1.67, 1.67, 1.83)}
    lam = get_method("dynthresh").knob
    assert lam.overrides(base, 3.14159e-4) == {"lam": 3.14e-4}
    assert lam.value_at(lam.position(5.0)) == 0.1 and lam.value_at(lam.position(1e-9)) == 1e-6
    vd = get_method("sparse-vd").knob
    assert not vd.log and not vd.raises and vd.value_at(-2.5) == -2.5 and vd.exact_cut
    with pytest.raises(ValueError, match="bounds > 0"):
        CompressionKnob("lam", raises=True, low=0.0, high=1.0)


def test_a_sparsity_knob_sets_compression_and_rounds_on_the_density():
    knob = get_method("gmp").knob
    assert knob.sparsity and knob.logarithmic
    assert [knob.at_target(t) for t in (10, 25, 50, 100, 200, 300)] == [0.9, 0.96, 0.98, 0.99, 0.995, 0.99667]
    assert knob.position(0.99) == pytest.approx(math.log(100))  # the axis is log compression
    assert knob.value_at(math.log(1e6)) == 0.999 and knob.value_at(0.0) == 0.1  # clipped to the bounds
    assert knob.overrides(None, 0.987654) == {"sparsity": 0.9877}  # density 0.012346 -> 0.0123
    assert "sets compression 1/(1 - sparsity)" in knob.describe()
    with pytest.raises(ValueError, match="sparsity knob"):
        CompressionKnob("s", raises=True, low=0.5, high=1.0, sparsity=True)
    with pytest.raises(ValueError, match="not a sparsity"):
        get_method("dynthresh").knob.at_target(10)


#: (method, knob value pruning less, knob value pruning more, in the declared direction) on XOR, 1,000 steps.
DIRECTIONS = [("dynthresh", 1e-6, 0.1), ("magnitude", 0.3, 3.0), ("dst", 1e-3, 0.3), ("srinivas", 0.01, 100.0),
              ("sparse-vd", 4.0, -8.0)]


@pytest.mark.parametrize(("method", "less", "more"), DIRECTIONS, ids=[d[0] for d in DIRECTIONS])
def test_moving_the_knob_in_its_declared_direction_raises_compression_on_xor(store, method, less, more):
    cls = get_method(method)
    knob = cls.knob
    assert (more > less) == knob.raises
    base = make_hparams(cls, get_task("xor"), {})
    requests = [RunRequest("xor", method, 0, knob.overrides(base, v), iterations=1000) for v in (less, more)]
    low, high = (r.final["compression"] for r in train_requests(requests, store, default_data_dir()))
    assert high > low * 1.3, (method, low, high)
