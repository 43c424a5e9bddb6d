"""AutoPruning (reconstruction): the channel mask keeps exactly ceil(r * C) units, the deployed network is
physically smaller and computes what the masked model computes, steps alternate, the FLOPs term."""

from __future__ import annotations

import math

import pytest
import torch
from prunebench.methods.autoprune import AutoPruneHparams, AutoPruning, channel_mask, kept_units
from torch import nn

from prunebench.harness import train
from prunebench.observers import Measure
from prunebench.protocol import Phase
from prunebench.registry import get_task
from prunebench.request import make_spec
from prunebench.structured import shrink


def _pruner(task_name: str, **hp) -> tuple[AutoPruning, nn.Module]:
    task = get_task(task_name)
    pruner = AutoPruning(AutoPruneHparams(**hp), task)
    model = pruner.attach(task.build_model(0))
    pruner.on_phase_start(Phase("train", 1, 1e-3), model, torch.optim.Adam(model.parameters(), lr=1e-3))
    return pruner, model


def test_mask_keeps_the_ceil_of_r_times_c_largest_units():
    norms = torch.tensor([0.5, 3.0, 0.1, 2.0, 1.0, 4.0, 0.2, 0.3, 0.4, 0.6])  # ranks: 5,1,3,4,0,...
    mask = channel_mask(norms, torch.tensor(0.35))  # r * C = 3.5: ranks 0-2 full, rank 3 half
    assert mask.tolist() == pytest.approx([0, 1, 0, 1, 0.5, 1, 0, 0, 0, 0])
    for r in (0.01, 0.1, 0.3, 0.35, 0.99, 1.0):
        assert int((channel_mask(norms, torch.tensor(r)) > 0).sum()) == kept_units(r, 10) == max(1, math.ceil(r * 10))


def test_deployed_lenet5_has_ceil_rc_channels_and_the_same_outputs():
    pruner, model = _pruner("lenet5")
    with torch.no_grad():
        for _, module in pruner.layers:
            module.parametrizations.bias.original.uniform_(0.1, 0.5)  # init: 0; > 0 keeps ReLUs open
    x = torch.randn(4, 1, 28, 28)
    model(x)  # records the output positions
    ratios = {"conv1": 0.33, "conv2": 0.5, "fc1": 0.071}
    with torch.no_grad():
        for name, r in ratios.items():
            pruner.rho[name].fill_(math.log(r / (1 - r)))
    net = pruner.deployed(model)
    assert net.conv1.out_channels == math.ceil(0.33 * 20) == 7
    assert net.conv2.in_channels == 7 and net.conv2.out_channels == 25
    assert net.fc1.in_features == 25 * 16 and net.fc1.out_features == math.ceil(0.071 * 500) == 36
    assert net.fc2.in_features == 36 and net.fc2.out_features == 10
    model.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)


def test_steps_alternate_between_weights_and_ratios():
    pruner, model = _pruner("lenet300", rho_init=0.0)
    x, y = torch.randn(8, 784), torch.randint(0, 10, (8,))
    rho_before = pruner.rho["fc1"].detach().clone()
    # step 1: weight step. Ratios get no gradient.
    loss = nn.functional.cross_entropy(model(x), y)
    assert pruner.penalty() is None
    loss.backward()
    assert model.fc1.parametrizations.weight.original.grad is not None
    assert pruner.rho["fc1"].grad is None
    pruner.after_step(1)
    assert pruner.ratio_step and torch.equal(pruner.rho["fc1"], rho_before)
    model.zero_grad(set_to_none=True)
    # step 2: ratio step. Weights and biases get no gradient, rho moves.
    total = nn.functional.cross_entropy(model(x), y) + pruner.penalty()
    total.backward()
    assert all(p.grad is None for p in model.parameters())
    assert pruner.rho["fc1"].grad is not None and pruner.rho["fc2"].grad is not None
    pruner.after_step(2)
    assert not pruner.ratio_step and not torch.equal(pruner.rho["fc1"], rho_before)


def test_expected_flops_fraction_by_hand():
    pruner, model = _pruner("lenet300", flops_target=0.1)
    model(torch.randn(2, 784))
    with torch.no_grad():
        pruner.rho["fc1"].fill_(math.log(0.2 / 0.8))
        pruner.rho["fc2"].fill_(math.log(0.5 / 0.5))
    expected = (235_200 * 0.2 + 30_000 * 0.2 * 0.5 + 1_000 * 0.5) / 266_200
    assert float(pruner.expected_flops_fraction().detach()) == pytest.approx(expected, rel=1e-6)
    pruner.ratio_step = True
    assert float(pruner.penalty().detach()) == pytest.approx(expected / 0.1 - 1.0, rel=1e-5)


def test_shrink_keeps_the_chosen_units_of_a_conv_to_linear_network():
    task = get_task("lenet5")
    net = task.architecture()
    small = shrink(net, {"conv2": torch.tensor([3, 0])})
    assert small.conv2.out_channels == 2 and small.fc1.in_features == 32
    assert torch.equal(small.conv2.weight, net.conv2.weight[[0, 3]])
    assert torch.equal(small.fc1.weight[:, :16], net.fc1.weight[:, :16])
    assert torch.equal(small.fc1.weight[:, 16:], net.fc1.weight[:, 48:64])


def test_a_run_deploys_a_smaller_network_measured_against_the_dense_one(store, tmp_path):
    spec = make_spec("xor", "autoprune", seed=0, hparams={"flops_target": 0.2, "arch_lr": 0.1},
                     iterations=300, eval_every=100)
    seen = []

    def check(pruner, model, data):  # noqa: ARG001
        net = pruner.deployed(model)
        seen.append(net.fc1.out_features)
        return {}

    result = train(spec, store, tmp_path, observer=Measure(check))
    final = store.final_row(result.run_id)
    hidden = seen[-1]
    assert hidden < 5
    assert final["weights_total"] == 15 and final["weights_nonzero"] == 3 * hidden
    assert final["flops_reference"] == 15 and final["flops"] == 3 * hidden


def test_units_no_later_layer_reads_are_zeroed_and_outputs_do_not_change():
    from prunebench.structured import zero_unread_units

    net = get_task("lenet5").architecture()
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.1, 0.1)
        net.fc1.weight[:, 16 * 3:16 * 4] = 0.0  # channel 3 of conv2 is never read
        net.fc2.weight[:, 7] = 0.0  # hidden unit 7 of fc1 is never read
        net.fc1.weight[:, 0] = 0.0  # one of channel 0's 16 inputs: channel 0 is still read
    x = torch.randn(2, 1, 28, 28)
    before = net(x)
    zero_unread_units(net)
    assert torch.allclose(net(x), before, atol=1e-6)
    assert net.conv2.weight[3].abs().sum() == 0 and net.conv2.bias[3] == 0
    assert net.fc1.weight[7].abs().sum() == 0 and net.fc1.bias[7] == 0
    assert net.conv2.weight[0].abs().sum() > 0 and net.conv1.weight.ne(0).all()
