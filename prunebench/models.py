"""The task architectures: XOR 2-5-1, LeNet-300-100 and LeNet-5-Caffe (plain PyTorch modules)."""

from __future__ import annotations

import torch
from torch import nn


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
