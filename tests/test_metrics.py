"""Compression counted independently on hand-built networks; exact-ratio top-k selection."""

from __future__ import annotations

import torch

from prunebench.metrics import keep_top_scores, measure_compression
from prunebench.models import LeNet5, LeNet300


def test_lenet_weight_counts_match_the_papers():
    assert measure_compression(LeNet300()).weights_total == 266_200
    assert measure_compression(LeNet5()).weights_total == 430_500
    assert measure_compression(LeNet5()).params_total == 431_080


def test_compression_on_hand_built_network():
    net = LeNet300()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.fc1.weight[0, :10] = 1.0  # 10 kept
        net.fc2.weight[3, 7] = -2.0  # 1 kept
        net.fc3.weight[:, 0] = 0.5  # 10 kept
        net.fc3.bias[:4] = 1.0  # biases: not in the paper convention, only in the all-parameter count
    c = measure_compression(net)
    assert c.weights_nonzero == 21
    assert c.compression == 266_200 / 21
    assert c.per_layer == {"fc1": (10, 235_200), "fc2": (1, 30_000), "fc3": (10, 1_000)}
    assert c.params_nonzero == 25 and c.params_total == 266_610
    assert c.compression_all == 266_610 / 25


def test_keep_top_scores_hits_the_exact_ratio():
    net = LeNet300()
    scores = {n: m.weight.detach().abs() for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    keep_top_scores(net, scores, 50.0)
    assert measure_compression(net).weights_nonzero == round(266_200 / 50)
    # ties are broken so the count stays exact
    net2 = LeNet300()
    ones = {n: torch.ones_like(m.weight) for n, m in net2.named_modules() if isinstance(m, torch.nn.Linear)}
    keep_top_scores(net2, ones, 100.0)
    assert measure_compression(net2).weights_nonzero == 2662
