"""The CIFAR-10 and ImageNet architectures (VGG-like, AlexNet as Caffe's, ResNet-56): every prunable
layer's weight shape and the totals METHODS.md sec. 10 gives, output shapes, data-flow order, init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunebench.models import AlexNetCaffe, ResNet56, VGGLike
from prunebench.pruner import prunable_layers

VGG_SHAPES = {
    "conv1": (64, 3, 3, 3), "conv2": (64, 64, 3, 3),
    "conv3": (128, 64, 3, 3), "conv4": (128, 128, 3, 3),
    "conv5": (256, 128, 3, 3), "conv6": (256, 256, 3, 3), "conv7": (256, 256, 3, 3),
    "conv8": (512, 256, 3, 3), "conv9": (512, 512, 3, 3), "conv10": (512, 512, 3, 3),
    "conv11": (512, 512, 3, 3), "conv12": (512, 512, 3, 3), "conv13": (512, 512, 3, 3),
    "fc1": (512, 512), "fc2": (10, 512),
}
ALEXNET_SHAPES = {
    "conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3), "conv4": (384, 192, 3, 3),
    "conv5": (256, 192, 3, 3), "fc6": (4096, 9216), "fc7": (4096, 4096), "fc8": (1000, 4096),
}
ALEXNET_COUNTS = [34_848, 307_200, 884_736, 663_552, 442_368, 37_748_736, 16_777_216, 4_096_000]


def _resnet56_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"conv1": (16, 3, 3, 3)}
    previous = 16
    for stage, width in ((1, 16), (2, 32), (3, 64)):
        for block in range(9):
            shapes[f"layer{stage}.{block}.conv1"] = (width, previous, 3, 3)
            shapes[f"layer{stage}.{block}.conv2"] = (width, width, 3, 3)
            previous = width
    shapes["fc"] = (10, 64)
    return shapes


@pytest.fixture(scope="module")
def alexnet() -> AlexNetCaffe:
    torch.manual_seed(0)
    return AlexNetCaffe()


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(m.weight.shape) for name, m in prunable_layers(model)}


def _total(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in prunable_layers(model))


def test_vgg_like_layers_and_total():
    model = VGGLike()
    assert _shapes(model) == VGG_SHAPES and list(_shapes(model)) == list(VGG_SHAPES)
    assert _total(model) == 14_977_728
    conv = sum(m.weight.numel() for _, m in prunable_layers(model) if isinstance(m, nn.Conv2d))
    assert conv == 14_710_464 and _total(model) - conv == 267_264
    biases = sum(m.bias.numel() for _, m in prunable_layers(model))
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert biases == 4_746 and sum(m.weight.numel() + m.bias.numel() for m in norms) == 9_472
    assert len(norms) == 14 and all(m.eps == 1e-3 for m in norms)


def test_alexnet_layers_and_total(alexnet):
    assert _shapes(alexnet) == ALEXNET_SHAPES and list(_shapes(alexnet)) == list(ALEXNET_SHAPES)
    assert [m.weight.numel() for _, m in prunable_layers(alexnet)] == ALEXNET_COUNTS
    assert _total(alexnet) == 60_954_656
    assert [alexnet.get_submodule(f"conv{i}").groups for i in range(1, 6)] == [1, 2, 1, 2, 2]


def test_resnet56_layers_and_total():
    model = ResNet56()
    expected = _resnet56_shapes()
    assert len(expected) == 56
    assert _shapes(model) == expected and list(_shapes(model)) == list(expected)
    assert _total(model) == 848_944
    assert all(m.bias is None for _, m in prunable_layers(model) if isinstance(m, nn.Conv2d))
    assert sum(p.numel() for p in model.parameters()) == 848_944 + 10 + 2 * (16 + 18 * 16 + 18 * 32 + 18 * 64)


@pytest.mark.parametrize("cls,batch", [(VGGLike, 2), (AlexNetCaffe, 1), (ResNet56, 2)])
def test_output_shape_and_data_flow_order(cls, batch, alexnet):
    torch.set_num_threads(1)
    model = alexnet if cls is AlexNetCaffe else cls()
    calls = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: calls.append(name))
               for name, m in prunable_layers(model)]
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(batch, *cls.input_shape))
    for handle in handles:
        handle.remove()
    assert out.shape == (batch, 1000 if cls is AlexNetCaffe else 10)
    assert calls == [name for name, _ in prunable_layers(model)]


def test_alexnet_spatial_sizes_and_lrn(alexnet):
    assert AlexNetCaffe.input_shape == (3, 227, 227)
    seen = {}
    handles = [alexnet.get_submodule(name).register_forward_hook(
        lambda _m, _i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
        for name in ("conv1", "conv2", "conv5")]
    with torch.no_grad():
        alexnet.eval()(torch.randn(1, 3, 227, 227))
    for handle in handles:
        handle.remove()
    assert seen == {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv5": (256, 13, 13)}
    lrn = alexnet.lrn
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)


def test_inits_are_applied_by_the_constructors(alexnet):
    torch.manual_seed(0)
    vgg = VGGLike()
    std = vgg.conv13.weight.std().item()
    assert std == pytest.approx((2 / (9 * 512)) ** 0.5, rel=0.01) and vgg.conv13.bias.abs().sum() == 0
    assert vgg.conv1.weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.1)
    bound = 512 ** -0.5  # fc: PyTorch's default U(+-1/sqrt(fan_in))
    assert vgg.fc1.weight.abs().max() <= bound
    assert vgg.fc1.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    assert vgg.bn1.weight.eq(1).all() and vgg.bn14.bias.eq(0).all()

    for name, (std, bias) in AlexNetCaffe.CAFFE_INIT.items():
        layer = alexnet.get_submodule(name)
        assert layer.weight.std().item() == pytest.approx(std, rel=0.05), name
        assert layer.bias.eq(bias).all(), name
    assert AlexNetCaffe.CAFFE_INIT["fc6"] == (0.005, 0.1) and AlexNetCaffe.CAFFE_INIT["conv3"] == (0.01, 0.0)

    resnet = ResNet56()
    weight = resnet.layer3[4].conv2.weight
    assert weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)  # Kaiming normal, fan_out
    assert resnet.layer2[0].bn2.weight.eq(1).all() and resnet.layer2[0].bn2.bias.eq(0).all()


def test_resnet_option_a_shortcut_has_no_parameters_and_pads_channels():
    block = ResNet56().layer2[0]
    assert {name for name, _ in block.named_parameters()} == {
        "conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias"}
    x = torch.randn(2, 16, 32, 32)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (2, 32, 16, 16)
    assert torch.equal(shortcut[:, :16], x[:, :, ::2, ::2]) and shortcut[:, 16:].eq(0).all()
