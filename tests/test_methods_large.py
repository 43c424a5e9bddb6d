"""Every method on VGG-like (BatchNorm), AlexNet (grouped convs, LRN) and ResNet-56 (residual additions):
attach, one optimizer step per phase, and a deployed network of the plain class with exact zeros that
computes what the trained model computes in eval mode. Also the structure tracing these rely on
(`prunebench.structured`), shrinking across BatchNorm / groups / residual blocks, and the per-layer rule."""

from __future__ import annotations

import math

import pytest
import torch
from prunebench.methods._common import layer_values
from torch import nn

from prunebench.harness import training_step
from prunebench.metrics import measure_compression
from prunebench.models import AlexNetCaffe, LeNet5, ResNet56, VGGLike
from prunebench.protocol import Protocol
from prunebench.pruner import make_hparams, prunable_layers
from prunebench.registry import get_method, method_names
from prunebench.structured import network_structure, shrink, unread_units, zero_unread_units
from prunebench.tasks import Task

pytestmark = pytest.mark.slow  # every method on the large networks: minutes on a CPU


class NarrowAlexNet(AlexNetCaffe):
    """AlexNetCaffe with fc6/fc7 of 512 units instead of 4096: the same conv part (groups, LRN, 227x227
    input) without 54M fc weights, so that nine methods train it within seconds on one thread."""

    def __init__(self) -> None:
        super().__init__(fc_units=512)


ARCHITECTURES = {"vgg": VGGLike, "alexnet": NarrowAlexNet, "resnet56": ResNet56}
TOTALS = {"vgg": 14_977_728, "alexnet": 2_332_704 + 9216 * 512 + 512 * 512 + 512 * 1000, "resnet56": 848_944}
#: Methods whose deployed network computes exactly what the trained model computes in eval mode.
SAME_OUTPUTS = {"dense", "magnitude", "dns", "dynthresh", "l0", "autoprune", "sparse-vd", "dst", "gmp", "rigl"}


def _no_data(_path):
    raise AssertionError("these tests train on random inputs")


def _task(key: str) -> Task:
    cls = ARCHITECTURES[key]
    classes = 1000 if issubclass(cls, AlexNetCaffe) else 10
    return Task(name=f"test-{key}", description=f"{cls.__name__} on random inputs ({classes} classes)",
                architecture=cls, load=_no_data, loss_kind="cross_entropy", train_size=50_000,
                protocol=Protocol(optimizer="sgd", lr=1e-3, iterations=60, batch_size=2, init="default",
                                  eval_every=60))


def _batch(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    cls = ARCHITECTURES[key]
    return torch.randn(2, *cls.input_shape), torch.randint(0, 1000 if issubclass(cls, AlexNetCaffe) else 10, (2,))


@torch.no_grad()
def _perturb(method: str, pruner, model: nn.Module, key: str) -> None:
    """Put some pruning in place before training, so that every network has removed units and weights."""
    if method == "l0":
        gated = dict(pruner.layers)
        if key == "vgg":
            gated["conv3"].log_alpha[:40] = -10.0  # filters off: BatchNorm's shift remains
            gated["fc1"].log_alpha[::2] = -10.0  # conv13 channels nobody reads: dropped
        elif key == "alexnet":
            gated["conv2"].log_alpha[:128] = -10.0  # conv2's group 0: conv1 0-47 unread, but behind an LRN
            gated["conv5"].log_alpha[:128] = -10.0  # conv5's group 0: conv4 0-191 unread, dropped
        else:
            gated["layer2.3.conv2"].log_alpha[:] = -10.0  # layer2.3.conv1 unread, dropped
            gated["layer1.0.conv2"].log_alpha[:5] = -10.0  # feeds a residual addition
    elif method == "autoprune":
        for name in pruner.rho:
            pruner.rho[name].fill_(math.log(0.3 / 0.7))
    elif method == "sparse-vd":
        for _, layer in pruner.layers:
            layer.log_sigma2.view(-1)[::3] = 8.0  # log alpha >= 3: dropped
    elif method == "srinivas":
        for _, _, gate in pruner._layers_of(model):
            gate.view(-1)[::3] = 0.0  # gates <= 0.5: dropped (the detached view shares the parameter's data)
    elif method == "gmp":  # a pruning event on the one training step: window from step 0, an event every step
        pruner.hp.begin, pruner.hp.frequency = 0.0, 1
    elif method == "sensitivity":
        pruner.hp.prune_every = 1  # threshold after the one training step of its regularise phase
        if key == "alexnet":  # as the alexnet-imagenet task's default: 1,000 outputs, 1,000 backward passes a step
            pruner.hp.sensitivity = "loss"
        for _, layer in prunable_layers(model):
            layer.weight.view(-1)[::3] = 0.0  # below any threshold: dropped


def _kept(method: str, pruner, model: nn.Module, net: nn.Module) -> int | None:
    """The number of non-zero weights the method itself says it keeps (None: nothing to compare)."""
    if method == "dense":
        return sum(m.weight.numel() for _, m in prunable_layers(model))
    if method == "magnitude":
        return sum(int(torch.count_nonzero(mask)) for mask in pruner.masks.values())
    if method == "gmp":
        return sum(int(torch.count_nonzero(mask)) for mask in pruner.keep.values())
    if method == "rigl":  # its one step was an update step: the grown weights are active at exactly zero
        return sum(int(torch.count_nonzero(pruner.keep[name] * m.weight)) for name, m in prunable_layers(model))
    if method == "dns":
        return sum(int(torch.count_nonzero(layer.mask)) for layer in pruner.layers)
    if method == "sparse-vd":
        return sum(int(torch.count_nonzero(layer.kept())) for _, layer in pruner.layers)
    if method == "l0":
        return pruner.kept_weights()
    if method in ("dst", "ltp", "srinivas", "sensitivity"):
        return sum(int(torch.count_nonzero(mask)) for mask in pruner.masks(model).values())
    if method == "autoprune":
        return sum(m.weight.numel() for _, m in prunable_layers(net))
    return None


@pytest.fixture(scope="module")
def references() -> dict[str, nn.Module]:
    """The dense architectures that deployed networks are counted against, built once."""
    cache: dict[str, nn.Module] = {}

    class Lazy(dict):
        def __missing__(self, key: str) -> nn.Module:
            cache[key] = ARCHITECTURES[key]()
            return cache[key]

    return Lazy()


@pytest.mark.parametrize("key", list(ARCHITECTURES))
@pytest.mark.parametrize("method", method_names())
def test_every_method_deploys_the_plain_network(method, key, references, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("PRUNEBENCH_COMPILE", "0")  # dynthresh: compiling 8 weight shapes takes longer than the test
    torch.manual_seed(0)
    task = _task(key)
    cls = get_method(method)
    pruner = cls(make_hparams(cls, task), task)
    model = task.build_model(0)
    with torch.no_grad():  # torch's normal_ draws an exact 0 now and then (AlexNet: 4 of 61M); none here
        for _, layer in prunable_layers(model):
            layer.weight[layer.weight == 0] = 1e-6
    model = pruner.attach(model)
    _perturb(method, pruner, model, key)
    phases = pruner.phases(task.protocol)
    model.train()
    step = 0
    for index, phase in enumerate(phases):
        optimizer = task.protocol.make_optimizer(model.parameters(), lr=phase.lr)
        pruner.on_phase_start(phase, model, optimizer)
        if key == "alexnet" and index < len(phases) - 1:
            continue  # AlexNet's convs: ~0.7 GFLOP per example; only the last phase trains
        step += 1
        x, y = _batch(key)
        training_step(model, task, pruner, optimizer, x, y, step)

    net = pruner.deployed(model)
    assert type(net) is task.architecture and not net.training
    counts = measure_compression(net, references[key])
    assert counts.weights_total == TOTALS[key]
    kept = _kept(method, pruner, model, net)
    if kept is not None:
        assert counts.weights_nonzero == kept
    if method not in ("dense", "dynthresh"):
        assert counts.weights_nonzero < counts.weights_total, "nothing was pruned"
    if method in SAME_OUTPUTS:
        model.eval()
        x, _ = _batch(key)
        with torch.no_grad():
            expected, got = model(x), net(x)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())), \
            float((got - expected).abs().max())
    if method == "l0" and key == "alexnet":
        assert net.conv1.weight.ne(0).all()  # behind LRN: an unread unit still changes its neighbours
        assert net.conv4.weight[:192].eq(0).all() and net.conv4.weight[192:].ne(0).all()
    if method == "l0" and key == "vgg":
        assert net.conv13.weight[::2].eq(0).all() and net.conv13.weight[1::2].ne(0).any()
    if method == "l0" and key == "resnet56":
        assert net.layer2[3].conv1.weight.eq(0).all() and net.layer1[0].conv1.weight.ne(0).all()
    if method == "autoprune":
        _check_autopruned(key, net)


def _check_autopruned(key: str, net: nn.Module) -> None:
    """r = 0.3 in every masked layer: ceil(0.3 C / G) units in each of G groups."""
    if key == "vgg":
        assert net.conv1.out_channels == net.bn1.num_features == math.ceil(0.3 * 64) == net.conv2.in_channels
        assert net.fc1.out_features == net.bn14.num_features == math.ceil(0.3 * 512) == net.fc2.in_features
        assert net.fc2.out_features == 10
    elif key == "alexnet":
        assert net.conv1.out_channels == 96 and net.conv2.out_channels == 256  # behind an LRN: not masked
        per_group = math.ceil(0.3 * 192)
        assert net.conv3.out_channels == 2 * per_group == net.conv4.in_channels and net.conv4.groups == 2
        assert net.conv5.out_channels == 2 * math.ceil(0.3 * 128) and net.fc6.in_features == net.conv5.out_channels * 36
        assert net.fc7.out_features == math.ceil(0.3 * 512) and net.fc8.out_features == 1000
    else:
        block = net.layer3[2]
        assert block.conv1.out_channels == block.bn1.num_features == math.ceil(0.3 * 64) == block.conv2.in_channels
        assert block.conv2.out_channels == block.bn2.num_features == 64 and net.conv1.out_channels == 16


# -- structure ---------------------------------------------------------------------------------------------


def test_traced_structures():
    torch.set_num_threads(1)
    vgg = network_structure(VGGLike())
    assert vgg.traced and vgg.chain and all(vgg.links())
    assert vgg.norms == {**{f"conv{i}": f"bn{i}" for i in range(1, 14)}, "fc1": "bn14"}
    alexnet = network_structure(AlexNetCaffe())
    assert alexnet.chain and alexnet.norms == {}
    assert alexnet.feeds == {"conv3": "conv4", "conv4": "conv5", "conv5": "fc6", "fc6": "fc7", "fc7": "fc8"}
    resnet = network_structure(ResNet56())
    assert not resnet.chain and resnet.order == resnet.layers
    assert resnet.feeds == {f"layer{s}.{b}.conv1": f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(9)}
    assert len(resnet.norms) == 55 and resnet.norms["layer3.8.conv2"] == "layer3.8.bn2"
    lenet = network_structure(LeNet5())
    assert not lenet.traced and lenet.chain and lenet.feeds == {"conv1": "conv2", "conv2": "fc1", "fc1": "fc2"}


class _NoShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class _Residual(nn.Module):
    input_shape = (4,)

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)) + x)


def test_structure_needs_input_shape_with_batchnorm_and_autoprune_refuses_residual_only_networks():
    with pytest.raises(ValueError, match="declare its input_shape"):
        network_structure(_NoShape())
    structure = network_structure(_NoShape(), example=torch.zeros(2, 4))
    assert structure.chain and structure.norms == {"fc1": "bn"}
    structure = network_structure(_Residual())
    assert not structure.chain and structure.feeds == {}
    with pytest.raises(ValueError, match="cannot remove output units of fc1"):
        shrink(_Residual(), {"fc1": torch.tensor([0, 1])})
    task = Task(name="residual", description="", architecture=_Residual, load=_no_data, protocol=Protocol(),
                loss_kind="cross_entropy", train_size=10)
    cls = get_method("autoprune")
    with pytest.raises(ValueError, match="autoprune: no prunable layer of _Residual has outputs that one next"):
        cls(make_hparams(cls, task), task).attach(_Residual())


def test_shrink_alexnet_grouped_convs_balanced_per_group_and_same_outputs():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = AlexNetCaffe().eval()
    keep = {"conv3": torch.cat([torch.arange(0, 100), torch.arange(192, 292)]),
            "conv4": torch.cat([torch.arange(0, 192, 2), torch.arange(193, 384, 2)]),
            "conv5": torch.cat([torch.arange(50), torch.arange(128, 178)])}
    with torch.no_grad():
        for name, index in keep.items():
            dropped = torch.ones(net.get_submodule(name).out_channels, dtype=torch.bool)
            dropped[index] = False
            net.get_submodule(name).weight[dropped] = 0.0
            net.get_submodule(name).bias[dropped] = 0.0
        x = torch.randn(1, 3, 227, 227)
        small = shrink(net, keep)
        assert torch.allclose(small(x), net(x), atol=1e-6)
    assert (small.conv4.in_channels, small.conv4.out_channels, small.conv4.groups) == (200, 192, 2)
    assert torch.equal(small.conv4.weight[0], net.conv4.weight[0, :100])
    assert torch.equal(small.conv4.weight[96], net.conv4.weight[193, :100])
    assert small.conv5.weight.shape == (100, 96, 3, 3) and small.fc6.in_features == 100 * 36
    with pytest.raises(ValueError, match="same number of units in each of its 2 groups"):
        shrink(net, {"conv4": torch.arange(10)})


def test_shrink_removes_batchnorm_features_with_the_units():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for net, name in ((VGGLike(), "conv7"), (VGGLike(), "fc1"), (ResNet56(), "layer2.0.conv1")):
        structure = network_structure(net)
        norm = net.get_submodule(structure.norms[name])
        with torch.no_grad():
            norm.running_mean.uniform_(-0.1, 0.1)
            norm.running_var.uniform_(0.5, 2.0)
            keep = torch.arange(0, norm.num_features, 3)
            dropped = torch.ones(norm.num_features, dtype=torch.bool)
            dropped[keep] = False
            norm.weight[dropped] = 0.0  # the dropped units output exactly 0 after BatchNorm
            norm.bias[dropped] = 0.0
            small = shrink(net.double().eval(), {name: keep})
            x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
            assert torch.allclose(small(x), net(x), rtol=1e-9, atol=1e-9)
        small_norm = small.get_submodule(structure.norms[name])
        assert small_norm.num_features == keep.numel() and small_norm.eps == norm.eps
        assert torch.equal(small_norm.running_var, norm.running_var[keep])


def test_unread_units_of_grouped_convs_and_only_across_links():
    following = torch.ones(4, 3, 1, 1)  # 2 groups of 2 filters over 6 input channels (3 per group)
    following[:2] = 0.0  # group 0's filters all zero: inputs 0-2 unread
    weight = torch.ones(6, 5, 1, 1)
    assert unread_units([weight, following], groups=[1, 2])[0].tolist() == [True] * 3 + [False] * 3
    assert unread_units([weight, following], links=[False], groups=[1, 2])[0].tolist() == [False] * 6
    net = AlexNetCaffe()
    with torch.no_grad():
        net.conv2.weight[:128] = 0.0  # conv2 never reads conv1's channels 0-47, but they pass an LRN
        net.conv3.weight[:, 200] = 0.0  # conv3 never reads conv2's channel 200, but it passes an LRN
        net.fc7.weight[:, 7] = 0.0
    zero_unread_units(net)
    assert net.conv1.weight.ne(0).all() and net.conv2.weight[200].ne(0).all()
    assert net.fc6.weight[7].eq(0).all() and net.fc6.bias[7] == 0


def test_per_layer_rule_first_conv_fc_last():
    vgg, alexnet = prunable_layers(VGGLike()), prunable_layers(AlexNetCaffe())
    assert layer_values((0.5, 1.0, 2.0, 1.5), vgg, "q", "first-conv-fc-last") == (0.5,) + (1.0,) * 12 + (2.0, 1.5)
    expected = (0.5,) + (1.0,) * 4 + (2.0,) * 2 + (1.5,)
    assert layer_values((0.5, 1.0, 2.0, 1.5), alexnet, "q", "first-conv-fc-last") == expected
    assert layer_values((3.0,), alexnet, "q", "first-conv-fc-last") == (3.0,) * 8
    assert layer_values((1.0, 2.0, 3.0), prunable_layers(LeNet5())[:3], "q") == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="needs 1 or 4 values"):
        layer_values((1.0, 2.0), vgg, "q", "first-conv-fc-last")
    with pytest.raises(ValueError, match="needs 1 or 15 values"):
        layer_values((1.0, 2.0, 3.0, 4.0), vgg, "q")
