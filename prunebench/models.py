"""The task architectures: XOR 2-5-1, LeNet-300-100, LeNet-5-Caffe, VGG-like, AlexNet (Caffe) and ResNet-56."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class XorNet(nn.Module):
    """2-5-1 fully connected network with sigmoid hidden units (DT paper sec. 4.1, after DNS [6]).

    Returns the output logit; the sigmoid of the output unit is inside the loss (BCE with logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 5)
        self.fc2 = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.sigmoid(self.fc1(x)))


class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 with ReLU, 266,200 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5-Caffe: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10; 430,500 weights.

    ReLU after each conv (as sparse VD, DST and L0 do; the Caffe prototxt of Han/DNS has none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


# -- CIFAR-10 and ImageNet networks of the DT paper's Table 2 (METHODS.md sec. 10), and ResNet-56 ---------------
#
# `input_shape` (one example, no batch dimension) lets `prunebench.structured.network_structure` trace how the
# prunable layers connect (BatchNorm after a layer, residual additions, channel-mixing LRN).

#: VGG-like blocks: (in channels, out channels, dropout after the block's ReLU (0: none), 2x2 max pool after it).
VGG_LIKE_BLOCKS: tuple[tuple[int, int, float, bool], ...] = (
    (3, 64, 0.3, False), (64, 64, 0.0, True),
    (64, 128, 0.4, False), (128, 128, 0.0, True),
    (128, 256, 0.4, False), (256, 256, 0.4, False), (256, 256, 0.0, True),
    (256, 512, 0.4, False), (512, 512, 0.4, False), (512, 512, 0.0, True),
    (512, 512, 0.4, False), (512, 512, 0.4, False), (512, 512, 0.0, True),
)


class VGGLike(nn.Module):
    """VGG-like for CIFAR-10 (Zagoruyko's cifar.torch `vgg_bn_drop`, METHODS.md sec. 10): 14,977,728 weights.

    13 blocks conv 3x3 (pad 1, with bias) -> BatchNorm (eps 1e-3) -> ReLU, dropout after the blocks listed
    in `VGG_LIKE_BLOCKS`, 2x2 max pools; then dropout 0.5 -> fc1 512->512 -> BatchNorm (eps 1e-3) -> ReLU
    -> dropout 0.5 -> fc2 512->10. Layers: conv1..conv13, bn1..bn13, fc1, bn14, fc2 (defined in data-flow
    order). The constructor applies the source's init (`reset_parameters`), so a task protocol with init
    "default" keeps it."""

    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        for index, (cin, cout, _, _) in enumerate(VGG_LIKE_BLOCKS, start=1):
            setattr(self, f"conv{index}", nn.Conv2d(cin, cout, 3, padding=1))
            setattr(self, f"bn{index}", nn.BatchNorm2d(cout, eps=1e-3))
        self.fc1 = nn.Linear(512, 512)
        self.bn14 = nn.BatchNorm1d(512, eps=1e-3)
        self.fc2 = nn.Linear(512, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """cifar.torch's init: conv weights N(0, sqrt(2 / (3 * 3 * out_channels))), conv biases 0 (its
        MSRinit) [V, METHODS.md sec. 10]; fc layers PyTorch's default, U(+-1/sqrt(fan_in)) for weights and
        biases, which is Torch7's nn.Linear default too; BatchNorm weight 1, bias 0 (PyTorch default) [I]."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0.0, (2.0 / fan) ** 0.5)
                module.bias.zero_()
            elif isinstance(module, (nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, (_, _, dropout, pool) in enumerate(VGG_LIKE_BLOCKS, start=1):
            x = torch.relu(getattr(self, f"bn{index}")(getattr(self, f"conv{index}")(x)))
            if dropout:
                x = F.dropout(x, dropout, self.training)
            if pool:
                x = F.max_pool2d(x, 2, 2)
        x = F.dropout(x.flatten(1), 0.5, self.training)
        x = F.dropout(torch.relu(self.bn14(self.fc1(x))), 0.5, self.training)
        return self.fc2(x)


class AlexNetCaffe(nn.Module):
    """AlexNet as BVLC Caffe's `bvlc_alexnet` (METHODS.md sec. 10): 227x227 input, 60,954,656 weights.

    conv1 96@11x11/4 -> ReLU -> LRN -> max pool 3/2; conv2 256@5x5 pad 2, 2 groups -> ReLU -> LRN -> pool;
    conv3 384@3x3 pad 1 -> ReLU; conv4 384@3x3 pad 1, 2 groups -> ReLU; conv5 256@3x3 pad 1, 2 groups
    -> ReLU -> pool -> 6x6x256; fc6 9216->4096 -> ReLU -> dropout 0.5; fc7 4096->4096 -> ReLU -> dropout
    0.5; fc8 4096->1000. LRN: size 5, alpha 1e-4, beta 0.75, k 1 across channels (Caffe divides alpha by
    the size, as torch.nn.LocalResponseNorm does). Pools use Caffe's ceil rounding (the same sizes at 227).
    The constructor applies the Caffe init (`reset_parameters`). `fc_units` (fc6 and fc7 width, 4096) is
    smaller only in tests that need the conv part (groups, LRN) without 54M fc weights."""

    input_shape = (3, 227, 227)

    def __init__(self, num_classes: int = 1000, fc_units: int = 4096) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(256 * 6 * 6, fc_units)
        self.fc7 = nn.Linear(fc_units, fc_units)
        self.fc8 = nn.Linear(fc_units, num_classes)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.reset_parameters()

    #: (weight std, bias) per layer of bvlc_alexnet's train_val.prototxt.
    CAFFE_INIT: dict[str, tuple[float, float]] = {
        "conv1": (0.01, 0.0), "conv2": (0.01, 0.1), "conv3": (0.01, 0.0), "conv4": (0.01, 0.1),
        "conv5": (0.01, 0.1), "fc6": (0.005, 0.1), "fc7": (0.005, 0.1), "fc8": (0.01, 0.0)}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Caffe's fillers: Gaussian weights, std 0.01 (conv1-5, fc8) and 0.005 (fc6, fc7); constant biases
        0 (conv1, conv3, fc8) and 0.1 (conv2, conv4, conv5, fc6, fc7): bvlc_alexnet's train_val.prototxt
        [V, BVLC/caffe@0d2354c9, models/bvlc_alexnet/train_val.prototxt]. Krizhevsky et al. (2012) used
        bias 1 for those layers [R]; the Caffe model, which this task reproduces, uses 0.1. (That file also
        trains biases at twice the lr and without weight decay, a protocol matter left to the task.)"""
        for name, (std, bias) in self.CAFFE_INIT.items():
            layer = getattr(self, name)
            layer.weight.normal_(0.0, std)
            layer.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.lrn(torch.relu(self.conv1(x))), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.lrn(torch.relu(self.conv2(x))), 3, 2, ceil_mode=True)
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        x = F.max_pool2d(torch.relu(self.conv5(x)), 3, 2, ceil_mode=True)
        x = F.dropout(torch.relu(self.fc6(x.flatten(1))), 0.5, self.training)
        x = F.dropout(torch.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU (convs without bias).

    Shortcut "option A" (He et al. 2016, sec. 4.2): identity; where the shape changes, the input is
    subsampled with stride 2 and zero channels are appended after its own (no parameters)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride = stride
        self.extra_channels = channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet56(nn.Module):
    """ResNet-56 for CIFAR-10 (He et al. 2016, sec. 4.2): 848,944 weights.

    conv1 3x3 16 -> BN -> ReLU; three stages (layer1..layer3) of 9 basic blocks with 16, 32 and 64
    channels, stride 2 in the first block of stages 2 and 3; global average pool; fc 64->10. Init
    (`reset_parameters`, applied by the constructor): Kaiming normal (fan_out, ReLU gain) for the convs,
    BatchNorm weight 1 and bias 0, fc PyTorch's default (U(+-1/sqrt(fan_in))) [I: He et al. cite the
    Kaiming init without a mode; fan_out as torchvision's ResNets]."""

    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10, blocks_per_stage: int = 9) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_channels = 16
        for stage, channels in enumerate((16, 32, 64), start=1):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 1 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming normal (fan_out) convs, BatchNorm (1, 0), fc PyTorch's default."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.Linear)):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
