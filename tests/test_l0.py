"""L0 regularisation with hard-concrete gates: the gate sample and how often it is exactly 0 or 1, the
closed-form expected L0, the test-time gate, one gate per unit per minibatch, the penalty, the log alpha
clamp, and the deployed network (plain, same outputs as the gated model in eval mode, kept units x fan)."""

from __future__ import annotations

import math

import pytest
import torch
from prunebench.methods.l0 import (
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    L0Conv2d,
    L0Hparams,
    L0Linear,
    L0Regularization,
    deterministic_gate,
    expected_l0,
    hard_concrete,
    log_alpha_init,
    sample_gates,
)
from torch import nn

from prunebench.harness import train
from prunebench.metrics import measure_compression
from prunebench.observers import Measure
from prunebench.registry import get_task
from prunebench.request import make_spec

# By hand: beta = 2/3, -gamma/zeta = 1/11, and 11^(2/3) = 4.946087.
# z = 0  <=>  s <= -gamma/(zeta - gamma) = 1/12  <=>  (logit u + la)/beta <= -log 11
#        <=>  u <= sigmoid(-beta log 11 - la),  so P(z = 0) = 1 / (1 + 4.946087 e^la);
# z = 1  <=>  s >= 11/12, so P(z = 1) = 1 / (1 + 4.946087 e^-la).
ELEVEN_POW_BETA = 4.946087


@pytest.mark.parametrize("log_alpha,p_zero,p_one", [
    (0.0, 0.168178, 0.168178),   # 1 / 5.946087 both
    (-1.0, 0.354665, 0.069229),  # 1 / (1 + 4.946087 * 0.367879) = 1 / 2.819555; 1 / (1 + 4.946087 * 2.718282)
    (2.0, 0.026633, 0.599025),   # 1 / (1 + 4.946087 * 7.389056); 1 / (1 + 4.946087 * 0.135335)
])
def test_train_time_gates_lie_in_unit_interval_and_hit_0_and_1_as_the_closed_form_says(log_alpha, p_zero, p_one):
    assert 1 / (1 + ELEVEN_POW_BETA * math.exp(log_alpha)) == pytest.approx(p_zero, abs=1e-6)
    assert 1 / (1 + ELEVEN_POW_BETA * math.exp(-log_alpha)) == pytest.approx(p_one, abs=1e-6)
    torch.manual_seed(0)
    n = 200_000
    z = sample_gates(torch.full((n,), log_alpha, dtype=torch.float64))
    assert z.min() >= 0 and z.max() <= 1
    for observed, p in ((float((z == 0).double().mean()), p_zero), (float((z == 1).double().mean()), p_one)):
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n), (observed, p)
    inside = (z > 0) & (z < 1)
    assert float(inside.double().mean()) == pytest.approx(1 - p_zero - p_one, abs=0.01)


@pytest.mark.parametrize("u,log_alpha,z", [
    # logit u, / beta, sigmoid -> s, clamp(1.2 s - 0.1, 0, 1):
    (0.6, 0.0, 0.677035),   # log 1.5 = 0.405465; 0.608198; s = 0.647530
    (0.6, -1.0, 0.248886),  # -0.594535 / (2/3) = -0.891802; s = 0.290738
    (0.3, 1.0, 0.568417),   # -0.847298 + 1 = 0.152702; 0.229053; s = 0.557014
    (0.9, 0.0, 1.0),        # 3.295837; s = 0.964286; 1.057143 -> 1
    (0.3, -1.0, 0.0),       # -2.770947; s = 0.058914; -0.029303 -> 0
])
def test_hard_concrete_sample_by_hand(u, log_alpha, z):
    got = hard_concrete(torch.tensor(log_alpha, dtype=torch.float64), torch.tensor(u, dtype=torch.float64))
    assert got.item() == pytest.approx(z, abs=1e-6)


@pytest.mark.parametrize("log_alpha,expected", [
    # sigmoid(la - beta log(1/11)) = 1 / (1 + e^-la / 4.946087):
    (-4.0, 0.083066),  # e^4 / 4.946087 = 11.03866
    (-1.0, 0.645335),  # e / 4.946087 = 0.549582
    (0.0, 0.831822),   # 1 / 4.946087 = 0.202180
    (1.0, 0.930771),   # e^-1 / 4.946087 = 0.074378
    (2.5, 0.983675),   # e^-2.5 / 4.946087 = 0.016596
])
def test_expected_l0_by_hand(log_alpha, expected):
    assert expected_l0(torch.tensor(log_alpha, dtype=torch.float64)).item() == pytest.approx(expected, abs=1e-6)


def test_expected_l0_is_the_sampled_frequency_of_non_zero_gates():
    torch.manual_seed(1)
    log_alpha = torch.tensor([-3.0, -1.5, 0.5, 3.0], dtype=torch.float64)
    n = 100_000
    z = sample_gates(log_alpha.expand(n, 4).clone())
    torch.testing.assert_close((z != 0).double().mean(0), expected_l0(log_alpha), atol=5 * math.sqrt(0.25 / n), rtol=0)


@pytest.mark.parametrize("log_alpha,gate", [
    (0.0, 0.5),                 # 0.5 * 1.2 - 0.1
    (math.log(3.0), 0.8),       # sigmoid = 3/4: 0.9 - 0.1
    (-math.log(3.0), 0.2),      # sigmoid = 1/4: 0.3 - 0.1
    (-3.0, 0.0),                # sigmoid = 0.047426: -0.043089 -> 0
    (-math.log(1e2), 0.0),      # the clamp's lower end: sigmoid = 1/101 -> 0
    (3.0, 1.0),                 # sigmoid = 0.952574: 1.043089 -> 1
])
def test_deterministic_gate_by_hand(log_alpha, gate):
    assert deterministic_gate(torch.tensor(log_alpha, dtype=torch.float64)).item() == pytest.approx(gate, abs=1e-9)


def _pruner(task_name: str, **hp) -> tuple[L0Regularization, nn.Module]:
    task = get_task(task_name)
    pruner = L0Regularization(L0Hparams(**hp), task)
    model = pruner.attach(task.build_model(0))
    return pruner, model


def test_log_alpha_starts_at_the_initial_drop_rate():
    assert log_alpha_init(0.5) == 0.0
    assert log_alpha_init(0.2) == pytest.approx(math.log(4.0))
    _, mlp = _pruner("lenet300")
    assert [m.log_alpha.numel() for m in (mlp.fc1, mlp.fc2, mlp.fc3)] == [784, 300, 100]  # input features
    assert mlp.fc1.log_alpha.mean().item() == pytest.approx(math.log(4.0), abs=2e-3)  # network input: 0.2
    assert mlp.fc2.log_alpha.mean().item() == pytest.approx(0.0, abs=5e-3)
    assert 0.005 < mlp.fc2.log_alpha.std().item() < 0.015  # N(mean, 0.01^2) as in the code
    _, lenet5 = _pruner("lenet5")
    assert [m.log_alpha.numel() for m in (lenet5.conv1, lenet5.conv2, lenet5.fc1, lenet5.fc2)] == [20, 50, 800, 500]
    assert lenet5.conv1.log_alpha.abs().max().item() < 0.05  # a conv first layer gates filters: 0.5


def test_one_gate_sample_per_unit_shared_by_the_minibatch():
    torch.manual_seed(0)
    linear = L0Linear(nn.Linear(4, 3))
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3, 4))
        linear.bias.zero_()
    x = torch.ones(16, 4)
    out = linear(x)  # training mode: row i is (z_0, z_1, z_2), the same z for every example
    assert torch.equal(out, out[:1].expand_as(out))
    draws = torch.stack([linear(x)[0] for _ in range(200)])
    assert draws.min() >= 0 and draws.max() <= 1 and draws.std(0).min() > 0.1  # resampled every minibatch
    linear.eval()
    torch.testing.assert_close(linear(x)[0], deterministic_gate(linear.log_alpha.detach())[:3])

    conv = L0Conv2d(nn.Conv2d(2, 6, 3))
    images = torch.randn(1, 2, 5, 5).expand(8, 2, 5, 5)
    out = conv(images)
    assert torch.equal(out, out[:1].expand_as(out))


def test_gradient_reaches_log_alpha_through_the_sample_and_the_penalty():
    pruner, model = _pruner("lenet5", lam=(1.0,))
    loss = model(torch.rand(4, 1, 28, 28)).sum() + pruner.penalty()
    loss.backward()
    for _, layer in pruner.layers:
        assert layer.log_alpha.grad is not None and layer.log_alpha.grad.abs().sum() > 0


def test_penalty_is_lambda_over_n_times_expected_non_zero_weights():
    pruner, model = _pruner("lenet5", lam=(0.1,))
    with torch.no_grad():
        for _, layer in pruner.layers:
            layer.log_alpha.zero_()
    # All gates at log alpha 0: penalty = 0.1 / 60,000 * 430,500 weights * 0.831822 = 0.596832.
    assert pruner.penalty().item() == pytest.approx(0.596832, rel=1e-5)

    pruner, model = _pruner("lenet5", lam=(1.0, 2.0, 3.0, 4.0), weight_decay=0.5)
    with torch.no_grad():
        for _, layer in pruner.layers:
            layer.log_alpha.uniform_(-4, 4)
    fans = {"conv1": 25, "conv2": 500, "fc1": 500, "fc2": 10}  # 1*5*5, 20*5*5, fc out_features
    expected = 0.0
    for (name, layer), lam in zip(pruner.layers, (1.0, 2.0, 3.0, 4.0), strict=True):
        p = expected_l0(layer.log_alpha.detach())
        weight = layer.weight.detach()
        norms = weight.pow(2).sum((1, 2, 3)) if weight.dim() == 4 else weight.pow(2).sum(0)
        expected += float((lam / 60_000 * fans[name] * p).sum() + 0.25 * (p * norms).sum())
    assert pruner.penalty().item() == pytest.approx(expected, rel=1e-5)


def test_log_alpha_is_clamped_after_each_step():
    pruner, model = _pruner("lenet300")
    with torch.no_grad():
        model.fc1.log_alpha[:2] = torch.tensor([-10.0, 10.0])
    pruner.after_step(1)
    assert model.fc1.log_alpha[:2].tolist() == pytest.approx([math.log(1e-2), math.log(1e2)])
    for _, layer in pruner.layers:
        assert layer.log_alpha.min() >= LOG_ALPHA_MIN and layer.log_alpha.max() <= LOG_ALPHA_MAX


# (layer name, fan, unit dimension of the weight) by hand.
UNITS = {
    "xor": [("fc1", 5, 1), ("fc2", 1, 1)],
    "lenet300": [("fc1", 300, 1), ("fc2", 100, 1), ("fc3", 10, 1)],
    "lenet5": [("conv1", 25, 0), ("conv2", 500, 0), ("fc1", 500, 1), ("fc2", 10, 1)],
}
INPUTS = {"xor": (64, 2), "lenet300": (64, 1, 28, 28), "lenet5": (64, 1, 28, 28)}


@pytest.mark.parametrize("task_name", list(UNITS))
def test_deployed_is_plain_computes_the_eval_model_and_keeps_units_times_fan(task_name):
    torch.manual_seed(3)
    task = get_task(task_name)
    pruner, model = _pruner(task_name, drop_unread_units=False)
    with torch.no_grad():
        for _, layer in pruner.layers:
            n = layer.log_alpha.numel()
            # a third of the units off, a third scaled by a gate in (0, 1), a third fully on
            layer.log_alpha.copy_(torch.tensor([-4.0, 0.3, 4.0]).repeat(n // 3 + 1)[:n])
            layer.bias.uniform_(-0.5, 0.5)
            layer.weight.normal_(0, 0.3)
    net = pruner.deployed(model)
    assert type(net) is type(task.architecture())
    assert [type(m) for m in net.modules()] == [type(m) for m in task.architecture().modules()]

    x = torch.rand(*INPUTS[task_name])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-6)
        net_before = [p.clone() for p in net.parameters()]
        model.train()
        model(x)  # a training-mode forward samples gates; the deployed copy is unaffected
    assert all(torch.equal(a, b) for a, b in zip(net_before, net.parameters(), strict=True))

    kept = 0
    for name, fan, dim in UNITS[task_name]:
        gates = deterministic_gate(model.get_submodule(name).log_alpha.detach())
        weight = net.get_submodule(name).weight.detach()
        per_unit_nonzero = (weight.movedim(dim, 0).reshape(weight.shape[dim], -1) != 0).sum(1)
        assert torch.equal(per_unit_nonzero, (gates > 0).long() * fan)
        # the gate value is folded into the weights: 0.3 gives gate sigmoid(0.3) * 1.2 - 0.1 = 0.590
        source = model.get_submodule(name).weight.detach()
        scale = gates.view(-1, *([1] * (source.dim() - 1))) if dim == 0 else gates.view(1, -1)
        torch.testing.assert_close(weight, source * scale)
        kept += int((gates > 0).sum()) * fan
    assert measure_compression(net).weights_nonzero == kept == pruner.kept_weights()
    assert 0 < kept < measure_compression(net).weights_total


def test_conv_bias_is_scaled_by_its_filter_gate():
    pruner, model = _pruner("lenet5")
    with torch.no_grad():
        model.conv1.log_alpha.copy_(torch.tensor([-4.0, 0.0, 4.0] * 6 + [0.0, 0.0]))
        model.conv1.bias.fill_(1.0)
        model.fc1.bias.fill_(1.0)
    net = pruner.deployed(model)
    assert net.conv1.bias[:3].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert torch.equal(net.fc1.bias, model.fc1.bias.detach())  # fc gates act on inputs: bias unchanged
    assert torch.equal(model.conv1.bias.detach(), torch.ones(20))  # the trained model is not modified


def test_scores_are_the_units_log_alpha_on_every_weight():
    pruner, model = _pruner("lenet5")
    scores = pruner.scores(model)
    assert scores["conv2"].shape == model.conv2.weight.shape
    assert torch.equal(scores["conv2"][7], model.conv2.log_alpha.detach()[7].expand(20, 5, 5))
    assert torch.equal(scores["fc1"][:, 11], model.fc1.log_alpha.detach()[11].expand(500))


def test_hyperparameter_checks():
    with pytest.raises(ValueError, match="lam"):
        make_spec("xor", "l0", hparams={"lam": (1.0, 2.0, 3.0)})  # xor has 2 prunable layers
    with pytest.raises(ValueError, match="lam"):
        make_spec("xor", "l0", hparams={"lam": (-1.0,)})
    with pytest.raises(ValueError, match="droprate_init"):
        make_spec("xor", "l0", hparams={"droprate_init": 1.0})
    assert make_spec("xor", "l0", hparams={"lam": "0,1000"}).hparams.lam == (0.0, 1000.0)


def test_xor_run_prunes_input_units_and_the_counts_agree(store, tmp_path):
    # A strong penalty on the two input gates of fc1 (fan 5 each), none on the five hidden-unit gates.
    spec = make_spec("xor", "l0", seed=0, hparams={"lam": (300.0, 0.0)}, iterations=300, eval_every=100)
    seen = []

    def check(pruner, model, data):  # noqa: ARG001
        net = pruner.deployed(model)
        seen.append((measure_compression(net).weights_nonzero, pruner.kept_weights()))
        for _, layer in pruner.layers:
            assert layer.log_alpha.min() >= LOG_ALPHA_MIN and layer.log_alpha.max() <= LOG_ALPHA_MAX
        return {}

    result = train(spec, store, tmp_path, device="cpu", observer=Measure(check))
    assert result.status == "finished"
    points = store.trajectory(result.run_id)
    assert all("trained_accuracy" in p for p in points)
    assert all(measured == kept for measured, kept in seen)
    assert seen[0][0] == 15  # log alpha moves about lr per step: no gate reaches -2.4 in 100 steps
    assert result.final["weights_nonzero"] == 10  # one input gate closed (5 weights), fc2's 5 weights kept


def test_units_the_next_layer_never_reads_are_dropped_by_hand_on_lenet300():
    pruner, model = _pruner("lenet300")
    with torch.no_grad():
        for _, layer in pruner.layers:
            n = layer.log_alpha.numel()
            layer.log_alpha.copy_(torch.tensor([-4.0, 0.3, 4.0]).repeat(n // 3 + 1)[:n])  # unit i % 3 == 0 off
    # fc1: 522 of 784 inputs open, and only the 200 hidden units fc2 reads keep their row; fc2: 200 open
    # inputs x the 66 units fc3 reads; fc3: 66 open inputs x 10.
    expected = 522 * 200 + 200 * 66 + 66 * 10
    net = pruner.deployed(model)
    assert measure_compression(net).weights_nonzero == pruner.kept_weights() == expected
    assert net.fc1.bias[0] == 0 and net.fc1.weight[0].abs().sum() == 0  # hidden unit 0: fc2 never reads it
    x = torch.rand(8, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-6)
    plain, _ = _pruner("lenet300", drop_unread_units=False)
    with torch.no_grad():
        for (_, a), (_, b) in zip(plain.layers, pruner.layers, strict=True):
            a.log_alpha.copy_(b.log_alpha)
    assert plain.kept_weights() == 522 * 300 + 200 * 100 + 66 * 10


def test_paper_budget_is_the_codes_200_epochs_at_the_protocol_lr_and_equal_is_the_protocol():
    lenet5 = get_task("lenet5")
    paper = L0Regularization(L0Hparams(), lenet5, budget="paper").phases(lenet5.protocol)
    assert [(p.iterations, p.lr) for p in paper] == [(200 * 600, 1e-3)]
    short = L0Regularization(L0Hparams(epochs=3), lenet5, budget="paper").phases(lenet5.protocol)
    assert [p.iterations for p in short] == [1800]
    equal = L0Regularization(L0Hparams(), lenet5, budget="equal").phases(lenet5.protocol)
    assert [(p.iterations, p.lr) for p in equal] == [(lenet5.protocol.iterations, lenet5.protocol.lr)]
    with pytest.raises(ValueError, match="epochs"):
        make_spec("xor", "l0", hparams={"epochs": 0})

