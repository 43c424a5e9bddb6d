"""Sensitivity-driven regularisation: the output sensitivity against hand derivatives and independent
autograd loops, one update step against the formula (SGD and Adam), the threshold and the deployed mask,
the schedule, the state round trip, and a short XOR run through the harness."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import xor_weights
from prunebench.methods import sensitivity
from prunebench.methods.sensitivity import (
    SensitivityHparams,
    SensitivityRegularisation,
    insensitivity,
    output_sensitivity,
    output_values,
    per_example_output_sensitivity,
)
from torch import nn

from prunebench.harness import train, training_step
from prunebench.metrics import measure_compression
from prunebench.observers import Measure
from prunebench.protocol import Phase
from prunebench.registry import get_task
from prunebench.request import make_spec

# A tiny 2-layer net with C = 3 outputs: y = W2 tanh(W1 x + b1) + b2.
gen = torch.Generator().manual_seed(0)
W1 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
B1 = torch.randn(4, generator=gen, dtype=torch.float64)
W2 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
B2 = torch.randn(3, generator=gen, dtype=torch.float64)
X = torch.randn(5, 3, generator=gen, dtype=torch.float64)

# XOR's fc1 (5x2) and fc2 (1x5): 15 weights, and a batch of the four corners.
FC1, FC2 = xor_weights(torch.float64)
XOR_X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
XOR_Y = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)
# Overrides under which sensitivity prunes part of XOR's 15 weights within 300 iterations (seeds 0 and 1).
XOR_OVERRIDES = {"lam": 2.0}


def tiny_net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        net[0].weight.copy_(W1)
        net[0].bias.copy_(B1)
        net[2].weight.copy_(W2)
        net[2].bias.copy_(B2)
    return net


def test_batch_mean_logit_sensitivity_is_the_hand_derivative():
    """d mean_n(y_k)/dW2[k', j] = [k = k'] mean_n h_nj and d mean_n(y_k)/dW1[j, i] = W2[k, j] mean_n (1 - h_nj^2) x_ni,
    so S_W2 = |mean_n h_nj| / C (one output per row) and S_W1 = |mean_n (1 - h^2) x| * sum_k |W2[k, j]| / C."""
    net = tiny_net()
    h = torch.tanh(X @ W1.T + B1)
    s_w2 = (h.mean(0).abs() / 3).expand(3, 4)
    s_w1 = ((1 - h**2).T @ X / 5).abs() * W2.abs().sum(0).unsqueeze(1) / 3
    s1, s2 = output_sensitivity(output_values(net(X), "logits"), [net[0].weight, net[2].weight])
    torch.testing.assert_close(s1, s_w1, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s2, s_w2, rtol=1e-12, atol=1e-15)


def independent(outputs: str, per_example: bool) -> list[torch.Tensor]:
    """S by brute force: one torch.autograd.grad per output (and per example), each on its own forward."""
    net = tiny_net()
    weights = [net[0].weight, net[2].weight]
    totals = [torch.zeros_like(w) for w in weights]
    rows = [X[n:n + 1] for n in range(5)] if per_example else [X]
    for x in rows:
        for k in range(3):
            logits = net(x)
            y = torch.softmax(logits, dim=1) if outputs == "softmax" else logits
            for total, g in zip(totals, torch.autograd.grad(y[:, k].mean(), weights), strict=True):
                total += g.abs()
    return [total / (3 * len(rows)) for total in totals]


@pytest.mark.parametrize("outputs", ["logits", "softmax"])
def test_output_sensitivity_against_a_loop_over_outputs_and_examples(outputs):
    net = tiny_net()
    got = output_sensitivity(output_values(net(X), outputs), [net[0].weight, net[2].weight])
    for a, b in zip(got, independent(outputs, per_example=False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for chunk in (2, 16):  # chunks of 2 leave a last chunk of 1
        got = per_example_output_sensitivity(tiny_net(), X, ["0", "2"], outputs, chunk=chunk)
        for a, b in zip(got, independent(outputs, per_example=True), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    # The two readings differ here: signs cancel in the batch mean, not in the mean of magnitudes.
    assert not torch.allclose(independent(outputs, False)[0], independent(outputs, True)[0])


def test_softmax_of_one_logit_is_its_sigmoid():
    z = torch.tensor([[-1.0], [0.5]])
    torch.testing.assert_close(output_values(z, "softmax"), torch.sigmoid(z))
    torch.testing.assert_close(output_values(z, "logits"), z)


def test_insensitivity_on_known_numbers():
    s = torch.tensor([0.0, 0.25, 1.0, 3.0])
    assert insensitivity(s).tolist() == [1.0, 0.75, 0.0, 0.0]
    assert insensitivity(s, "layer-max").tolist() == pytest.approx([1.0, 1 - 0.25 / 3, 2 / 3, 0.0])
    assert insensitivity(torch.zeros(3), "layer-max").tolist() == [1.0, 1.0, 1.0]


def xor_pruner(budget: str = "paper", **hp) -> tuple[SensitivityRegularisation, nn.Module]:
    """A pruner on XOR's net in float64 with FC1/FC2 as weights and zero biases."""
    task = get_task("xor")
    pruner = SensitivityRegularisation(SensitivityHparams(**hp), task, budget)
    model = pruner.attach(task.build_model(0)).double()
    with torch.no_grad():
        model.fc1.weight.copy_(FC1)
        model.fc2.weight.copy_(FC2)
        model.fc1.bias.zero_()
        model.fc2.bias.zero_()
    return pruner, model


def start_regularise(pruner: SensitivityRegularisation, model: nn.Module,
                     optimizer: torch.optim.Optimizer | None = None, iterations: int = 10) -> torch.optim.Optimizer:
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.on_phase_start(Phase("regularise", iterations, optimizer.param_groups[0]["lr"]), model, optimizer)
    return optimizer


def resume(checkpoint: bytes, lr: float, iterations: int, **hp) -> tuple[SensitivityRegularisation, nn.Module,
                                                                          torch.optim.Optimizer]:
    """Pruner, model and Adam optimizer rebuilt from checkpoint bytes in the regularise phase, as the harness
    resumes a run (loaded with weights_only=True). Each call loads its own copy: the optimizer keeps the
    loaded Adam moments, which its steps then update in place."""
    saved = torch.load(io.BytesIO(checkpoint), weights_only=True)
    pruner, model = xor_pruner(**hp)
    model.load_state_dict(saved["model"])
    pruner.load_state_dict(saved["pruner"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    pruner.on_resume(Phase("regularise", iterations, lr), model, optimizer)
    optimizer.load_state_dict(saved["optimizer"])
    return pruner, model, optimizer


def checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, pruner: SensitivityRegularisation) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "pruner": pruner.state_dict()},
               buffer)
    return buffer.getvalue()


def xor_reference(sensitivity_kind: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """dL/dw and S for fc1, fc2 at FC1/FC2 on the four corners, by hand (sigmoid hidden units, one logit)."""
    h = torch.sigmoid(XOR_X @ FC1.T)  # (4, 5)
    z = h @ FC2.T
    dz = (torch.sigmoid(z) - XOR_Y) / 4  # d mean BCE / dz
    grads = {"fc2": dz.T @ h, "fc1": ((dz @ FC2) * h * (1 - h)).T @ XOR_X}
    if sensitivity_kind == "loss":
        return grads, {name: g.abs() for name, g in grads.items()}
    # One output: S_fc2 = |mean_n h_nj|, S_fc1 = |FC2_j mean_n h_nj (1 - h_nj) x_ni|.
    return grads, {"fc2": h.mean(0, keepdim=True).abs(),
                   "fc1": (FC2.T * (h * (1 - h)).T @ XOR_X / 4).abs()}


@pytest.mark.parametrize("kind", ["output", "loss"])
def test_one_sgd_step_is_the_papers_update(kind):
    """w_{t+1} = w_t - lr dL/dw - lr lam w_t max(0, 1 - S), with S and dL/dw computed by hand."""
    lr, lam = 0.1, 0.3
    pruner, model = xor_pruner(lam=lam, sensitivity=kind)
    optimizer = start_regularise(pruner, model, torch.optim.SGD(model.parameters(), lr=lr))
    grads, sens = xor_reference(kind)
    assert sens["fc1"].max() < 1 and (sens["fc1"] > 0).all()  # every weight is partly insensitive here
    training_step(model, get_task("xor"), pruner, optimizer, XOR_X, XOR_Y, step=1)
    for name, w in (("fc1", FC1), ("fc2", FC2)):
        expected = w - lr * grads[name] - lr * lam * w * (1 - sens[name]).clamp(min=0)
        torch.testing.assert_close(model.get_submodule(name).weight.detach(), expected, rtol=1e-12, atol=1e-14)
    assert pruner.base == {} and pruner.sensitivities == {}  # per-step records are consumed


def test_decoupled_step_under_adam_and_fixed_decay():
    """Under Adam the shrinkage is added after the optimizer's own update, from w_t (not the Adam-moved w);
    decay_step 'fixed' drops the lr from it."""
    lr, lam = 0.05, 0.2
    grads, sens = xor_reference("output")
    for decay_step, rate in (("lr", lr * lam), ("fixed", lam)):
        pruner, model = xor_pruner(lam=lam, decay_step=decay_step)
        optimizer = start_regularise(pruner, model, torch.optim.Adam(model.parameters(), lr=lr))
        reference = nn.ParameterDict({"fc1": nn.Parameter(FC1.clone()), "fc2": nn.Parameter(FC2.clone())})
        reference_opt = torch.optim.Adam(reference.parameters(), lr=lr)
        for name in ("fc1", "fc2"):
            reference[name].grad = grads[name].clone()
        reference_opt.step()
        training_step(model, get_task("xor"), pruner, optimizer, XOR_X, XOR_Y, step=1)
        for name, w in (("fc1", FC1), ("fc2", FC2)):
            expected = reference[name].detach() - rate * w * (1 - sens[name]).clamp(min=0)
            torch.testing.assert_close(model.get_submodule(name).weight.detach(), expected, rtol=1e-10, atol=1e-12)


def test_sensitive_weights_are_not_decayed():
    """S >= 1 gives Sbar = 0: with lr 0 the optimizer moves nothing and 'fixed' decay leaves such weights be."""
    pruner, model = xor_pruner(lam=0.5, decay_step="fixed", sensitivity="loss")
    optimizer = start_regularise(pruner, model)
    with torch.no_grad():
        model.fc2.weight.mul_(5.0)  # |dL/dfc1| from 0.31 to 1.56: rows 4-5 are sensitive (S > 1)
    x, y = XOR_X, XOR_Y
    training_step(model, get_task("xor"), pruner, optimizer, x, y, step=1)
    model2 = xor_pruner()[1]
    with torch.no_grad():
        model2.fc2.weight.mul_(5.0)
    get_task("xor").loss(model2(x), y).backward()
    grads = model2.fc1.weight.grad
    sbar = (1 - grads.abs()).clamp(min=0)
    assert (sbar == 0).any() and (sbar > 0).any()
    torch.testing.assert_close(model.fc1.weight.detach(), FC1 - 0.5 * FC1 * sbar, rtol=1e-12, atol=1e-14)
    assert torch.equal(model.fc1.weight.detach()[sbar == 0], FC1[sbar == 0])


def test_no_regulariser_while_pretraining_or_outside_training():
    pruner, model = xor_pruner(lam=0.5, decay_step="fixed")  # would shrink even at lr 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.on_phase_start(Phase("pretrain", 10, 0.0), model, optimizer)
    training_step(model, get_task("xor"), pruner, optimizer, XOR_X, XOR_Y, step=1)
    assert torch.equal(model.fc1.weight.detach(), FC1) and not pruner.keep  # no shrinkage, no mask
    start_regularise(pruner, model)
    with torch.no_grad():
        model(XOR_X)
    model.eval()
    model(XOR_X)
    assert pruner.base == {}  # the hook records training forward passes only


def test_threshold_and_deployed_mask():
    # |FC1| = 0.1 ... 1.0; threshold 0.5 (exact in binary): 0.1 ... 0.4 pruned, 0.5 kept (pruned iff |w| < T).
    pruner, model = xor_pruner(threshold_rule="absolute", threshold=0.5)
    start_regularise(pruner, model)
    assert pruner.limits == {"fc1": 0.5, "fc2": 0.5}
    assert pruner.deployed(model).fc1.weight.count_nonzero() == 10  # no mask before the first thresholding
    pruner.prune()
    expected = FC1.abs() >= 0.5
    assert expected.sum() == 6
    net = pruner.deployed(model)
    task = get_task("xor")
    assert [type(m) for m in net.modules()] == [type(m) for m in task.architecture().modules()]
    assert net.fc1.weight.dtype == torch.float32  # the task's plain network, whatever the trained copy's dtype
    assert torch.equal(net.fc1.weight.detach(), (FC1 * expected).float())
    assert torch.equal(net.fc1.weight == 0, FC1.abs() < 0.5)
    assert torch.equal(net.fc2.weight.detach(), FC2.float())  # all of fc2 is above 0.5
    assert pruner.masks(model)["fc1"].tolist() == expected.tolist()
    assert measure_compression(net).weights_nonzero == 11
    torch.testing.assert_close(pruner.scores(model)["fc1"], FC1.abs() * expected)
    # A pruned weight never returns: pushed back above T, it is zeroed again.
    with torch.no_grad():
        model.fc1.weight.fill_(1.0)
    pruner.prune()
    assert torch.equal(model.fc1.weight.detach(), expected.double())


def test_layer_std_threshold_uses_the_pretrained_std():
    pruner, model = xor_pruner(threshold=0.5)  # threshold_rule "layer-std" (default)
    start_regularise(pruner, model)
    # std(|FC1| pattern) population: values +-0.1 ... +-1.0; std(FC2) of 1,-2,3,-4,5.
    std1, std2 = FC1.std(correction=0).item(), FC2.std(correction=0).item()
    assert pruner.limits == {"fc1": pytest.approx(0.5 * std1, rel=1e-12), "fc2": pytest.approx(0.5 * std2, rel=1e-12)}
    with torch.no_grad():
        model.fc1.weight.mul_(0.1)  # the limit stays where it was
    pruner.prune()
    assert int(pruner.keep["fc1"].sum()) == int((FC1.abs() * 0.1 >= 0.5 * std1).sum()) == 0
    assert int(pruner.keep["fc2"].sum()) == int((FC2.abs() >= 0.5 * std2).sum()) == 4


def test_thresholding_schedule_every_prune_every_and_at_the_phase_end():
    pruner, model = xor_pruner(lam=0.0, threshold_rule="absolute", threshold=0.25, prune_every=4)
    optimizer = start_regularise(pruner, model, iterations=6)
    task = get_task("xor")
    seen = []
    for step in range(1, 7):
        training_step(model, task, pruner, optimizer, XOR_X, XOR_Y, step=step)
        seen.append(bool(pruner.keep))
    assert seen == [False, False, False, True, True, True]
    assert int(pruner.keep["fc1"].sum()) == 8
    # At the phase's last step even when prune_every does not divide it.
    pruner, model = xor_pruner(lam=0.0, threshold_rule="absolute", threshold=0.25, prune_every=100)
    optimizer = start_regularise(pruner, model, iterations=3)
    for step in range(1, 4):
        training_step(model, task, pruner, optimizer, XOR_X, XOR_Y, step=step)
        assert bool(pruner.keep) == (step == 3)


def test_phases_under_both_budgets():
    task = get_task("xor")
    paper = SensitivityRegularisation(SensitivityHparams(regularise_lr_factor=0.5), task, "paper")
    phases = paper.phases(task.protocol)
    assert [(p.name, p.iterations) for p in phases] == [("pretrain", 10_000), ("regularise", 14_000)]
    assert [p.lr for p in phases] == pytest.approx([task.protocol.lr, 0.5 * task.protocol.lr])
    equal = SensitivityRegularisation(SensitivityHparams(), task, "equal")
    for total, split in [(10_000, (4_167, 5_833)), (300, (125, 175)), (2, (1, 1))]:
        assert tuple(p.iterations for p in equal.phases(task.protocol.with_overrides(iterations=total))) == split
    with pytest.raises(ValueError, match="at least 2"):
        equal.phases(task.protocol.with_overrides(iterations=1))


def test_validation_and_refusals():
    for bad in (dict(lam=-1.0), dict(threshold=-0.1), dict(prune_every=0), dict(pretrain_iterations=0),
                dict(regularise_iterations=0), dict(regularise_lr_factor=0.0), dict(sensitivity="hessian"),
                dict(outputs="probits"), dict(reduction="sum"), dict(normalise="l2"), dict(decay_step="adam"),
                dict(threshold_rule="global")):
        with pytest.raises(ValueError):
            SensitivityHparams(**bad).validate()
    pruner = SensitivityRegularisation(SensitivityHparams(reduction="per-example"), get_task("xor"))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        pruner.attach(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)))
    assert SensitivityRegularisation.ddp_refusal and SensitivityRegularisation.provenance == "reconstruction"
    assert sensitivity.SensitivityRegularisation.name == "sensitivity"


def test_per_example_through_the_hook():
    pruner, model = xor_pruner(lam=0.3, reduction="per-example", decay_step="fixed")
    start_regularise(pruner, model)
    model(XOR_X)
    h = torch.sigmoid(XOR_X @ FC1.T)
    torch.testing.assert_close(pruner.sensitivities["fc2"], h.mean(0, keepdim=True), rtol=1e-12, atol=1e-15)
    s1 = (FC2.T.abs() * ((h * (1 - h)).T @ XOR_X) / 4)  # all terms positive: the mean of magnitudes
    torch.testing.assert_close(pruner.sensitivities["fc1"], s1, rtol=1e-12, atol=1e-15)


def test_state_round_trip_continues_bit_for_bit():
    task = get_task("xor")
    pruner, model = xor_pruner(lam=0.5, threshold_rule="absolute", threshold=0.35, prune_every=2)
    pruner.steps_done = 7  # as if a pretrain phase of 7 steps had run
    optimizer = start_regularise(pruner, model, torch.optim.Adam(model.parameters(), lr=0.01), iterations=50)
    assert (pruner.phase_start, pruner.phase_end) == (7, 57)
    for step in range(8, 12):
        training_step(model, task, pruner, optimizer, XOR_X, XOR_Y, step=step)
    state = pruner.state_dict()
    assert state["keep"] and state["steps_done"] == 11 and state["phase_start"] == 7
    assert 0 < sum(int(m.sum()) for m in state["keep"].values()) < 15
    # Through bytes, as a checkpoint is written and read.
    fresh, fresh_model, fresh_optimizer = resume(checkpoint_bytes(model, optimizer, pruner), 0.01, 50, lam=0.5,
                                                 threshold_rule="absolute", threshold=0.35, prune_every=2)
    assert repr(fresh.state_dict()) == repr(state) and fresh.active and fresh.optimizer is fresh_optimizer
    for step in range(12, 15):  # the last step, 14, does not threshold (7 steps into the phase)
        training_step(model, task, pruner, optimizer, XOR_X, XOR_Y, step=step)
        training_step(fresh_model, task, fresh, fresh_optimizer, XOR_X, XOR_Y, step=step)
    for a, b in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert repr(fresh.state_dict()) == repr(pruner.state_dict())
    # Adam moved every weight; the pruned ones, and their Adam moments, are exactly zero again.
    for name in ("fc1", "fc2"):
        pruned = ~pruner.keep[name]
        weight = model.get_submodule(name).weight
        assert (weight[pruned] == 0).all() and (optimizer.state[weight]["exp_avg"][pruned] == 0).all()


def test_xor_run_through_the_harness_prunes_and_finishes(store, tmp_path):
    spec = make_spec("xor", "sensitivity", seed=0, hparams=XOR_OVERRIDES, iterations=300, eval_every=100)
    seen: list[dict] = []

    def check(pruner, model, data) -> dict:  # noqa: ARG001
        net = pruner.deployed(model)
        assert [type(m) for m in net.modules()] == [type(m) for m in spec.task.architecture().modules()]
        record = {"measured": measure_compression(net).weights_nonzero,
                  "kept": sum(int(mask.sum()) for mask in pruner.masks(model).values())}
        seen.append(record)
        return record

    result = train(spec, store, tmp_path, device="cpu", observer=Measure(check))
    assert result.status == "finished"
    points = store.trajectory(result.run_id)
    assert [p["step"] for p in points] == [100, 200, 300]
    assert [p["phase"] for p in points] == ["pretrain", "regularise", "regularise"]
    for point, record in zip(points, seen, strict=True):
        assert record["measured"] == record["kept"] == point["weights_nonzero"], record
    assert points[0]["weights_nonzero"] == 15  # dense while pretraining
    assert 0 < result.final["weights_nonzero"] < 15, "sensitivity should prune part of XOR's 15 weights"


def test_refresh_every_reuses_the_sensitivity_between_refreshes_and_checkpoints_it():
    """refresh_every 3: S of the phase's steps 1-2 is step 0's (while the weights move), step 3 computes it
    afresh; a run stopped mid-window continues bit for bit from its checkpoint."""
    task = get_task("xor")
    pruner, model = xor_pruner(lam=0.5, threshold_rule="absolute", threshold=0.05, refresh_every=3)
    optimizer = start_regularise(pruner, model, torch.optim.Adam(model.parameters(), lr=0.05), iterations=20)
    seen = []
    for step in range(1, 6):
        model(XOR_X)  # the hook fills `sensitivities` as a training forward pass does
        seen.append({name: s.clone() for name, s in pruner.sensitivities.items()})
        pruner.base, pruner.sensitivities = {}, {}
        training_step(model, task, pruner, optimizer, XOR_X, XOR_Y, step=step)
        if step == 2:
            checkpoint = checkpoint_bytes(model, optimizer, pruner)
    for name in ("fc1", "fc2"):
        assert torch.equal(seen[1][name], seen[0][name]) and torch.equal(seen[2][name], seen[0][name])
        assert not torch.equal(seen[3][name], seen[0][name])  # refreshed at step 3 of the phase, new weights
        assert torch.equal(seen[4][name], seen[3][name])
    hp = dict(lam=0.5, threshold_rule="absolute", threshold=0.05, refresh_every=3)
    fresh, fresh_model, fresh_optimizer = resume(checkpoint, 0.05, 20, **hp)
    reference, reference_model, reference_optimizer = resume(checkpoint, 0.05, 20, **hp)
    reference.cached = {}  # without the checkpointed S, step 3 would compute S at other weights
    for step in range(3, 6):
        training_step(fresh_model, task, fresh, fresh_optimizer, XOR_X, XOR_Y, step=step)
        training_step(reference_model, task, reference, reference_optimizer, XOR_X, XOR_Y, step=step)
    for a, b in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), reference_model.parameters(), strict=True))


# -- cut_rule plateau (LOBSTER's protocol family; issue 31) -------------------------------------------------
def _regularising(task: str = "lenet300", **hp) -> tuple[SensitivityRegularisation, nn.Module]:
    spec_task = get_task(task)
    torch.manual_seed(0)
    pruner = SensitivityRegularisation(SensitivityHparams(sensitivity="loss", **hp), spec_task)
    model = pruner.attach(spec_task.build_model(0))
    phases = pruner.phases(spec_task.protocol)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.on_phase_start(phases[0], model, optimizer)
    pruner.on_phase_start(phases[1], model, optimizer)  # the regularise phase: active
    return pruner, model


def _pruned_fraction(net: nn.Module) -> float:
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_plateau_rule_waits_for_patience_then_cuts_the_largest_global_threshold_the_loss_allows():
    pruner, model = _regularising(cut_rule="plateau", patience=2, cut_tolerance=0.05, bisect_steps=14)
    calls = []

    def validation_loss(net: nn.Module) -> float:  # 1.0 until 30% of the weights are gone, then rising fast
        calls.append(1)
        return 1.0 + 10 * max(0.0, _pruned_fraction(net) - 0.3)

    pruner.after_evaluation(model, validation_loss)  # first reading: the best so far
    assert pruner.best_loss == 1.0 and not pruner.keep
    pruner.after_evaluation(model, validation_loss)  # no improvement: 1 of 2
    assert pruner.waited == 1 and not pruner.keep
    pruner.after_evaluation(model, validation_loss)  # 2 of 2: cut
    assert len(pruner.cuts) == 1 and pruner.waited == 0
    fraction = _pruned_fraction(pruner.deployed(model))
    assert 0.295 < fraction <= 0.305  # the largest cut within +5% of the loss: 30% + 0.5% of the weights
    limit = pruner.cuts[0][1]
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for _, m in pruner.layers])
    assert float(magnitudes[magnitudes > 0].min()) >= limit  # one global threshold: nothing below it is kept
    assert limit < float(magnitudes[magnitudes > 0].mean())


def test_plateau_rule_needs_a_validation_split_and_the_threshold_rule_ignores_evaluations():
    pruner, model = _regularising(cut_rule="plateau")
    with pytest.raises(ValueError, match="--validation"):
        pruner.after_evaluation(model, None)
    threshold, model = _regularising()
    threshold.after_evaluation(model, lambda net: 1.0)
    assert threshold.best_loss == float("inf") and not threshold.cuts


def test_a_run_gives_the_method_the_validation_loss_of_the_split(store, tmp_path, monkeypatch):
    """The harness hands `after_evaluation` the mean task loss over the held-out samples (XOR: 1,000), not the
    test set's, and the plateau rule cuts from it during the run."""
    seen: list[tuple[float, float]] = []
    original = SensitivityRegularisation.after_evaluation

    def spy(self, model, validation_loss):
        if validation_loss is not None and self.active:
            net = self.deployed(model)
            source = validation_loss.__self__.source
            x, y = source.validation
            with torch.no_grad():
                expected = float(get_task("xor").loss(net(x), y))
            seen.append((validation_loss(net), expected))
        return original(self, model, validation_loss)

    monkeypatch.setattr(SensitivityRegularisation, "after_evaluation", spy)
    spec = make_spec("xor", "sensitivity", hparams={"sensitivity": "loss", "cut_rule": "plateau", "patience": 1,
                                                    "lam": 0.5}, iterations=1000, eval_every=50,
                     protocol={"validation": 1000})
    result = train(spec, store, tmp_path, device="cpu")
    assert result.status == "finished" and len(seen) >= 5
    assert all(got == pytest.approx(expected, rel=1e-5) for got, expected in seen)
    nonzero = [p["weights_nonzero"] for p in store.trajectory(result.run_id)]
    assert nonzero == sorted(nonzero, reverse=True)  # cuts only remove
