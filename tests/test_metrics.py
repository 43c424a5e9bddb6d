"""Compression counted independently on hand-built networks; exact-ratio top-k selection."""

from __future__ import annotations

import torch

from prunebench.metrics import count_flops, keep_top_scores, measure_compression
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


def test_flops_of_lenet5_by_hand():
    net = LeNet5()
    # conv1: 20 filters of 1x5x5 at 24x24 positions; conv2: 50 of 20x5x5 at 8x8; fc1 800x500; fc2 500x10.
    dense = 20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10
    with torch.no_grad():
        net.conv2.weight[:10] = 0.0  # 10 filters of 500 weights, each used at 64 positions
        net.fc1.weight[:, :3] = 0.0
    flops = count_flops(net, torch.zeros(1, 28, 28))
    assert flops.dense == dense
    assert flops.nonzero == dense - 10 * 500 * 64 - 3 * 500


def test_smaller_network_is_measured_against_the_reference():
    small = LeNet300()
    small.fc1 = torch.nn.Linear(784, 30)
    small.fc2 = torch.nn.Linear(30, 100)
    c = measure_compression(small, reference=LeNet300())
    assert c.weights_total == 266_200 and c.weights_nonzero == 784 * 30 + 30 * 100 + 1_000
    assert c.per_layer["fc1"] == (784 * 30, 235_200)
    assert c.params_total == 266_610
    assert count_flops(small, torch.zeros(784)).dense == 784 * 30 + 30 * 100 + 1_000


def test_accuracy_at_compression_keeps_exactly_the_top_scored_weights(store, tmp_path):
    from prunebench.harness import train
    from prunebench.metrics import evaluate_accuracy
    from prunebench.observers import Measure
    from prunebench.request import make_spec

    spec = make_spec("xor", "dense", seed=0, iterations=200, eval_every=100)
    expected = []

    def by_hand(pruner, model, data):  # the 5 largest |w| of the 15, everything else zero
        net = pruner.export(model)
        flat = torch.cat([net.fc1.weight.detach().abs().flatten(), net.fc2.weight.detach().abs().flatten()])
        cutoff = flat.sort(descending=True).values[4]
        with torch.no_grad():
            for layer in (net.fc1, net.fc2):
                layer.weight.mul_(layer.weight.abs() >= cutoff)
        assert int(sum((m.weight != 0).sum() for m in (net.fc1, net.fc2))) == 5
        expected.append(evaluate_accuracy(net, data.x_test, data.y_test, spec.task.correct))
        return {}

    result = train(spec, store, tmp_path, observer=Measure(by_hand), at_compressions=(3.0, 1.5))
    points = store.trajectory(result.run_id)
    import json
    stored = [json.loads(p["extra"])["at_compression"] for p in points]
    assert [s["3"] for s in stored] == expected
    assert all(set(s) == {"3", "1.5"} for s in stored)
