"""The released DNS models measured in our counting (issue 31, item 1): the trained LeNet-300-100 and LeNet-5
that Guo, Yao and Chen ship with their code (yiwenguo/Dynamic-Network-Surgery, `models/*/caffe_*_sparse.caffemodel`
and `*_original.caffemodel`), read without Caffe, their non-zero weights counted as the harness counts (conv and
fc weights; biases beside), and their test accuracy measured on the real MNIST test set.

    python benchmarks/dns_released.py --models DIR [--json OUT]

DIR holds the four .caffemodel files (fetch them from the repository; about 5.6 MB). Each layer of a DNS model
carries four blobs: the weight, the bias and their masks (T in the paper); the deployed weight is weight x mask.
The networks are Caffe's: inputs scaled by 0.00390625 (1/256, the Caffe LeNet data layer's `scale`; our tasks
use 1/255), LeNet-300-100 with ReLU after ip1 and ip2, LeNet-5 with no ReLU after its convolutions (the
prototxt's, unlike our lenet5 task) and max pooling 2x2 stride 2.

The files are read by `prunebench.caffemodel` (no Caffe or protobuf package). `--fixture OUT` also writes the
two sparse models' deployed weights (non-zeros only, compressed) for `tests/test_dns_released.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from prunebench.caffemodel import caffe_lenet, deployed, read_caffemodel
from prunebench.data import default_data_dir, file_digest, load_mnist
from prunebench.metrics import evaluate_accuracy, measure_compression
from prunebench.registry import get_task

#: Caffe's LeNet data layer scales pixels by this (our MNIST tensors are pixels / 255).
CAFFE_SCALE = 0.00390625
SOURCE = "yiwenguo/Dynamic-Network-Surgery@27d4926f0f (models/lenet300100/, models/lenet5/)"
FILES = {"lenet300": ("caffe_lenet300100_original.caffemodel", "caffe_lenet300100_sparse.caffemodel"),
         "lenet5": ("caffe_lenet5_original.caffemodel", "caffe_lenet5_sparse.caffemodel")}


def measure(task: str, path: Path, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Counts (per layer, weights and biases; the harness's `measure_compression`) and test accuracy of one
    released model."""
    params = deployed(read_caffemodel(path))
    net = caffe_lenet(task, params)
    counts = measure_compression(net)
    accuracy = evaluate_accuracy(net, images, labels, get_task(task).correct)
    biases = {name: (int(torch.count_nonzero(b)), b.numel()) for name, (_, b) in params.items()}
    return {"file": path.name, "sha256": file_digest(path), "per_layer": counts.per_layer, "biases": biases,
            "weights_total": counts.weights_total, "weights_nonzero": counts.weights_nonzero,
            "compression": counts.compression, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="directory with the four .caffemodel files")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--fixture", type=Path, default=None, help="write the sparse models' deployed non-zeros here")
    args = parser.parse_args()
    mnist = load_mnist(args.data_dir or default_data_dir())
    images = mnist.x_test * (255 * CAFFE_SCALE)  # pixels / 255 -> pixels / 256, as Caffe's data layer
    labels = mnist.y_test
    results: dict = {"source": SOURCE, "command": " ".join(["python benchmarks/dns_released.py", *sys.argv[1:]])}
    results |= {task: [measure(task, args.models / name, images, labels) for name in names]
                for task, names in FILES.items()}
    for task in FILES:
        for r in results[task]:
            per_layer = ", ".join(f"{n} {k:,}/{t:,} (biases {r['biases'][n][0]}/{r['biases'][n][1]})"
                                  for n, (k, t) in r["per_layer"].items())
            print(f"{task} {r['file']}: {r['compression']:.2f}x, {100 * r['accuracy']:.2f}% ({per_layer})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.fixture:
        write_fixture(args.models, args.fixture)


def write_fixture(models: Path, out: Path) -> None:
    """The sparse models' deployed layers as flat non-zero indices and values (weights) and dense biases."""
    arrays: dict[str, np.ndarray] = {}
    for task, (_, sparse) in FILES.items():
        for layer, (weight, bias) in deployed(read_caffemodel(models / sparse)).items():
            flat = weight.flatten()
            index = torch.nonzero(flat).flatten()
            arrays[f"{task}/{layer}/shape"] = np.array(weight.shape, dtype=np.int64)
            arrays[f"{task}/{layer}/index"] = index.numpy().astype(np.int32)
            arrays[f"{task}/{layer}/value"] = flat[index].numpy()
            arrays[f"{task}/{layer}/bias"] = bias.numpy()
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    main()
