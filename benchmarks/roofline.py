"""Each task's dense training step against this machine's own limit, measured in one process (issue 28).

    python benchmarks/roofline.py --tasks lenet300,lenet5 --threads 1,2 --repeats 7

The limit is the machine's sgemm rate at the same thread count: a 1024 x 1024 x 1024 float32 matrix product,
2 * 1024^3 FLOP. A step's work is its matrix products: per example, 2 FLOP per multiply-accumulate of the
forward (`prunebench.metrics.count_flops`), times three (the forward, the gradient of each layer's input and
of its weights), less the first layer's input gradient, which autograd does not compute. Elementwise work
(activations, loss, the optimizer) is not counted, so the fraction is what the matrix products achieve of
the sgemm rate. Rounds alternate sgemm and each task's steps, and the table shows the median over rounds (the
machine is shared). The step is `harness.training_step` on the task's protocol batch, on a fixed batch of
its real training images, with the task's optimizer: the same function every run calls.

Writes the section between `<!-- roofline:start -->` and `<!-- roofline:end -->` of
leaderboards/method-cost.md (appended when the markers are missing).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from prunebench.data import default_data_dir
from prunebench.harness import training_step
from prunebench.metrics import count_flops
from prunebench.pruner import prunable_layers
from prunebench.registry import get_method
from prunebench.request import make_spec

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- roofline:start -->", "<!-- roofline:end -->"
GEMM = 1024


def gemm_seconds(repeats: int = 5) -> float:
    """Median seconds of one GEMM x GEMM float32 matrix product."""
    a, b = torch.randn(GEMM, GEMM), torch.randn(GEMM, GEMM)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class DenseStep:
    """The task's dense network taking training steps on one fixed batch of its real training images."""

    def __init__(self, task: str, data_dir: Path, channels_last: bool = False) -> None:
        spec = make_spec(task, "dense")
        self.task = spec.task
        self.pruner = get_method("dense")(spec.hparams, spec.task, spec.budget)
        self.model = self.pruner.attach(spec.task.build_model(0, spec.protocol))
        self.optimizer = spec.protocol.make_optimizer(self.model.parameters(), lr=spec.protocol.lr)
        data = spec.task.resident_data(data_dir)
        batch = spec.protocol.batch_size
        self.x, self.y = data.x_train[:batch].float(), data.y_train[:batch]
        self.flops = 2 * batch * (3 * count_flops(self.model, self.x[0]).dense - self._first_layer_macs())
        if channels_last:  # the convolutions' weights and input in NHWC (oneDNN's preferred layout on CPU)
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.count = 0

    def _first_layer_macs(self) -> int:
        """MACs per example of the first prunable layer (its input gradient is never computed)."""
        used = []
        _, layer = prunable_layers(self.model)[0]
        handle = layer.register_forward_hook(
            lambda module, _inputs, output: used.append(module.weight.numel() * (output[0].numel()
                                                                                 // module.weight.shape[0])))
        with torch.no_grad():
            self.model(self.x[:1])
        handle.remove()
        return used[0]

    def seconds(self, steps: int) -> float:
        """Median seconds of one training step over `steps` steps."""
        times = []
        for _ in range(steps):
            self.count += 1
            start = time.perf_counter()
            training_step(self.model, self.task, self.pruner, self.optimizer, self.x, self.y, self.count)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def measure(tasks: list[str], threads: int, repeats: int, steps: int, data_dir: Path) -> list[dict]:
    """One row per task (and per memory format for a convolutional task), measured in alternating rounds."""
    torch.set_num_threads(threads)
    steppers = {task: DenseStep(task, data_dir) for task in tasks}
    for task in tasks:
        if any(isinstance(m, torch.nn.Conv2d) for m in steppers[task].model.modules()):
            steppers[f"{task} channels_last"] = DenseStep(task, data_dir, channels_last=True)
    for stepper in steppers.values():
        stepper.seconds(5)  # warm-up
    gemm: list[float] = []
    step: dict[str, list[float]] = {task: [] for task in steppers}
    for _ in range(repeats):
        gemm.append(gemm_seconds())
        for task, stepper in steppers.items():
            step[task].append(stepper.seconds(steps))
    peak = 2 * GEMM ** 3 / statistics.median(gemm)
    rows = []
    for task, stepper in steppers.items():
        seconds = statistics.median(step[task])
        fractions = [stepper.flops / s / (2 * GEMM ** 3 / g) for s, g in zip(step[task], gemm, strict=True)]
        rows.append({"task": task, "threads": threads, "gflop": stepper.flops / 1e9, "ms": 1000 * seconds,
                     "achieved": stepper.flops / seconds / 1e9, "peak": peak / 1e9,
                     "fraction": statistics.median(fractions)})
        print(f"{task} {threads} thread(s): {1000 * seconds:.2f} ms/step, {rows[-1]['achieved']:.1f} of "
              f"{peak / 1e9:.1f} GFLOP/s ({100 * rows[-1]['fraction']:.0f}%)", flush=True)
    return rows


def section(rows: list[dict], command: str) -> str:
    lines = [START, "## Roofline: the dense step against this machine's sgemm rate", "",
             f"Generated by `{command}`. Machine: {os.cpu_count()}-core CPU ({platform.machine()}, "
             f"{torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, no GPU. Method: the module "
             "docstring of `benchmarks/roofline.py` (matrix-product FLOP of one step at the protocol's batch; "
             "sgemm = a 1024^3 float32 product in the same process at the same thread count; medians over "
             "alternating rounds; the fraction is taken within each round). A method's step costs its ratio to "
             "dense in the tables above times the dense step.", "",
             "| task (memory format) | threads | GFLOP per step | ms per step | GFLOP/s achieved | sgemm GFLOP/s "
             "| fraction of sgemm |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['threads']} | {r['gflop']:.3f} | {r['ms']:.2f} | {r['achieved']:.1f} | "
                     f"{r['peak']:.1f} | {100 * r['fraction']:.0f}% |")
    return "\n".join(lines + ["", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="lenet300,lenet5")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per task and round")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "leaderboards" / "method-cost.md")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    rows = [row for threads in map(int, args.threads.split(","))
            for row in measure(tasks, threads, args.repeats, args.steps, args.data_dir or default_data_dir())]
    command = (f"python benchmarks/roofline.py --tasks {args.tasks} --threads {args.threads} --repeats "
               f"{args.repeats} --steps {args.steps}")
    text = args.out.read_text() if args.out.exists() else ""
    new = section(rows, command)
    if START in text and END in text:
        text = text[:text.index(START)] + new + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
