"""Training throughput of the CIFAR-10 / ImageNet task networks on this machine: images/s of `dense` and
`dynthresh` (and any other methods given), measured side by side in one process, FLOPs per image and
peak memory, written as a markdown table.

    python benchmarks/large_task_throughput.py --tasks vgg-cifar10,resnet56-cifar10,alexnet-imagenet \
        --methods dense,dynthresh --steps 10 --repeats 3 --out leaderboards/large-tasks-throughput.md

What is timed: the training step as the harness runs it (the method attached to the task's network,
forward, loss, the method's penalty, backward, the protocol's optimizer step, `after_step`) at the
protocol's batch size, on random inputs already on the device. The data pipeline is not timed (the
CIFAR-10 augmentation runs on the device and is small; ImageNet's JPEG decoding runs in loader workers
beside the training). Each repeat times every method once, in a rotating order, after `--warmup` steps;
images/s is the median over repeats, and the ratio to dense is the median of the per-repeat ratios, so
slow drifts of a shared machine cancel out. Peak memory: on CUDA `torch.cuda.max_memory_allocated`; on
CPU the peak resident set of a fresh process that runs the same steps (VmHWM), which includes the
Python and PyTorch baseline.

The measured numbers are of THIS machine; the paper-protocol estimate beside them is
`prunebench.running.estimate` (an ASSUMED GPU throughput), with this table's measured method/dense
ratio in place of its assumed overhead where one was measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from prunebench.environment import device_name, pick_device
from prunebench.harness import training_step
from prunebench.metrics import count_flops
from prunebench.registry import get_method, get_task
from prunebench.request import make_spec


def _input_shape(task: str) -> tuple[int, ...]:
    return (3, 227, 227) if task == "alexnet-imagenet" else (3, 32, 32)


class Stepper:
    """One method on one task, ready to take training steps on fixed random inputs."""

    def __init__(self, task: str, method: str, device: torch.device, batch_size: int | None = None) -> None:
        spec = make_spec(task, method, protocol={"batch_size": batch_size} if batch_size else None)
        self.task, self.protocol, self.device = spec.task, spec.protocol, device
        self.pruner = get_method(method)(spec.hparams, spec.task, spec.budget)
        self.model = self.pruner.attach(spec.task.build_model(0, spec.protocol)).to(device)
        phase = self.pruner.phases(spec.protocol)[0]
        self.optimizer = spec.protocol.make_optimizer(self.model.parameters(), lr=phase.lr)
        self.pruner.on_phase_start(phase, self.model, self.optimizer)
        generator = torch.Generator().manual_seed(0)
        batch = spec.protocol.batch_size
        self.x = torch.randn(batch, *_input_shape(task), generator=generator).to(device)
        self.y = torch.randint(0, 1000 if spec.task.top5 else 10, (batch,), generator=generator).to(device)
        self.step_count = 0
        self.model.train()

    def steps(self, n: int) -> float:
        """Seconds for `n` training steps (CUDA synchronised)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(n):
            self.step_count += 1
            training_step(self.model, self.task, self.pruner, self.optimizer, self.x, self.y, self.step_count)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def peak_resident_bytes() -> int:
    """This process's peak resident set (VmHWM): per address space, so it starts afresh at exec, unlike
    `ru_maxrss`, which a child inherits from the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: an upper bound


def peak_memory_child(task: str, method: str, steps: int, batch_size: int | None) -> int:
    """Peak resident bytes of a fresh process taking `steps` steps on the CPU."""
    args = [sys.executable, __file__, "--child", task, method, str(steps), str(batch_size or 0)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=dict(os.environ))
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="vgg-cifar10,resnet56-cifar10,alexnet-imagenet")
    parser.add_argument("--methods", default="dense,dynthresh")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method and repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method before the repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the task's protocol batch")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes (CPU)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements as JSON")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, method, steps, batch = args.child
        stepper = Stepper(task, method, torch.device("cpu"), int(batch) or None)
        stepper.steps(int(steps))
        print(peak_resident_bytes())
        return

    from prunebench.running.estimate import estimate_gpu_hours

    device = pick_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        steppers = {m: Stepper(task, m, device, args.batch_size) for m in methods}
        batch = next(iter(steppers.values())).protocol.batch_size
        for stepper in steppers.values():
            stepper.steps(args.warmup)
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        for repeat in range(args.repeats):
            order = methods[repeat % len(methods):] + methods[:repeat % len(methods)]
            for m in order:
                seconds[m].append(steppers[m].steps(args.steps))
                print(f"{task} {m} repeat {repeat}: {batch * args.steps / seconds[m][-1]:.1f} images/s",
                      file=sys.stderr, flush=True)
        reference = get_task(task).architecture()
        macs = count_flops(reference, torch.zeros(_input_shape(task))).dense
        del steppers
        for m in methods:
            ips = statistics.median(batch * args.steps / s for s in seconds[m])
            ratio = statistics.median(s / d for s, d in zip(seconds[m], seconds[methods[0]], strict=True))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                Stepper(task, m, device, args.batch_size).steps(2)
                peak = torch.cuda.max_memory_allocated(device)
            else:
                peak = None if args.no_memory else peak_memory_child(task, m, 2, args.batch_size)
            # The estimate's assumed method overhead replaced by the step-time ratio measured here.
            estimate = dataclasses.replace(estimate_gpu_hours(task, m), overhead=ratio)
            rows.append({"task": task, "method": m, "batch": batch, "images_per_s": ips, "step_ratio": ratio,
                         "macs_per_image": macs, "peak_bytes": peak, "estimate_hours": estimate.hours,
                         "estimate": estimate.describe().replace(
                             f"({m}'s ASSUMED overhead over dense)",
                             f"({m}'s step time over dense, measured above on {device.type})")})
    header = (f"Measured on {device_name(device)}, torch {torch.__version__}: {args.steps} timed steps x "
              f"{args.repeats} repeats per method, alternating, after {args.warmup} warm-up steps.")
    lines = [header, "", "| task | method | batch | images/s (median) | step time / dense | MACs / image (fwd) "
             "| peak memory | estimated GPU hours, paper protocol |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] else "-"
        lines.append(f"| {r['task']} | {r['method']} | {r['batch']} | {r['images_per_s']:.1f} | "
                     f"{r['step_ratio']:.2f} | {r['macs_per_image'] / 1e9:.3f} G | {peak} | "
                     f"{r['estimate_hours']:.1f} |")
    lines += ["", "How each estimate was made (arithmetic on assumptions, not a measurement):", ""]
    lines += [f"- {r['task']} / {r['method']}: {r['estimate']}" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        args.out.write_text(f"# Large-task training throughput\n\nGenerated by `{command}`.\n\n{text}\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
