"""Harness overhead: time per training step of `dense` through the harness divided by a minimal
hand-written PyTorch loop on the same task, measured side by side in one process.

    python benchmarks/harness_overhead.py --task lenet300 --steps 2000 --repeats 5

Each repeat runs both loops back to back (alternating which goes first); the reported ratio is the
median of the per-repeat ratios, so slow drifts of a shared machine cancel out. The harness time is
its own `train_seconds` (evaluation excluded, as it is for every run); the hand loop does no
evaluation. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from prunebench.data import default_data_dir
from prunebench.environment import device_name, pick_device
from prunebench.harness import train
from prunebench.request import make_spec
from prunebench.store import ResultStore


def hand_loop(task, data, steps: int, seed: int, device: torch.device) -> float:
    """The smallest honest training loop: same model, init, optimizer, batch size; seconds per step."""
    model = task.build_model(seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=task.protocol.lr)
    generator = torch.Generator(device=device).manual_seed(seed)
    n, batch = data.x_train.shape[0], task.protocol.batch_size
    perm, pos = torch.randperm(n, generator=generator, device=device), 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=generator, device=device), 0
        idx = perm[pos:pos + batch]
        pos += batch
        loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def harness_loop(spec, data, store: ResultStore, device: torch.device) -> float:
    result = train(spec, store, Path("."), device=device, dataset=data, force=True)
    return result.final["train_seconds"] / result.final["iterations"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="lenet300")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    device = pick_device(args.device)
    spec = make_spec(args.task, "dense", seed=0, iterations=args.steps, eval_every=args.steps)
    data = spec.task.load(default_data_dir()).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "overhead.sqlite")
        hand_loop(spec.task, data, 100, 0, device)  # warm-up both paths
        harness_loop(make_spec(args.task, "dense", iterations=100, eval_every=100), data, store, device)
        rows = []
        for rep in range(args.repeats):
            if rep % 2 == 0:
                h = harness_loop(spec, data, store, device)
                m = hand_loop(spec.task, data, args.steps, 0, device)
            else:
                m = hand_loop(spec.task, data, args.steps, 0, device)
                h = harness_loop(spec, data, store, device)
            rows.append({"repeat": rep, "harness_ms": 1e3 * h, "hand_ms": 1e3 * m, "ratio": h / m})
            print(f"repeat {rep}: harness {1e3 * h:.3f} ms/step, hand loop {1e3 * m:.3f} ms/step, ratio {h / m:.3f}")
        store.close()
    summary = {
        "task": args.task, "device": device_name(device), "steps": args.steps, "repeats": args.repeats,
        "median_harness_ms": statistics.median(r["harness_ms"] for r in rows),
        "median_hand_ms": statistics.median(r["hand_ms"] for r in rows),
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "torch": torch.__version__,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
