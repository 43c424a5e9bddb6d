"""What a user's run costs end to end, each method against dense, fixed costs included (issue 28).

    python benchmarks/end_to_end.py --task lenet300 --iterations 10000 --short 1000 --threads 1,2 --repeats 3

Every run is a fresh `prunebench run ... --json` process, as a user starts it, with `OMP_NUM_THREADS` set to the
thread count; its `train_seconds` (the harness's training clock: every phase, compilation of fused kernels
and the first steps' warm-up included, evaluation excluded) is the figure. Within a repeat the methods run one
after another, in reversed order on odd repeats, and each method's ratio to dense is taken within the repeat;
the table shows medians over repeats (the machine is shared).

The fixed cost of a run (what it pays once: dynamo tracing and compilation of the fused kernels, the
allocator's and the data's first touch) is split from the per-step cost by a fit over two run lengths in fresh
processes, `--short` and `--iterations` steps: per step = (t_long - t_short) / (long - short), fixed = t_short -
short x per step. It is measured twice: with torch's on-disk compile cache warm (the usual case: every run
after the first on a machine), and cold (an empty `TORCHINDUCTOR_CACHE_DIR`, as the first run on a fresh
machine pays). Writes the `end-to-end` section of `leaderboards/method-cost.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from prunebench.registry import method_names

ROOT = Path(__file__).resolve().parents[1]
#: Issue 28's targets for the end-to-end ratio to dense (sparse VD's local reparameterisation doubles the
#: matrix products).
TARGETS = {"sparse-vd": 2.5}
DEFAULT_TARGET = 1.5
START, END = "<!-- end-to-end:start -->", "<!-- end-to-end:end -->"


def run_seconds(task: str, method: str, iterations: int, threads: int, work: Path, cache: Path) -> float:
    """train_seconds of one fresh `prunebench run` process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    db = work / f"{method}-{iterations}-{time.monotonic_ns()}.db"
    cmd = [sys.executable, "-m", "prunebench", "run", "--task", task, "--method", method, "--iterations",
           str(iterations), "--eval-every", str(iterations), "--device", "cpu", "--db", str(db), "--json",
           "--checkpoint-every", "1e9"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["train_seconds"])


def measure(task: str, methods: list[str], lengths: tuple[int, int], threads: int, repeats: int,
            work: Path, cache: Path) -> dict[tuple[str, int], list[float]]:
    """train_seconds per (method, iterations), one value per repeat, methods alternating."""
    for method in methods:  # fill the compile cache: every measured run finds it warm
        run_seconds(task, method, 20, threads, work, cache)
    times: dict[tuple[str, int], list[float]] = {}
    for repeat in range(repeats):
        for method in (methods if repeat % 2 == 0 else list(reversed(methods))):
            for iterations in lengths:
                seconds = run_seconds(task, method, iterations, threads, work, cache)
                times.setdefault((method, iterations), []).append(seconds)
                print(f"{threads} thr repeat {repeat} {method:10s} {iterations:6d} steps {seconds:8.2f} s", flush=True)
    return times


def cold_fixed(task: str, methods: list[str], short: int, threads: int, work: Path) -> dict[str, float]:
    """train_seconds of a `short`-step run with an empty compile cache, per method."""
    result = {}
    for method in methods:
        with tempfile.TemporaryDirectory(dir=work) as cache:
            result[method] = run_seconds(task, method, short, threads, work, Path(cache))
        print(f"{threads} thr cold  {method:10s} {short:6d} steps {result[method]:8.2f} s", flush=True)
    return result


def table(methods: list[str], times: dict[tuple[str, int], list[float]], cold: dict[str, float],
          lengths: tuple[int, int], threads: int, elapsed: float) -> list[str]:
    short, long = lengths
    lines = [f"### {threads} thread{'s' if threads > 1 else ''}", "",
             f"Measured {time.strftime('%Y-%m-%d')} on a {os.cpu_count()}-core CPU ({platform.machine()}, "
             f"{torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, no GPU, in "
             f"{elapsed / 60:.0f} min.", "",
             f"| method | {long:,}-step run, s (median) | x dense, end to end | per repeat | target | within "
             "| ms per step (fit) | x dense per step | fixed s, cache warm | fixed s, cache cold |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|---:|"]
    dense_long = times[("dense", long)]
    dense_step = statistics.median((lg - s) / (long - short) for lg, s in
                                   zip(dense_long, times[("dense", short)], strict=True))
    for method in methods:
        t_long, t_short = times[(method, long)], times[(method, short)]
        ratios = [m / d for m, d in zip(t_long, dense_long, strict=True)]
        steps = [(lg - s) / (long - short) for lg, s in zip(t_long, t_short, strict=True)]
        step = statistics.median(steps)
        fixed_warm = statistics.median(s - short * p for s, p in zip(t_short, steps, strict=True))
        fixed_cold = cold[method] - short * step
        target = None if method == "dense" else TARGETS.get(method, DEFAULT_TARGET)
        ratio = statistics.median(ratios)
        within = "-" if target is None else ("yes" if ratio <= target else "**no**")
        lines.append(f"| {method} | {statistics.median(t_long):.1f} | {ratio:.2f} | "
                     f"{', '.join(f'{r:.2f}' for r in ratios)} | {target or '-'} | {within} | {1000 * step:.2f} | "
                     f"{step / dense_step:.2f} | {fixed_warm:.1f} | {fixed_cold:.1f} |")
    return ["\n".join(lines) + "\n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lenet300")
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--short", type=int, default=1_000)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "leaderboards" / "method-cost.md")
    args = parser.parse_args()
    methods = ["dense", *[m for m in args.methods.split(",") if m and m != "dense"]]
    lengths = (args.short, args.iterations)
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "inductor-cache"
        for threads in (int(t) for t in args.threads.split(",")):
            began = time.time()
            cold = cold_fixed(args.task, methods, args.short, threads, work)
            times = measure(args.task, methods, lengths, threads, args.repeats, work, cache)
            sections += table(methods, times, cold, lengths, threads, time.time() - began)
    command = (f"python benchmarks/end_to_end.py --task {args.task} --methods {','.join(methods)} --iterations "
               f"{args.iterations} --short {args.short} --threads {{threads}} --repeats {args.repeats}")
    previous = args.out.read_text() if args.out.exists() else ""
    section = previous[previous.index(START):previous.index(END)] if START in previous else ""
    subsections = {block.split("\n", 1)[0]: "### " + block for block in section.split("### ")[1:]}
    for block in sections:  # the thread counts measured now replace theirs; the others are kept
        subsections[block.split("\n", 1)[0].removeprefix("### ")] = block
    body = [START, f"## End to end: a user's {args.task} run, fixed costs included", "",
            f"Generated by `{command.format(threads='T')}` for each thread count T below (each subsection says "
            "when and where it was measured). Method: the module docstring of `benchmarks/end_to_end.py` (fresh "
            "`prunebench run` processes, train_seconds, methods alternating, ratios within each repeat, medians; "
            "per-step and fixed cost from a fit over two run lengths; the cold fixed cost with an empty compile "
            "cache).", "",
            *[subsections[key].rstrip("\n") + "\n" for key in sorted(subsections)], END]
    if START in previous:
        text = previous[:previous.index(START)] + "\n".join(body) + previous[previous.index(END) + len(END):]
    else:
        text = previous.rstrip("\n") + "\n\n" + "\n".join(body) + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
