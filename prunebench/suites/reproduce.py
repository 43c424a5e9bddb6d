"""`prunebench reproduce dt-paper`: the results of the dynamic thresholding paper (Park & Lee, ECAI
2020), every method on this harness, side by side with the published figures.

What it reproduces (../shared/papers/dynamic-thresholding.txt):
- Table 1: DT on LeNet-300-100 with individual, layer-wise and global thresholds. A shared threshold
  carries the penalty of all its weights, so each scale has its own lambda, calibrated (seed 0) to the
  published accuracy loss; the calibration sweep is part of the plan and of the report.
- Table 2, MNIST columns: DT, iterative magnitude pruning, DNS, sparse VD (and DST, L0) on LeNet-300-100
  and LeNet-5, 3 seeds, baselines under their published schedules (`--budget paper`).
- Fig. 1: DT against sparse VD on LeNet-300-100: test accuracy of the network in training against
  iterations, with markers at 50x / 60x / 70x. DT's markers come from its own thresholds; sparse VD's from
  cutting its trained weights to exactly that ratio by log alpha at every evaluation ("accuracy at a
  target compression"), as the paper made them.
- Fig. 4: XOR, every weight's magnitude and threshold over the iterations.
- Table 2, CIFAR-10 and ImageNet columns (full version only): DT, and the implemented methods with a
  published figure there (VGG-like: sparse VD; AlexNet: iterative magnitude pruning, DNS), with their
  dense references, one seed each, under the task's paper protocol (`--budget equal`; the published
  baselines used their own, longer schedules). Figs. 5-7 come from the DT runs of these: the threshold
  distribution during training (VGG-like), remaining weights per layer and top-1/top-5 accuracy during
  training (AlexNet). Such an item runs only where its data is present and verified and a CUDA device
  is available; otherwise the report lists it with what it needs ("needs the data", "needs a GPU
  (about N h estimated)", see `prunebench.running.estimate`), never leaving it out silently. A run of
  such an item already finished in the store (e.g. on another machine) is reported as usual.

Runs already finished in the store are reused (a stored run that lacks what a figure needs, such as the
per-evaluation target-compression accuracies, is run again); an interrupted reproduction continues where
it stopped. `quick` plans a reduced version (few iterations, one seed) that finishes in minutes on a
2-core CPU; its numbers test the pipeline, not the paper.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from prunebench.harness import TrainOptions
from prunebench.observers import Observer
from prunebench.registry import task_names
from prunebench.report import stats
from prunebench.report.leaderboard import run_table, shown_name
from prunebench.report.matched import ALPHA, MatchedCell, accuracy_text, build_matched, cell_text
from prunebench.report.published import DT_TABLE1_SCALES, RELEASED, published
from prunebench.request import RunRequest, RunSpec
from prunebench.results import load_trajectories
from prunebench.running.curve import CurveSettings
from prunebench.running.estimate import (
    METHOD_OVERHEAD,
    TASK_DATA,
    UNKNOWN_OVERHEAD,
    data_blocker,
    estimate_gpu_hours,
    format_hours,
)
from prunebench.running.runner import train_requests
from prunebench.selection import best_on_validation
from prunebench.store import ResultStore

FIG1_RATIOS = (50.0, 60.0, 70.0)
#: Fig. 1 marker rule: the first evaluation at which the pruned network is within this many points of
#: the method's own final accuracy.
FIG1_WITHIN_PP = 0.5
#: DT paper sec. 1 / Fig. 1: iterations to 60x and 70x, DT vs sparse VD.
FIG1_PUBLISHED = {60.0: (5_600, 6_700), 70.0: (7_400, 9_100)}
#: Flag a measurement that misses the published compression by more than this fraction, or the
#: published accuracy loss by more than this many points.
MISS_COMPRESSION = 0.20
MISS_LOSS_PP = 0.2

#: Table 1 lambdas per threshold scale (individual: the task default). Chosen from TABLE1_SWEEP (seed 0)
#: as the lambda whose accuracy loss is closest to the published one; see the report's sweep table.
TABLE1_LAMBDA = {"layer": 2e-6, "global": 2e-6}
TABLE1_SWEEP = {"layer": (1e-7, 1e-6, 2e-6, 3e-6, 1e-5, 5e-4), "global": (1e-7, 1e-6, 2e-6, 3e-6, 5e-4)}
TABLE2_METHODS = ("dynthresh", "magnitude", "dns", "sparse-vd", "dst", "l0", "sensitivity", "srinivas")
TABLE2_TASKS = ("lenet300", "lenet5")
PAPER_BUDGET = {"magnitude", "dns", "sparse-vd"}  # methods with a published schedule of their own


@dataclass(frozen=True)
class Variant:
    """A further Table 2 row beside a method's own: another budget, protocol or hyperparameter (3 seeds;
    under another protocol its accuracy loss is counted against dense under that same protocol)."""

    task: str
    method: str
    label: str
    hparams: tuple[tuple[str, Any], ...] = ()
    protocol: tuple[tuple[str, Any], ...] = ()
    budget: str = "equal"
    iterations: int | None = None


#: The authors' DST protocol (code mnist/train_argument.py): SGD lr 0.01, momentum 0.9, batch 64, 20 epochs.
DST_AUTHORS = (("optimizer", "sgd"), ("lr", 0.01), ("momentum", 0.9), ("batch_size", 64))
#: Caffe's LeNet solver (SGD lr 0.01, momentum 0.9, weight decay 5e-4), under which DNS was published.
CAFFE_SGD = (("optimizer", "sgd"), ("lr", 0.01), ("momentum", 0.9), ("weight_decay", 5e-4))
#: Caffe's stock LeNet solver as the DNS authors trained with it (issue 31): batch 64 and the "inv" lr policy.
CAFFE_INV = CAFFE_SGD + (("batch_size", 64), ("lr_policy", "inv"), ("lr_gamma", 1e-4), ("lr_power", 0.75))
#: The DST authors' protocol with what their code adds (issue 31): PyTorch's default init, and 5,000 training
#: images held out so that their best-epoch rule can be applied on validation, not test.
DST_CODE = DST_AUTHORS + (("init", "default"), ("validation", 5000))
#: Evaluations of the DST code variant: about once per epoch of 60,000 images at batch 64 (their checkpoints).
DST_CODE_EVAL_EVERY = 937
#: DT's LeNet-5 lambda (not in the paper): the seed-0 runs it was chosen from (5e-4: LeNet-300-100's).
LENET5_DT_SWEEP = (5e-4, 2e-4, 1e-4)
TABLE2_VARIANTS: tuple[Variant, ...] = (
    Variant("lenet5", "dynthresh", "LeNet-300-100's lambda 5e-4 reused, not calibrated", (("lam", 5e-4),)),
    Variant("lenet300", "dns", "Caffe SGD, c_rate searched under it", (("c_rate", (6.0, 4.5, 3.0)),),
            CAFFE_SGD, budget="paper"),
    Variant("lenet300", "dst", "the authors' SGD protocol and alpha 5e-4, 20 epochs", (("alpha", 5e-4),),
            DST_AUTHORS, iterations=18_750),
    Variant("lenet300", "l0", "budget paper: 200 epochs", budget="paper"),
    Variant("lenet5", "l0", "budget paper: 200 epochs", budget="paper"),
    Variant("lenet300", "dns", "the authors' Caffe solver: inv lr, batch 64, biases masked",
            (("c_rate", (6.0, 4.5, 3.0)), ("mask_biases", True)), CAFFE_INV, budget="paper"),
    Variant("lenet300", "dst", "the authors' code: PyTorch init, threshold reset, 5,000 images held out",
            (("alpha", 5e-4), ("threshold_reset", True)), DST_CODE, iterations=18_750),
)
SEEDS = (0, 1, 2)
#: Table 2's CIFAR-10 and ImageNet columns: dense and the implemented methods the paper gives a figure for.
#: Each runs under the task's paper protocol (budget "equal": the methods' "paper" schedules are the
#: LeNet ones), one seed (a VGG-like run is GPU hours, an AlexNet run about a GPU day).
LARGE_TABLE2: dict[str, tuple[str, ...]] = {
    "vgg-cifar10": ("dense", "dynthresh", "sparse-vd"),
    "alexnet-imagenet": ("dense", "dynthresh", "magnitude", "dns", "srinivas"),
}
LARGE_SEEDS = (0,)
#: Figs. 5-7: the task whose DT run (seed 0, the same run as its Table 2 row) draws each, and what it shows.
LARGE_FIGURES: dict[str, tuple[str, str]] = {
    "fig5": ("vgg-cifar10", "distribution of the thresholds during training"),
    "fig6": ("alexnet-imagenet", "remaining weights per layer during training"),
    "fig7": ("alexnet-imagenet", "top-1 and top-5 accuracy during training"),
}


@dataclass(frozen=True)
class Item:
    """One run the reproduction needs: the run request, why it is needed, and what its evaluations add
    (not part of the run's identity)."""

    purpose: str  # table1-sweep | table1 | table2 | fig1 | fig4 | fig5 | fig6 | fig7
    request: RunRequest
    at_compressions: tuple[float, ...] = ()
    record_thresholds: bool = False
    #: What a "table2-variant" row is, e.g. "budget paper" or "SGD lr 0.01, the authors' optimizer".
    label: str = ""

    task = property(lambda self: self.request.task)
    method = property(lambda self: self.request.method)
    seed = property(lambda self: self.request.seed)
    hparams = property(lambda self: self.request.hparams)
    budget = property(lambda self: self.request.budget)
    iterations = property(lambda self: self.request.iterations)
    eval_every = property(lambda self: self.request.eval_every)
    #: Overrides of the task's protocol (optimizer, lr, momentum, weight_decay, batch_size): a variant row.
    protocol = property(lambda self: self.request.protocol)

    @cached_property
    def spec(self) -> RunSpec:
        """The validated run (builds and attaches the model once: cached)."""
        return self.request.resolve()

    @property
    def large(self) -> bool:
        """A CIFAR-10 / ImageNet item: runs only with its data verified and a GPU (see `needs`)."""
        return self.task in TASK_DATA

    @cached_property
    def run_id(self) -> str:
        """The run's identity (no network built); for a large task not registered, a placeholder."""
        if self.large and self.task not in task_names():
            return f"unregistered:{self.task}/{self.method}/{self.seed}/{self.budget}"
        return self.request.run_id

    def command(self, db: str | None = None) -> str:
        ratios = ["--eval-at-compression", ",".join(f"{r:g}" for r in self.at_compressions)]
        return self.request.command(*(ratios if self.at_compressions else []), *(["--db", db] if db else []),
                                    *(["--record-thresholds"] if self.record_thresholds else []))


def make_item(purpose: str, task: str, method: str, seed: int, hparams: tuple[tuple[str, Any], ...] = (),
         budget: str = "equal", iterations: int | None = None, eval_every: int | None = None, *,
         protocol: tuple[tuple[str, Any], ...] = (), **evaluation: Any) -> Item:
    """An `Item` for `purpose` of the run request built from the remaining arguments; `evaluation`:
    at_compressions, record_thresholds, label."""
    request = RunRequest(task, method, seed, hparams, iterations, eval_every, budget, protocol)
    return Item(purpose, request, **evaluation)


def plan(quick: bool = False) -> list[Item]:
    """Every run of the reproduction, in the order they run (cheap and central ones first)."""
    seeds = (0,) if quick else SEEDS
    iters300 = 300 if quick else None  # quick: a smoke run of every item (CI runs it), not a result
    iters5 = 50 if quick else None
    items: list[Item] = []
    # Table 1 (LeNet-300-100, DT per threshold scale) and its calibration sweep.
    for seed in seeds:
        items.append(make_item("table2", "lenet300", "dense", seed, iterations=iters300))
        # evaluated every 100 steps: the same runs draw Fig. 1 (eval_every is not part of the identity)
        items.append(make_item("table1", "lenet300", "dynthresh", seed, iterations=iters300, eval_every=100))
        for scale, lam in TABLE1_LAMBDA.items():
            items.append(make_item("table1", "lenet300", "dynthresh", seed, (("scale", scale), ("lam", lam)),
                              iterations=iters300))
    if not quick:
        for scale in TABLE1_LAMBDA:
            for lam in TABLE1_SWEEP[scale]:
                items.append(make_item("table1-sweep", "lenet300", "dynthresh", 0, (("scale", scale), ("lam", lam))))
    # Fig. 1 (LeNet-300-100, evaluated every 100 steps; sparse VD's markers at exact ratios).
    fig_seeds = (0,) if quick else SEEDS
    for seed in fig_seeds:
        items.append(make_item("fig1", "lenet300", "dynthresh", seed, iterations=iters300, eval_every=100))
        items.append(make_item("fig1", "lenet300", "sparse-vd", seed, iterations=iters300, eval_every=100,
                          at_compressions=FIG1_RATIOS))
    # Fig. 4 (XOR).
    items.append(make_item("fig4", "xor", "dynthresh", 0, iterations=1_000 if quick else None, eval_every=50,
                      record_thresholds=True))
    # Table 2 (both LeNets, every method).
    for task, iters in (("lenet300", iters300), ("lenet5", iters5)):
        for seed in seeds:
            if task != "lenet300":
                items.append(make_item("table2", task, "dense", seed, iterations=iters))
            for method in TABLE2_METHODS:
                if task == "lenet300" and method == "dynthresh":
                    continue  # Table 1's individual-threshold runs
                budget = "paper" if method in PAPER_BUDGET and not quick else "equal"
                items.append(make_item("table2", task, method, seed, budget=budget, iterations=iters))
    if not quick:
        items += [make_item("table2-sweep", "lenet5", "dynthresh", 0, (("lam", lam),)) for lam in LENET5_DT_SWEEP]
        for seed in seeds:
            for v in TABLE2_VARIANTS:
                every = DST_CODE_EVAL_EVERY if v.protocol == DST_CODE else None
                if v.protocol:  # its dense reference, under the same protocol
                    items.append(make_item("table2-dense", v.task, "dense", seed, protocol=v.protocol,
                                      iterations=v.iterations, eval_every=every))
                items.append(make_item("table2-variant", v.task, v.method, seed, v.hparams, v.budget, v.iterations,
                                  protocol=v.protocol, label=v.label, eval_every=every))
    if not quick:
        items += large_items()
    return items


def large_items() -> list[Item]:
    """Table 2's CIFAR-10 and ImageNet columns and Figs. 5-7 (their DT runs), in the order they run."""
    items = [make_item("table2", task, method, seed) for task, methods in LARGE_TABLE2.items()
             for seed in LARGE_SEEDS for method in methods]
    items += [make_item(fig, task, "dynthresh", LARGE_SEEDS[0]) for fig, (task, _) in LARGE_FIGURES.items()]
    return items


@dataclass(frozen=True)
class Needs:
    """What keeps a large item from running here."""

    task: str | None = None  # the task is not registered
    data: str | None = None  # the data is missing or not verified (`estimate.data_blocker`)
    gpu_hours: float | None = None  # no CUDA device: the estimate (NaN when there is none)
    gpu_basis: str = ""  # how the estimate was made

    def _gpu(self) -> str:
        if self.gpu_hours is None:
            return ""
        if not math.isfinite(self.gpu_hours):
            return "needs a GPU"
        return f"needs a GPU (about {format_hours(self.gpu_hours)} estimated)"

    def short(self) -> str:
        """E.g. "needs the data; needs a GPU (about 0.13 h estimated)"."""
        parts = ["needs the task" if self.task else "", "needs the data" if self.data else "", self._gpu()]
        return "; ".join(p for p in parts if p)

    def long(self) -> str:
        """`short` with the details: which files are missing, how the GPU hours were estimated."""
        gpu = f"{self._gpu()}: {self.gpu_basis}" if self.gpu_hours is not None else ""
        return "; ".join(p for p in (self.task, self.data, gpu) if p)


def needs(items: list[Item], data_dir: Path) -> dict[str, Needs]:
    """run_id -> what it needs, for every large item that cannot run here (the data is checked once per
    task; no CUDA device means every large item needs a GPU)."""
    import torch

    from prunebench.registry import get_task

    gpu = torch.cuda.is_available()
    data: dict[str, str | None] = {}
    out: dict[str, Needs] = {}
    for item in items:
        if not item.large or item.run_id in out:
            continue
        try:
            get_task(item.task)
        except KeyError:
            out[item.run_id] = Needs(task=f"needs the task {item.task!r} (not registered in prunebench.tasks yet)")
            continue
        if item.task not in data:
            data[item.task] = data_blocker(item.task, data_dir)
        hours, basis = None, ""
        if not gpu:
            try:
                estimate = estimate_gpu_hours(item.task, item.method)
                hours, basis = estimate.hours, estimate.describe()
            except (KeyError, ValueError) as exc:
                hours, basis = math.nan, f"no estimate ({exc.args[0] if exc.args else exc})"
        if data[item.task] or hours is not None:
            out[item.run_id] = Needs(data=data[item.task], gpu_hours=hours, gpu_basis=basis)
    return out


def _lacks(item: Item, store: ResultStore) -> bool:
    """True when the finished run of `item` lacks what the item needs: evaluations as fine as its
    eval_every, the target-compression accuracies, or (Fig. 4) the thresholds at every evaluation."""
    points = store.trajectory(item.run_id)
    if item.eval_every is not None and len(points) > 1 and points[1]["step"] - points[0]["step"] > item.eval_every:
        return True
    if item.at_compressions:
        extra = json.loads(points[-1]["extra"]) if points and points[-1].get("extra") else {}
        if "at_compression" not in extra:
            return True
    if item.record_thresholds:
        from prunebench.suites.fig4 import has_thresholds

        return not has_thresholds(store, item.run_id, item.eval_every or item.spec.protocol.eval_every,
                                  item.spec.protocol.iterations)
    return False


def execute(items: list[Item], store: ResultStore, data_dir: Path,
            on_start: Callable[[Item, bool], None] | None = None,
            observer_for: Callable[[Item], Observer] | None = None,
            blocked: dict[str, Needs] | None = None) -> dict[str, str]:
    """Run every item not already finished (or finished without what it needs). Returns run_id -> status;
    a large item that cannot run here (`blocked`, default: `needs(items, data_dir)`) is not trained and
    gets the status "blocked: <what it needs>" (the report lists it)."""
    blocked = needs(items, data_dir) if blocked is None else blocked
    status: dict[str, str] = {}
    datasets: dict[str, Any] = {}  # each task's resident tensors, read once for all its runs (as a sweep does)
    for item in items:
        if item.run_id in status:
            continue
        finished = store.status(item.run_id) == "finished"
        if item.run_id in blocked and not finished:
            if on_start is not None:
                on_start(item, False)
            status[item.run_id] = f"blocked: {blocked[item.run_id].short()}"
            continue
        rerun = finished and _lacks(item, store)
        skip = finished and not rerun
        if on_start is not None:
            on_start(item, skip)
        if skip:
            status[item.run_id] = "finished"
            continue
        options = TrainOptions(force=rerun, at_compressions=item.at_compressions,
                               record_thresholds=item.record_thresholds)
        (result,) = train_requests([item.request], store, data_dir, options, specs={item.run_id: item.spec},
                                   observer_for=(lambda _, i=item: observer_for(i)) if observer_for else None,
                                   datasets=datasets)
        status[item.run_id] = result.status
    return status


# -- the report ---------------------------------------------------------------------------------------
def _measured_runs(db: Path) -> pd.DataFrame:
    """Every finished run of the paper's tasks with its accuracy loss against dense of the same seed
    (`run_table`)."""
    tables = [t for t in (run_table(db, task) for task in (*TABLE2_TASKS, *LARGE_TABLE2)) if not t.empty]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["run_id"])


def _rows_for(runs: pd.DataFrame, items: list[Item]) -> pd.DataFrame:
    return runs[runs["run_id"].isin({i.run_id for i in items})]


def _summary(runs: pd.DataFrame, items: list[Item]) -> dict[str, Any]:
    rows = _rows_for(runs, items)
    return {
        "seeds": len(rows), "planned": len({i.run_id for i in items}),
        "compression": stats.mean(rows["compression"]) if len(rows) else math.nan,
        "compression_std": stats.std(rows["compression"]) if len(rows) else math.nan,
        "loss": stats.mean(rows["accuracy_loss"]) if len(rows) else math.nan,
        "loss_std": stats.std(rows["accuracy_loss"]) if len(rows) else math.nan,
        "train_seconds": stats.mean(rows["train_seconds"]) if len(rows) else math.nan,
        "accuracy": stats.mean(rows["accuracy"]) if len(rows) else math.nan,
        "top5": stats.mean(rows["top5"]) if len(rows) and "top5" in rows else math.nan,
    }


def _fmt(value: float, digits: int = 1, suffix: str = "", sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}{suffix}" if sign else f"{value:.{digits}f}{suffix}"


def _pm(mean: float, std: float, digits: int, suffix: str = "", sign: bool = False) -> str:
    text = _fmt(mean, digits, suffix, sign)
    return text if not math.isfinite(std) else f"{text} ± {std:.{digits}f}"


def _verdict(summary: dict[str, Any], pub_cr: float | None, pub_loss: float | None) -> str:
    """Says where the measurement differs from the published figure by more than the thresholds, in
    either direction (more compression than published is a difference too, not a pass)."""
    if summary["seeds"] == 0:
        return "not run yet"
    if pub_cr is None and pub_loss is None:
        return "nothing published"
    notes = []
    if pub_cr is not None and math.isfinite(summary["compression"]):
        ratio = summary["compression"] / pub_cr - 1
        if abs(ratio) > MISS_COMPRESSION:
            notes.append(f"compression {100 * abs(ratio):.0f}% {'above' if ratio > 0 else 'below'} published")
    if pub_loss is not None and math.isfinite(summary["loss"]):
        diff = summary["loss"] - pub_loss
        if abs(diff) > MISS_LOSS_PP:
            notes.append(f"loss {abs(diff):.2f} pp {'worse' if diff > 0 else 'better'} than published")
    if summary["seeds"] < summary["planned"]:
        notes.append(f"{summary['seeds']} of {summary['planned']} seeds")
    return "; ".join(notes) if notes else "within 20% / 0.2 pp"


def _row(label: str, summary: dict[str, Any], pub_cr: float | None, pub_loss: float | None,
         command: str, verdict: str | None = None, exact_published: bool = False) -> str:
    """One table row; `verdict` replaces the computed one, `exact_published` prints the published
    compression as published (11.7x) rather than rounded (12x)."""
    diff_cr = (f"{100 * (summary['compression'] / pub_cr - 1):+.0f}%"
               if pub_cr and math.isfinite(summary["compression"]) else "-")
    diff_loss = (f"{summary['loss'] - pub_loss:+.2f}" if pub_loss is not None and math.isfinite(summary["loss"])
                 else "-")
    published_cr = (f"{pub_cr:g}x" if exact_published else _fmt(pub_cr, 0, "x")) if pub_cr else "n/p"
    return (f"| {label} | {published_cr} | "
            f"{_pm(summary['compression'], summary['compression_std'], 1, 'x')} | {diff_cr} | "
            f"{_fmt(pub_loss, 2, sign=True) if pub_loss is not None else 'n/p'} | "
            f"{_pm(summary['loss'], summary['loss_std'], 2, sign=True)} | {diff_loss} | {summary['seeds']} | "
            f"{_fmt(summary['train_seconds'], 0)} | {verdict or _verdict(summary, pub_cr, pub_loss)} | "
            + (f"`{command}` |" if command else "- |"))


TABLE_HEADER = ("| row | published CR | measured CR | diff | published loss (pp) | measured loss (pp) | diff (pp) | "
                "seeds | train s / run | verdict | command (seed 0) |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _group(items: list[Item], purpose: str, task: str, method: str, **match: Any) -> list[Item]:
    out = []
    for i in items:
        if i.purpose != purpose or i.task != task or i.method != method:
            continue
        hp = dict(i.hparams)
        if all(hp.get(k) == v for k, v in match.items()) and (match or not hp):
            out.append(i)
    return out


def fig1_markers(db: Path, items: list[Item]) -> pd.DataFrame:
    """Per method and ratio: mean (over seeds) first iteration and training seconds at which the pruned
    network is within FIG1_WITHIN_PP of the method's own final accuracy (DT: its thresholds' network at
    >= the ratio; sparse VD: its weights cut to exactly the ratio by log alpha)."""
    rows = []
    fig = [i for i in items if i.purpose == "fig1"]
    traj = load_trajectories(db, [i.run_id for i in fig])
    for method in ("dynthresh", "sparse-vd"):
        for ratio in FIG1_RATIOS:
            iters, secs = [], []
            for item in (i for i in fig if i.method == method):
                points = traj[traj["run_id"] == item.run_id].sort_values("step")
                if points.empty:
                    continue
                final = float(points["accuracy"].iloc[-1])
                hit = None
                for _, p in points.iterrows():
                    if method == "sparse-vd":
                        extra = json.loads(p["extra"]) if isinstance(p["extra"], str) else {}
                        acc = extra.get("at_compression", {}).get(f"{ratio:g}")
                        ok = acc is not None and acc >= final - FIG1_WITHIN_PP / 100
                    else:
                        ok = p["compression"] >= ratio and p["accuracy"] >= final - FIG1_WITHIN_PP / 100
                    if ok:
                        hit = p
                        break
                if hit is not None:
                    iters.append(int(hit["step"]))
                    secs.append(float(hit["train_seconds"]))
            rows.append({"method": method, "ratio": ratio, "reached": len(iters),
                         "runs": sum(1 for i in fig if i.method == method),
                         "iterations": stats.mean(iters), "seconds": stats.mean(secs)})
    return pd.DataFrame(rows)


def _finished_runs(db: Path, items: list[Item]) -> pd.DataFrame:
    """The finished runs of the plan (any task), one row each."""
    from prunebench.results import load_runs

    runs = load_runs(db, status="finished")
    return runs[runs["run_id"].isin({i.run_id for i in items})]


def write_report(db: Path, out_dir: Path, items: list[Item], quick: bool, command: str,
                 wall_seconds: float | None = None, figures: bool = True,
                 blocked: dict[str, Needs] | None = None, data_dir: Path | None = None,
                 matched: Sequence[tuple[CurveSettings, Path]] = ()) -> Path:
    """Write `out_dir/README.md` (and the figures) from the store. Returns the README's path. `blocked`:
    what the large items that cannot run here need (default: `needs(items, data_dir)`). `matched`: the curves
    (settings and the store of their runs) of the section "DT against the others at matched compression"."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = _measured_runs(db)
    finished = _finished_runs(db, items)
    if blocked is None:
        from prunebench.data import default_data_dir

        blocked = needs(items, data_dir if data_dir is not None else default_data_dir())
    blocked = {rid: n for rid, n in blocked.items() if rid not in set(finished["run_id"])}
    lines = _introduction(db, items, runs, finished, blocked, quick, command, wall_seconds)
    lines += _table1(items, runs) + _table2(items, runs) + _dst_code_epochs(db, items, runs)
    lines += _figures(db, out_dir, items, finished, figures)
    lines += _large_section(db, out_dir, items, runs, finished, blocked, quick, figures)
    if not quick:
        lines += matched_section(matched)
    path = out_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _introduction(db: Path, items: list[Item], runs: pd.DataFrame, finished: pd.DataFrame,
                  blocked: dict[str, Needs], quick: bool, command: str, wall_seconds: float | None) -> list[str]:
    """The report's title, the command that regenerates it, where it ran and how many runs are finished."""
    import torch

    devices = ", ".join(sorted(set(_rows_for(runs, items).get("device", pd.Series(dtype=str)).dropna()))) or "?"
    lines = ["# Dynamic thresholding paper (Park & Lee, ECAI 2020): results reproduced", ""]
    if quick:
        lines += ["**QUICK VERSION**: few iterations and one seed, to test the pipeline. These numbers say "
                  "nothing about the paper; the full version is `prunebench reproduce dt-paper`.", ""]
    lines += ["Regenerate with:", "", "```", command, "```", "",
              f"Machine: {platform.machine()}; runs on: {devices}; Python {platform.python_version()}, "
              f"torch {torch.__version__}. Store: `{db}`. Every measured number below comes from a run in "
              "that store; accuracy loss = dense accuracy of the same seed minus the pruned network's, in "
              f"points (positive = worse). A row is flagged when it misses the published compression by more "
              f"than {100 * MISS_COMPRESSION:.0f}% or the published loss by more than {MISS_LOSS_PP} points. "
              "n/p = not published.", ""]
    total = float(finished["train_seconds"].sum()) if len(finished) else 0.0
    cannot = (f" {len(blocked)} cannot run on this machine (listed with what they need under \"CIFAR-10 and "
              "ImageNet columns\")." if blocked else "")
    lines += [f"Runs: {len(finished)} of {len({i.run_id for i in items})} planned are finished; their training "
              f"wall-clock adds up to {total / 3600:.2f} h"
              + (f" (this invocation: {wall_seconds / 60:.1f} min)" if wall_seconds is not None else "") + "."
              + cannot, ""]
    return lines


def _table1(items: list[Item], runs: pd.DataFrame) -> list[str]:
    """Table 1 (LeNet-300-100, DT per threshold scale) and its calibration sweep."""
    lines = ["## Table 1: LeNet-300-100, threshold scales", "", TABLE_HEADER]
    pub_ind = published("dynthresh", "lenet300", {})
    group = _group(items, "table1", "lenet300", "dynthresh")
    lines.append(_row("individual (lambda 5e-4)", _summary(runs, group), pub_ind.compression, pub_ind.accuracy_loss,
                      group[0].command() if group else ""))
    for scale, lam in TABLE1_LAMBDA.items():
        pub = DT_TABLE1_SCALES[scale]
        group = _group(items, "table1", "lenet300", "dynthresh", scale=scale)
        lines.append(_row(f"{scale} (lambda {lam:g})", _summary(runs, group), pub.compression, pub.accuracy_loss,
                          group[0].command() if group else ""))
    sweep = [i for i in items if i.purpose == "table1-sweep"]
    if sweep:
        lines += ["", "Calibration sweep (seed 0): each scale's lambda is the one whose loss is closest to the "
                  "published loss (layer 0.33 pp, global 0.25 pp).", "",
                  "| scale | lambda | compression | loss (pp) | command |", "|---|---|---|---|---|"]
        for item in sweep:
            s = _summary(runs, [item])
            lines.append(f"| {dict(item.hparams)['scale']} | {dict(item.hparams)['lam']:g} | "
                         f"{_fmt(s['compression'], 1, 'x')} | {_fmt(s['loss'], 2, sign=True)} | `{item.command()}` |")
    return lines


def _table2(items: list[Item], runs: pd.DataFrame) -> list[str]:
    """Table 2's MNIST columns, their variants and DT's LeNet-5 calibration runs."""
    lines = ["", "## Table 2: MNIST columns", "", TABLE_HEADER]
    sources: list[str] = []
    for task in TABLE2_TASKS:
        for method in TABLE2_METHODS:
            if task == "lenet300" and method == "dynthresh":
                group = _group(items, "table1", "lenet300", "dynthresh")
            else:
                group = _group(items, "table2", task, method)
            if not group:
                continue
            pub = published(method, task, {})
            budget = f" (budget {group[0].budget})" if group[0].budget != "equal" else ""
            label = f"{task} / {shown_name(method)}{budget}"
            lines.append(_row(label, _summary(runs, group), pub.compression if pub else None,
                              pub.accuracy_loss if pub else None, group[0].command()))
            for v in TABLE2_VARIANTS:
                if (v.task, v.method) != (task, method):
                    continue
                variant = [i for i in items if i.purpose == "table2-variant" and (i.task, i.method, i.label)
                           == (task, method, v.label)]
                if variant:
                    lines.append(_row(f"{task} / {shown_name(method)} ({v.label})", _summary(runs, variant),
                                      pub.compression if pub else None, pub.accuracy_loss if pub else None,
                                      variant[0].command()))
            if pub and pub.available:
                sources.append(f"- {task} / {method}: {pub.source}" + (f"; {pub.note}" if pub.note else ""))
    lines += _released_rows(items, runs)
    dt_sweep = [i for i in items if i.purpose == "table2-sweep"]
    if dt_sweep:
        pub = published("dynthresh", "lenet5", {})
        lines += ["", f"DT's LeNet-5 lambda is not in the paper. Calibration runs (seed 0), towards the published "
                  f"{pub.compression:g}x at {pub.accuracy_loss:+.2f} pp; the task default is the row above:", "",
                  "| lambda | compression | loss (pp) | command |", "|---|---|---|---|"]
        for item in dt_sweep:
            summary = _summary(runs, [item])
            lines.append(f"| {dict(item.hparams)['lam']:g} | {_fmt(summary['compression'], 1, 'x')} | "
                         f"{_fmt(summary['loss'], 2, sign=True)} | `{item.command()}` |")
    if sources:
        lines += ["", "Where each published figure comes from:", "", *sources]
    return lines


def _epoch_cell(point: dict[str, Any], dense_accuracy: float) -> str:
    """'step 9370: 28.1x, 97.71 % (+0.12 pp)' for a trajectory row (accuracy 0..1) against dense (%)."""
    return (f"step {point['step']}: {point['compression']:.1f}x, {100 * point['accuracy']:.2f} % "
            f"({dense_accuracy - 100 * point['accuracy']:+.2f} pp)")


def _dst_code_epochs(db: Path, items: list[Item], runs: pd.DataFrame) -> list[str]:
    """The DST code variant's runs read three ways: the final network (the table's row), the evaluation with
    the fewest weights (the authors' "best keep ratio" checkpoint: chosen on compression alone), and the one of
    highest validation accuracy (their "best accuracy" checkpoint, chosen here on the 5,000 held-out images,
    never on test)."""
    group = [i for i in items if i.purpose == "table2-variant" and i.method == "dst" and i.protocol == DST_CODE]
    done = [i for i in group if i.run_id in set(runs["run_id"])]
    if not done:
        return []
    dense = runs.set_index("run_id")["dense_accuracy"]  # %, of dense under the same seed and protocol
    store = ResultStore(db)
    lines = ["", f"The DST row \"{group[0].label}\" read per evaluation (every "
             f"{DST_CODE_EVAL_EVERY} steps, about an epoch): the final network is the table's row; the authors' "
             "trainer also keeps the epoch with the fewest weights (\"best keep ratio\", chosen on compression "
             "alone) and the epoch of best accuracy, which it picks on the test set: here on the validation split. "
             "Loss against dense of the same seed and protocol.", "",
             "| seed | final | fewest weights (their reported rule) | best validation accuracy |", "|---|---|---|---|"]
    try:
        for item in done:
            points = store.trajectory(item.run_id)
            base = float(dense.get(item.run_id, math.nan))
            fewest = min(points, key=lambda p: (p["weights_nonzero"], p["step"]))
            best = best_on_validation(points, item.run_id)
            best_point = next(p for p in points if p["step"] == best.step)
            lines.append(f"| {item.seed} | {_epoch_cell(points[-1], base)} | {_epoch_cell(fewest, base)} | "
                         f"{_epoch_cell(best_point, base)}, validation {100 * best.validation_accuracy:.2f} % |")
    finally:
        store.close()
    return lines


def _released_rows(items: list[Item], runs: pd.DataFrame) -> list[str]:
    """The authors' released models, measured here (`report.published.RELEASED`), beside our rows: a second
    reference where the published figure is not what the released model measures in our counting."""
    rows = []
    for (method, task), rel in RELEASED.items():
        group = _group(items, "table2", task, method)
        if not group:
            continue
        summary = _summary(runs, group)
        verdict = _verdict(summary, rel.compression, rel.accuracy_loss).replace("published", "released")
        rows.append(f"| {task} / {shown_name(method)} | {rel.compression:.2f}x | {rel.accuracy:.2f} % | "
                    f"{rel.accuracy_loss:+.2f} | {_pm(summary['compression'], summary['compression_std'], 1, 'x')} | "
                    f"{_fmt(summary['accuracy'], 2, ' %')} | "
                    f"{_pm(summary['loss'], summary['loss_std'], 2, sign=True)} | {verdict} |")
    if not rows:
        return []
    sources = [f"- {task} / {method}: {rel.source}" for (method, task), rel in RELEASED.items()]
    return ["", "The authors' released models, measured here in our counting (conv and fc weights; their loss "
            "against their own released dense model), beside our row above:", "",
            "| row | released CR | released accuracy | released loss (pp) | measured CR | measured accuracy | "
            "measured loss (pp) | verdict against the released model |", "|---|---|---|---|---|---|---|---|",
            *rows, "", *sources]


def _figures(db: Path, out_dir: Path, items: list[Item], finished: pd.DataFrame, figures: bool) -> list[str]:
    """Fig. 1 (DT against sparse VD, with its marker table) and Fig. 4 (XOR)."""
    lines = ["", "## Fig. 1: DT against sparse VD on LeNet-300-100", ""]
    markers = fig1_markers(db, items)
    if figures:
        from prunebench.report.plots import save
        fig = fig1_figure(db, items, markers)
        save(fig, out_dir, "fig1")
        lines += ["![Fig. 1](fig1.png)", "", "([SVG](fig1.svg))", ""]
    lines += [f"First iteration at which the pruned network is within {FIG1_WITHIN_PP} points of the method's "
              "own final accuracy (DT: the network its thresholds give, at >= the ratio; sparse VD: its weights "
              "cut to exactly the ratio by log alpha), mean over the runs that reached it (training seconds "
              "in brackets):", "",
              "| ratio | DT measured | sparse VD measured | DT published | sparse VD published |",
              "|---|---|---|---|---|"]
    for ratio in FIG1_RATIOS:
        cells = []
        for method in ("dynthresh", "sparse-vd"):
            m = markers[(markers["method"] == method) & (markers["ratio"] == ratio)].iloc[0]
            cells.append(f"{m['iterations']:,.0f} ({m['seconds']:.0f} s), {m['reached']}/{m['runs']} runs"
                         if m["reached"] else f"not reached ({m['runs']} runs)")
        pub = FIG1_PUBLISHED.get(ratio)
        lines.append(f"| {ratio:g}x | {cells[0]} | {cells[1]} | {f'{pub[0]:,}' if pub else 'n/p'} | "
                     f"{f'{pub[1]:,}' if pub else 'n/p'} |")
    fig_items = [i for i in items if i.purpose == "fig1"]
    if fig_items:
        lines += ["", "Commands: " + "; ".join(f"`{i.command()}`" for i in fig_items if i.seed == 0)]

    lines += ["", "## Fig. 4: XOR, weights and thresholds", ""]
    fig4_items = [i for i in items if i.purpose == "fig4"]
    for item in fig4_items:
        if figures and item.run_id in set(finished["run_id"]):
            from prunebench.report.plots import save
            from prunebench.suites.fig4 import fig4
            save(fig4(db, item.run_id), out_dir, "xor-fig4")
            lines += ["![Fig. 4](xor-fig4.png)", "", "([SVG](xor-fig4.svg))", ""]
        lines.append(f"Command: `{item.command()}`. Published: 4 of the 15 weights pruned at the end "
                     "(layer 1 weights 1, 2, 6; layer 2 weight 1), some pruned and spliced back during training.")
    return lines


def _large_section(db: Path, out_dir: Path, items: list[Item], runs: pd.DataFrame, finished: pd.DataFrame,
                   blocked: dict[str, Needs], quick: bool, figures: bool) -> list[str]:
    """The report's Table 2 CIFAR-10 / ImageNet columns and Figs. 5-7: measured rows where the runs are
    in the store, what each missing run needs otherwise."""
    lines = ["", "## Table 2: CIFAR-10 (VGG-like) and ImageNet (AlexNet) columns", ""]
    large = [i for i in items if i.large]
    if quick or not large:
        return lines + ["Not part of the quick version: `prunebench reproduce dt-paper` plans them (one seed each, "
                        "the task's paper protocol); they need the CIFAR-10 / ImageNet data, verified, and a GPU."]
    lines += [f"Seed {', '.join(map(str, LARGE_SEEDS))}, each task's paper protocol (VGG-like: 100 epochs; AlexNet: "
              "150 epochs; DT paper sec. 4.2) for every method (`--budget equal`); the published baselines used "
              "their own schedules (see where each figure comes from).", "", TABLE_HEADER]
    sources = []
    for task, methods in LARGE_TABLE2.items():
        for method in methods:
            group = _group(items, "table2", task, method)
            pub = published(method, task, {}) if method != "dense" else None
            summary = _summary(runs, group)
            verdict = None
            pending = [blocked[i.run_id] for i in group if i.run_id in blocked]
            if pending:
                verdict = pending[0].short()
            elif method == "dense" and summary["seeds"]:
                verdict = "the accuracy reference"
            lines.append(_row(f"{task} / {shown_name(method)}", summary, pub.compression if pub else None,
                              pub.accuracy_loss if pub else None, group[0].command() if group else "", verdict,
                              exact_published=True))
            if pub and (pub.available or pub.note):
                sources.append(f"- {task} / {method}: {pub.source}" + (f"; {pub.note}" if pub.note else ""))
    measured = _rows_for(runs, [i for i in large if i.task == "alexnet-imagenet"])
    if len(measured) and measured["top5"].notna().any():
        lines += ["", "Measured top-1 / top-5 accuracy (AlexNet, deployed network, validation set): " + "; ".join(
            f"{r['method']} {r['accuracy']:.2f}% / {r['top5']:.2f}%" for r in measured.to_dict("records"))]
    if sources:
        lines += ["", "Where each published figure comes from:", "", *sources]
    waiting = [(i, blocked[i.run_id]) for i in large if i.run_id in blocked and i.purpose == "table2"]
    if waiting:
        lines += ["", "Runs that cannot run on this machine, and what each needs (`prunebench reproduce dt-paper` "
                  "runs them like the MNIST runs where the data is verified and a CUDA device is present):", ""]
        lines += [f"- {i.task} / {i.method}: {n.short()}; `{i.command()}`" for i, n in waiting]
        lines += ["", "Why:", ""]
        for task in dict.fromkeys(i.task for i, _ in waiting):
            first = next(n for i, n in waiting if i.task == task)
            for n in dict.fromkeys(x for x in (first.task, first.data) if x):
                lines.append(f"- {task}: {n}")
            example = next(((i, n) for i, n in waiting if i.task == task and i.method == "dynthresh"),
                           next((i, n) for i, n in waiting if i.task == task))
            if example[1].gpu_hours is not None:
                others = ", ".join(f"{m} {METHOD_OVERHEAD.get(m, UNKNOWN_OVERHEAD):g}x"
                                   for m in LARGE_TABLE2.get(task, ()) if m != example[0].method)
                lines.append(f"- {task}, GPU hours (no CUDA device here), for {example[0].method}: "
                             f"{example[1].gpu_basis}. The other rows differ by their method's ASSUMED overhead "
                             f"({others}).")

    lines += ["", "## Figs. 5-7: DT during training (VGG-like thresholds, AlexNet layers and accuracy)", ""]
    done = set(finished["run_id"])
    for fig, (task, what) in LARGE_FIGURES.items():
        item = next(i for i in large if i.purpose == fig)
        title = f"**Fig. {fig[3:]}** ({task}, {what})"
        if item.run_id not in done:
            need = blocked[item.run_id].short() if item.run_id in blocked else "not run yet"
            lines += [f"{title}: {need}. Command: `{item.command()}`.", ""]
            continue
        if not figures:
            lines += [f"{title}: run finished; figures not drawn. Command: `{item.command()}`.", ""]
            continue
        from prunebench.report import plots

        try:
            figure = getattr(plots, fig)(db, task, run_ids=[item.run_id])
        except ValueError as exc:
            lines += [f"{title}: {exc}. Command: `{item.command()}`.", ""]
            continue
        name = f"{task}-{fig}"
        plots.save(figure, out_dir, name)
        lines += [f"{title}. Command: `{item.command()}`.", "", f"![Fig. {fig[3:]}]({name}.png)", "",
                  f"([SVG]({name}.svg))", ""]
    return lines


def fig1_figure(db: Path, items: list[Item], markers: pd.DataFrame):
    """Accuracy of the network in training against iterations (mean over seeds), one line per method,
    markers at the FIG1_RATIOS iterations of `markers`."""
    from prunebench.report.plots import _new_figure, _style, method_colours

    fig_items = [i for i in items if i.purpose == "fig1"]
    traj = load_trajectories(db, [i.run_id for i in fig_items])
    colours = method_colours(["dynthresh", "sparse-vd"])
    labels = {"dynthresh": "dynamic thresholding", "sparse-vd": "sparse VD"}
    marker_shapes = {50.0: "o", 60.0: "s", 70.0: "^"}
    with _style():
        fig, ax = _new_figure()
        for method in ("dynthresh", "sparse-vd"):
            ids = [i.run_id for i in fig_items if i.method == method]
            points = traj[traj["run_id"].isin(ids)]
            if points.empty:
                continue
            acc_col = "trained_accuracy" if method == "sparse-vd" and points["trained_accuracy"].notna().any() \
                else "accuracy"
            curve = points.groupby("step")[acc_col].mean() * 100
            ax.plot(curve.index, curve.values, color=colours[method], label=labels[method], linewidth=1.6)
            for ratio in FIG1_RATIOS:
                m = markers[(markers["method"] == method) & (markers["ratio"] == ratio)]
                if m.empty or not m.iloc[0]["reached"]:
                    continue
                step = m.iloc[0]["iterations"]
                y = float(curve.iloc[(abs(curve.index - step)).argmin()])
                ax.plot([step], [y], marker=marker_shapes[ratio], color=colours[method], markersize=9,
                        markeredgecolor="black", linestyle="none",
                        label=f"{labels[method]} {ratio:g}x: it. {step:,.0f}, {m.iloc[0]['seconds']:.0f} s")
        ax.set_xlabel("iteration")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("LeNet-300-100: accuracy in training, markers at 50x / 60x / 70x")
        lo = ax.get_ylim()
        ax.set_ylim(max(lo[0], 90.0), 100.0)
        ax.legend(loc="lower right", fontsize=8)
    return fig


def standing(dt: MatchedCell, others: Sequence[MatchedCell], alpha: float = ALPHA) -> tuple[int, int, int]:
    """DT's cell against each other method's at the same target (Welch's t-test on the seeds' accuracies,
    two-sided): how many it is significantly better than, not significantly different from, and significantly
    worse than. A comparison with fewer than 2 seeds on either side counts as not different."""
    better = tied = worse = 0
    for other in others:
        _, _, p = stats.welch(dt.accuracy, other.accuracy)
        if math.isnan(p) or p >= alpha:
            tied += 1
        elif dt.accuracy_mean > other.accuracy_mean:
            better += 1
        else:
            worse += 1
    return better, tied, worse


def matched_section(curves: Sequence[tuple[CurveSettings, Path]]) -> list[str]:
    """The section "DT against the others at matched compression": for each curve with DT in it, per target,
    DT's cell, the most accurate of the other methods that reached the target, and DT's standing against the
    others (`standing`); the full tables are `prunebench matched`'s."""
    lines = ["", "## DT against the others at matched compression", ""]
    curves = [(settings, store) for settings, store in curves if "dynthresh" in settings.methods]
    if not curves:
        return lines + ["No matched-compression curve with DT in it yet: `prunebench curve --task lenet300 --methods "
                        "dynthresh,magnitude,... --targets 10,25,50,100 --seeds 0-2`, then `prunebench matched` with "
                        "the same options.", ""]
    lines += ["Each method's compression knob was searched on seed 0 for each target compression, from compression "
              "alone (`prunebench curve`; within ±10%), and seeds 0-2 trained at the value found under the same "
              "protocol and budget as DT (budget \"equal\"). Accuracy: test accuracy of the deployed network, mean ± "
              "95% CI over seeds; loss against dense of the same seeds. *Standing*: against every other method that "
              "reached the target (seeds' mean compression within ±10%), "
              f"Welch's t-test on the seeds' accuracies (two-sided, p = {ALPHA:g}): significantly "
              "better / not significantly different / significantly worse. These are our runs on our protocol; "
              "the paper compared each method at its own operating point (Table 2 above).", ""]
    header = ("| task | target | DT | DT's knob (lam) | most accurate other method "
              "| DT's standing (better / n.s. / worse) |")
    for settings, store in curves:
        table = build_matched(store, settings, db_label=str(store))
        lines += [f"### {settings.task}", "",
                  f"Full table: `leaderboards/{settings.task}-matched.md` (every method, rerun commands), plot "
                  f"`leaderboards/figures/{settings.task}-matched.png`; store `{store}`.", "",
                  header, "|---|---:|---|---:|---|---|"]
        for target in settings.targets:
            dt = table.cell("dynthresh", target)
            others = [c for c in table.cells if c.target == target and c.method != "dynthresh" and c.on_target]
            best = max(others, key=lambda c: c.accuracy_mean) if others else None
            best_text = (f"{shown_name(best.method)}: {best.accuracy_mean:.2f} % ({stats.mean(best.compression):.1f}x)"
                         if best else "-")
            if dt.on_target:
                dt_text = (f"{accuracy_text(dt)} %, {stats.mean(dt.compression):.1f}x, "
                           f"{_fmt(dt.loss_mean, 2, ' pp', sign=True)}")
                better, tied, worse = standing(dt, others)
                standing_text = f"{better} / {tied} / {worse} of {len(others)}"
            else:
                dt_text, standing_text = cell_text(dt), "-"
            knob = f"{dt.knob_value:.3g}" if dt.knob_value is not None else "-"
            lines.append(f"| {settings.task} | {target:g}x | {dt_text} | {knob} | {best_text} | {standing_text} |")
        lines.append("")
    return lines


def reproduce(out_dir: Path, db: Path, data_dir: Path, quick: bool = False, command: str = "",
              on_start: Callable[[Item, bool], None] | None = None,
              observer_for: Callable[[Item], Observer] | None = None, report_only: bool = False,
              matched: Sequence[tuple[CurveSettings, Path]] = ()) -> Path:
    """Plan, run what is missing, and write the report. Returns the report's path."""
    items = plan(quick)
    t0 = time.perf_counter()
    if report_only and not Path(db).exists():
        raise FileNotFoundError(f"no result store at {db}: run without --report-only first")
    blocked = needs(items, data_dir)
    if not report_only:
        store = ResultStore(db)
        try:
            execute(items, store, data_dir, on_start, observer_for, blocked=blocked)
        finally:
            store.close()
    return write_report(db, out_dir, items, quick, command, time.perf_counter() - t0, blocked=blocked,
                        matched=matched)
