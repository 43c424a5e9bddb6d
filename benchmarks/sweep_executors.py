"""Sweep executors side by side: the same sweep of short lenet300 runs through `LocalExecutor` (worker
processes), Ray (a local instance started for the sweep) and submitit (local processes), each into a
fresh store, in one process on one machine; writes `leaderboards/sweep-executors.md`.

    python benchmarks/sweep_executors.py --repeats 2

Every executor gets the same parallel slots (`--slots`, default 2) of one CPU thread each: local
`--jobs 2` (OMP_NUM_THREADS=1 per worker), Ray with 2 CPUs and `cpus_per_run=1`, submitit with
`cpus_per_run=1` and 2 jobs at once. Repeats alternate the order of the executors (forwards, then
backwards) so that a slow drift of a shared machine does not favour one of them.

- wall: `run_sweep` from call to return, as `prunebench sweep --executor X` spends it: starting the
  engine (Ray's local instance, submitit's job files), worker processes importing torch, training,
  sending the records back and writing the store.
- train, eval: the sums over the runs of their own `train_seconds` and `eval_seconds` (final rows).
- overhead per run = (wall - (train + eval) / slots) / runs: wall-clock each run costs beyond its own
  training and evaluation, had the slots been perfectly packed (so it also holds idle slots at the end
  of the sweep, when fewer runs than slots are left).

The runs' results (final rows and trajectories, timings left out) of every executor and repeat are
compared: they must be identical, as each run trains on one CPU thread whichever process runs it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from prunebench.data import default_data_dir
from prunebench.running.executors import Executor, LocalExecutor, RayExecutor, SubmititExecutor
from prunebench.running.sweep import SweepPlan, plan_sweep, run_sweep
from prunebench.store import ResultStore

TIMINGS = ("train_seconds", "eval_seconds")
OUT = Path(__file__).resolve().parent.parent / "leaderboards" / "sweep-executors.md"


def make(name: str, slots: int, folder: Path) -> Executor:
    if name == "local":
        return LocalExecutor(slots)
    if name == "ray":
        return RayExecutor(cpus_per_run=1)
    return SubmititExecutor(folder, cluster="local", cpus_per_run=1, array_parallelism=slots, time_limit_min=60,
                            poll_seconds=0.2)


def contents(db: Path) -> dict[str, dict[str, Any]]:
    """Each run's status, final row and trajectory without timings."""
    store = ResultStore(db)
    try:
        out = {}
        for row in store.conn.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall():
            final = store.final_row(row["run_id"]) or {}
            out[row["run_id"]] = {
                "status": row["status"], "final": {k: v for k, v in final.items() if k not in TIMINGS},
                "points": [{k: v for k, v in p.items() if k not in TIMINGS} for p in store.trajectory(row["run_id"])]}
        return out
    finally:
        store.close()


def measure(name: str, plan: SweepPlan, slots: int, data_dir: Path, tmp: Path, repeat: int) -> dict[str, Any]:
    db = tmp / f"{name}-{repeat}.sqlite"
    executor = make(name, slots, tmp / f"{name}-{repeat}.submitit")
    start = time.perf_counter()
    report = run_sweep(plan, db, data_dir, executor=executor, console=Console(quiet=True))
    wall = time.perf_counter() - start
    bad = [(o.run.label, o.status, o.error) for o in report.outcomes if o.status != "finished"]
    if bad:
        raise RuntimeError(f"{name}: runs did not finish: {bad}")
    store = ResultStore(db)
    finals = [store.final_row(r.spec.run_id) for r in plan.runs]
    store.close()
    train, evaluation = sum(f["train_seconds"] for f in finals), sum(f["eval_seconds"] for f in finals)
    return {"executor": name, "repeat": repeat, "wall": wall, "train": train, "eval": evaluation,
            "overhead": (wall - (train + evaluation) / slots) / len(plan.runs), "contents": contents(db)}


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ray
    import submitit

    return (f"{os.cpu_count()}-core CPU VM ({cpu}), no GPU; Python {platform.python_version()}, torch "
            f"{torch.__version__} (CPU), ray {ray.__version__}, submitit {submitit.__version__}, {platform.system()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="dynthresh,magnitude,dns", help="plus dense, as a sweep adds it")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--slots", type=int, default=2, help="runs at once (each one CPU thread)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--executors", default="local,ray,submitit")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    names = args.executors.split(",")
    plan = plan_sweep(args.methods.split(","), ["lenet300"], args.seeds, {}, iterations=args.iterations,
                      eval_every=args.eval_every)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunebench-executors-") as tmp:
        for repeat in range(args.repeats):
            for name in (names if repeat % 2 == 0 else names[::-1]):
                row = measure(name, plan, args.slots, data_dir, Path(tmp), repeat)
                print(f"repeat {repeat} {name:9s} wall {row['wall']:6.1f} s  train {row['train']:6.1f} s  "
                      f"eval {row['eval']:5.1f} s  overhead/run {row['overhead']:5.2f} s", file=sys.stderr)
                rows.append(row)
    load_after = os.getloadavg()
    reference = rows[0]["contents"]
    identical = all(row["contents"] == reference for row in rows)
    args.out.write_text(render(args, plan, rows, identical, reference, load_before, load_after))
    print(f"wrote {args.out}; results identical across executors: {identical}", file=sys.stderr)
    if not identical:
        sys.exit(1)


def render(args: argparse.Namespace, plan: SweepPlan, rows: list[dict[str, Any]], identical: bool,
           reference: dict[str, dict[str, Any]], load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    command = (f"python benchmarks/sweep_executors.py --methods {args.methods} --seeds "
               f"{' '.join(map(str, args.seeds))} --iterations {args.iterations} --eval-every {args.eval_every} "
               f"--slots {args.slots} --repeats {args.repeats}")
    lines = [
        "# Sweep executors: local processes, Ray, submitit",
        "",
        f"Generated by `{command}` ({time.strftime('%Y-%m-%d')}).",
        "",
        f"Machine: {machine()}. Load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(the machine was shared with other work, so single numbers are noisy).",
        "",
        f"Sweep: {len(plan.runs)} lenet300 runs (dense, {args.methods.replace(',', ', ')} x seeds "
        f"{', '.join(map(str, args.seeds))}), {args.iterations} iterations, evaluated every {args.eval_every} "
        f"(checkpoint every 60 s: none this short). {args.slots} runs at once, one CPU thread each: local "
        f"`--jobs {args.slots}`; Ray, a local instance started by the sweep (2 CPUs, `--cpus-per-run 1`); "
        f"submitit `--submitit-cluster local --cpus-per-run 1` ({args.slots} jobs at once). Each into a fresh "
        "store; the repeats alternate the order of the executors.",
        "",
        "wall: the sweep from start to end as `prunebench sweep` spends it (the engine's start included). "
        "train, eval: sums of the runs' own `train_seconds` / `eval_seconds`. overhead per run = "
        f"(wall - (train + eval) / {args.slots}) / {len(plan.runs)}: the wall-clock each run costs beyond its own "
        "training and evaluation (a worker process importing torch, scheduling, sending the record back, "
        "writing the store, idle slots at the end).",
        "",
        "| executor | repeat | wall s | train s (sum) | eval s (sum) | overhead per run s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['executor']} | {row['repeat']} | {row['wall']:.1f} | {row['train']:.1f} | "
                     f"{row['eval']:.1f} | {row['overhead']:.2f} |")
    lines += ["", "Median over the repeats:", "", "| executor | wall s | train s (sum) | overhead per run s |",
              "|---|---:|---:|---:|"]
    for name in dict.fromkeys(row["executor"] for row in rows):
        mine = [row for row in rows if row["executor"] == name]
        lines.append(f"| {name} | {statistics.median(r['wall'] for r in mine):.1f} | "
                     f"{statistics.median(r['train'] for r in mine):.1f} | "
                     f"{statistics.median(r['overhead'] for r in mine):.2f} |")
    verdict = ("identical" if identical else "NOT identical")
    lines += ["", "Where the overhead goes: Ray starts its worker processes once, with the instance, and reuses "
              "them for every run; the local executor and submitit start a Python process per run (per job), "
              "which imports torch and torchvision and loads MNIST before it trains (submitit also writes the "
              "job to a file, starts a controller process and polls for the result file)."]
    lines += ["", f"Results: {verdict} across the executors and repeats: every run's final row and trajectory "
              "(accuracy, compression, weights kept, loss at each evaluation; timings left out) compared "
              "field by field.", "", "| method | seed | accuracy | compression |", "|---|---:|---:|---:|"]
    for run in plan.runs:
        final = reference[run.spec.run_id]["final"]
        lines.append(f"| {run.spec.method} | {run.spec.seed} | {100 * final['accuracy']:.2f}% | "
                     f"{final['compression']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
