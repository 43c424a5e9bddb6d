"""Every method's deployed network: the task's plain architecture, and a non-zero count that agrees
between an independent count, `measure_compression`, the stored run, and the method's own mask."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunebench.harness import train
from prunebench.metrics import measure_compression
from prunebench.observers import Measure
from prunebench.pruner import Pruner
from prunebench.request import make_spec


def independent_nonzero(net: nn.Module) -> int:
    """Non-zero weights of the plain Linear/Conv2d layers, counted without prunebench.metrics."""
    return sum(int((m.weight != 0).sum()) for m in net.modules() if type(m) in (nn.Linear, nn.Conv2d))


def method_kept(pruner: Pruner, model: nn.Module) -> int:
    """How many weights the method itself considers kept, from its own state."""
    name = pruner.name
    if name == "dense":
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    if name == "dynthresh":
        return sum(int((m.parametrizations.weight.original.abs() >= pruner.threshold_of(m)).sum())
                   for m in (model.fc1, model.fc2))
    if name in ("gmp", "rigl"):
        return sum(int(pruner.keep[n].sum()) if n in pruner.keep else m.weight.numel()
                   for n, m in (("fc1", model.fc1), ("fc2", model.fc2)))
    if name == "magnitude":
        if not pruner.masks:
            return sum(int((m.weight != 0).sum()) for m in (model.fc1, model.fc2))
        return sum(int(mask.sum()) for mask in pruner.masks.values())
    if name == "dns":
        return sum(int(layer.mask.sum()) for layer in pruner.layers)
    if name == "sparse-vd":
        return sum(int((layer.log_alpha() < 3).sum()) for _, layer in pruner.layers)
    if name in ("dst", "ltp", "srinivas", "sensitivity"):
        return sum(int(mask.sum()) for mask in pruner.masks(model).values())
    if name == "l0":  # open input gates of fc1 x 5 hidden units, plus fc2's open hidden-unit gates x 1
        fc1, fc2 = (layer for _, layer in pruner.layers)
        return 5 * fc1.kept_units() + fc2.kept_units() if fc2.kept_units() == 5 else -1  # -1: not this case
    if name == "autoprune":  # each kept hidden unit keeps its 2 inputs and its 1 output weight
        return 3 * int((pruner.unit_masks(model)["fc1"] > 0).sum())
    raise AssertionError(f"{name}: say here how the method counts the weights it keeps")


def test_deployed_is_plain_and_counts_agree_with_the_store(xor_method, store, tmp_path):
    method, overrides = xor_method
    spec = make_spec("xor", method, seed=0, hparams=overrides, iterations=300, eval_every=100)
    task = spec.task
    plain_types = [type(m) for m in task.architecture().modules()]
    seen: list[dict] = []

    def check(pruner: Pruner, model: nn.Module, data) -> dict:  # noqa: ARG001
        net = pruner.deployed(model)
        assert type(net) is type(task.architecture())
        assert [type(m) for m in net.modules()] == plain_types, "deployed network has non-plain modules"
        assert not any(parametrize.is_parametrized(m) for m in net.modules())
        counts = measure_compression(net, reference=task.architecture())
        record = {"independent": independent_nonzero(net), "measured": counts.weights_nonzero,
                  "kept": method_kept(pruner, model), "total": counts.weights_total}
        seen.append(record)
        return record

    result = train(spec, store, tmp_path, device="cpu", observer=Measure(check))
    assert result.status == "finished"
    points = store.trajectory(result.run_id)
    assert [p["step"] for p in points] == [100, 200, 300] and len(seen) == 3
    for point, record in zip(points, seen, strict=True):
        assert record["independent"] == record["measured"] == point["weights_nonzero"] == record["kept"], record
        assert record["total"] == point["weights_total"] == 15
    final = store.final_row(result.run_id)
    assert final["weights_nonzero"] == result.final["weights_nonzero"] == seen[-1]["independent"]
    if method in ("magnitude", "dns", "sparse-vd", "dst", "ltp", "autoprune", "l0", "gmp", "rigl"):
        assert 0 < final["weights_nonzero"] < 15, f"{method} should prune part of XOR's 15 weights"


def test_deployed_network_is_independent_of_the_trained_model(xor_methods):
    """Changing the deployed copy never touches the trained model (and vice versa)."""
    from prunebench.registry import get_method

    for method, overrides in xor_methods.items():
        spec = make_spec("xor", method, hparams=overrides)
        pruner = get_method(method)(spec.hparams, spec.task)
        model = pruner.attach(spec.task.build_model(0))
        pruner.phases(spec.protocol)
        net = pruner.deployed(model)
        before = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), method
