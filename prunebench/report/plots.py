"""Plots from the result store (seaborn style, matplotlib Agg canvas, PNG and SVG).

- `fig1`: test accuracy of the deployed network against training iterations, one line per method
  (and setting): mean over seeds, band = min..max over seeds; markers where the deployed network
  first reaches 50x / 60x / 70x compression (mean step over the seeds that reached it), the mean
  training wall-clock to each marker in the legend, as in Fig. 1 of the dynamic thresholding paper.
- `pareto`: accuracy against compression (log axis), every run a point, the Pareto frontier per method.
- `time`: training wall-clock to first reach each compression, per method (mean over seeds).
- `matched_plot`: from a matched-compression table (`report.matched`, `prunebench matched`), the accuracy
  loss against dense at each method's matched compressions with CI bands and the published points, beside the
  training time to each target (`<task>-matched.png`).
- `fig5`: the distribution of the learned thresholds during training (DT paper Fig. 5), from each
  evaluation's `extra["thresholds"]` (`metrics.threshold_distribution`): the median and the 25-75 %
  and 5-95 % bands against epochs, one panel per method (and setting) that records thresholds.
- `fig6`: remaining weights per layer (%) against epochs (DT paper Fig. 6), one line per layer, one
  panel per pruning method (and setting).
- `fig7`: top-1 and, where stored (1,000 classes), top-5 test accuracy of the deployed network against
  epochs (DT paper Fig. 7), one colour per method (and setting).

fig5-fig7 draw one run per method and setting: seed 0, else its lowest seed (or the `seed` asked
for); runs still running or interrupted are drawn too (their title says so), failed ones are not. The x
axis is in epochs, step * batch_size / train_size (the run's protocol, the task's training set), or in
iterations when the task's training-set size is not known.

Every series carries a gid (`curve:<label>`, `marker:<label>:<X>`, `points:<method>`,
`frontier:<method>`, `time:<label>`; matched `matched:<method>`, `band:<method>`,
`published:<method>`, `time:<method>`; fig5 `median:<label>`, `q25-75:<label>`, `q5-95:<label>`; fig6
`layer:<label>:<layer>`; fig7 `top1:<label>`, `top5:<label>`) so tests and scripts can find it.
Colours come from seaborn's "colorblind" palette, one fixed colour per method across all plots;
settings of one method differ by line style. Figures are built on a plain `Figure` with an Agg canvas
(no pyplot state, no display).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from prunebench.metrics import THRESHOLD_LOG10_RANGE
from prunebench.registry import get_task, method_names
from prunebench.report import stats
from prunebench.report.leaderboard import THRESHOLDS, run_table, shown_name
from prunebench.report.matched import MatchedTable
from prunebench.report.published import published
from prunebench.results import load_runs, load_trajectories
from prunebench.setting import setting_items, setting_string

KINDS = ("fig1", "pareto", "time", "fig5", "fig6", "fig7")
#: Run states fig5-fig7 draw (a run in progress shows its training so far); failed runs are left out.
TRAINING_STATUSES = ("finished", "running", "interrupted")
MARKERS = {50: "o", 60: "s", 70: "^"}
EXTRA_MARKERS = ("D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


@contextmanager
def _style() -> Iterator[None]:
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"), "svg.fonttype": "none"}
    with matplotlib.rc_context(rc):
        yield


def _new_figure(width: float = 10.0, height: float = 5.8) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


#: Fixed index into seaborn's 10-colour "colorblind" palette per method, so a method keeps its colour in
#: every plot and the methods usually shown together get well-separated hues (dense, the reference, is grey).
PALETTE_INDEX = {"dense": 7, "dynthresh": 0, "magnitude": 1, "dns": 2, "sparse-vd": 4, "dst": 5, "l0": 3,
                 "ltp": 8, "autoprune": 9}


def method_colours(methods: list[str]) -> dict[str, tuple]:
    """One fixed colour per method (PALETTE_INDEX; other methods take the palette's remaining colours)."""
    palette = sns.color_palette("colorblind", 10)
    colours = {m: palette[i] for m, i in PALETTE_INDEX.items()}
    # The palette's unused colour, then the "dark" palette's (distinct from the colourblind hues in use).
    dark = sns.color_palette("dark", 10)
    spare = [c for i, c in enumerate(palette) if i not in PALETTE_INDEX.values()] + [dark[i] for i in (3, 6, 8, 0)]
    for k, m in enumerate(sorted(set(methods) - set(colours))):
        colours[m] = spare[k % len(spare)]
    return colours


def _runs(db: Path | str, task: str, max_loss: float | None, thresholds: tuple[int, ...],
          default_only: bool = False) -> pd.DataFrame:
    runs = run_table(db, task, max_loss, thresholds)
    if default_only:
        runs = runs[runs["setting"] == "default"].reset_index(drop=True)
    if runs.empty:
        raise ValueError(f"no finished runs of task {task!r} in {db}")
    # Label per group: the method, with setting and budget when the method has several groups.
    groups = runs.drop_duplicates("group")[["group", "method", "setting", "budget"]]
    several = groups["method"].value_counts()
    labels = {}
    for g in groups.itertuples():
        extra = []
        if several[g.method] > 1 and g.setting != "default":
            extra.append(g.setting)
        if g.budget != "equal":
            extra.append(f"budget {g.budget}")
        labels[g.group] = shown_name(g.method) + (f" ({', '.join(extra)})" if extra else "")
    runs["label"] = runs["group"].map(labels)
    order = {m: i for i, m in enumerate(method_names())}
    runs["_order"] = runs["method"].map(lambda m: order.get(m, len(order)))
    return runs.sort_values(["_order", "label", "seed"]).drop(columns="_order").reset_index(drop=True)


def _styles(runs: pd.DataFrame) -> dict[str, tuple[tuple, str]]:
    colours = method_colours(runs["method"].unique().tolist())
    out, used = {}, {}
    for label, method in runs.drop_duplicates("label")[["label", "method"]].itertuples(index=False):
        k = used.get(method, 0)
        used[method] = k + 1
        out[label] = (colours[method], LINESTYLES[k % len(LINESTYLES)])
    return out


def _log_compression_axis(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}x"))


def _marker_key(thresholds: tuple[int, ...], text: str) -> list[Line2D]:
    """Legend entries for the threshold markers, after an empty spacer entry."""
    return [Line2D([], [], linestyle="none", label=" ")] + [
        Line2D([], [], linestyle="none", marker=_marker(x, i), markersize=9, color="0.6", markeredgecolor="black",
               label=text.format(x=x)) for i, x in enumerate(thresholds)]


def _marker(x: int, i: int) -> str:
    return MARKERS.get(x, EXTRA_MARKERS[i % len(EXTRA_MARKERS)])


def fig1(db: Path | str, task: str, thresholds: tuple[int, ...] = THRESHOLDS,
         max_loss: float | None = None, default_only: bool = False) -> Figure:
    """Accuracy against iterations with compression markers (see the module docstring). With
    `max_loss` the markers also require an accuracy loss <= max_loss pp against dense of the same seed."""
    runs = _runs(db, task, max_loss, thresholds, default_only)
    traj = load_trajectories(db, runs["run_id"].tolist())
    styles = _styles(runs)
    with _style():
        fig, ax = _new_figure(11.0, 6.0)
        for label, g in runs.groupby("label", sort=False):
            colour, ls = styles[label]
            pts = traj[traj["run_id"].isin(g["run_id"])]
            table = pts.pivot_table(index="step", columns="run_id", values="accuracy") * 100.0
            steps = table.index.to_numpy(dtype=float)
            mean = table.mean(axis=1).to_numpy()
            parts = []
            for i, x in enumerate(thresholds):
                reached = g[f"iterations_to_{x}x"].dropna()
                if reached.empty:
                    continue
                step = float(reached.mean())
                y = float(np.interp(step, steps, mean))
                ax.plot([step], [y], linestyle="none", marker=_marker(x, i), markersize=10, color=colour,
                        markeredgecolor="black", markeredgewidth=0.8, zorder=5, gid=f"marker:{label}:{x}",
                        label="_nolegend_")
                secs = float(g[f"seconds_to_{x}x"].dropna().mean())
                note = f" ({len(reached)}/{len(g)} seeds)" if len(reached) < len(g) else ""
                parts.append(f"{x}x {_seconds(secs)}{note}")
            if g["method"].iloc[0] == "dense":
                legend = f"{label} (reference)"
            elif parts:
                legend = f"{label}: " + ", ".join(parts)
            else:
                legend = f"{label}: below {min(thresholds)}x"
            ax.plot(steps, mean, color=colour, linestyle=ls, linewidth=2, gid=f"curve:{label}", label=legend)
            if table.shape[1] > 1:
                ax.fill_between(steps, table.min(axis=1).to_numpy(), table.max(axis=1).to_numpy(), color=colour,
                                alpha=0.18, linewidth=0, label="_nolegend_")
        ax.set_xlabel("training iterations")
        ax.set_ylabel("test accuracy of the deployed network (%)")
        seeds = runs.groupby("label").size()
        seed_text = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
        limit = f", loss <= {max_loss:g} pp" if max_loss is not None else ""
        ax.set_title(f"{task}: accuracy during training (mean of {seed_text} seeds, band: min-max)\n"
                     f"markers: first evaluation at >= {', '.join(f'{x}x' for x in thresholds)} compression"
                     f"{limit}; legend: mean training wall-clock to each", fontsize="medium")
        handles, _ = ax.get_legend_handles_labels()
        handles += _marker_key(thresholds, "first reaches {x}x")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method: time to compression",
                  fontsize="small", title_fontsize="small", frameon=False, alignment="left")
    return fig


def _seconds(secs: float) -> str:
    if not math.isfinite(secs):
        return "?"
    if secs >= 120:
        return f"{secs / 60:.1f} min"
    return f"{secs:.1f} s" if secs < 100 else f"{secs:.0f} s"


def pareto_frontier(points: pd.DataFrame) -> pd.DataFrame:
    """Non-dominated (compression, accuracy) points: no other point has both at least as much
    compression and higher accuracy. Sorted by compression, ascending."""
    best = -math.inf
    keep = []
    for idx, row in points.sort_values(["compression", "accuracy"], ascending=[False, False]).iterrows():
        if row["accuracy"] > best:
            keep.append(idx)
            best = row["accuracy"]
    return points.loc[keep].sort_values("compression")


def pareto(db: Path | str, task: str, default_only: bool = False) -> Figure:
    """Accuracy against compression, every run a point, the frontier per pruning method."""
    runs = _runs(db, task, None, THRESHOLDS, default_only)
    colours = method_colours(runs["method"].unique().tolist())
    order = method_names()
    with _style():
        fig, ax = _new_figure(11.0, 6.0)
        handles = []
        for method, g in runs.groupby("method", sort=False):
            colour = colours[method]
            marker = METHOD_MARKERS[(order.index(method) if method in order else len(order)) % len(METHOD_MARKERS)]
            ax.scatter(g["compression"], g["accuracy"], color=colour, marker=marker, s=55, alpha=0.85,
                       edgecolors="black", linewidths=0.5, zorder=4, gid=f"points:{method}", label=method)
            if method == "dense":
                dense_mean = float(g["accuracy"].mean())
                ax.axhline(dense_mean, color=colour, linestyle="--", linewidth=1.2, gid="dense-mean",
                           label="_nolegend_")
                handles.append(Line2D([], [], color=colour, marker=marker, markeredgecolor="black", linestyle="--",
                                      label=f"dense ({len(g)} runs; dashed: mean {dense_mean:.2f}%)"))
                continue
            front = pareto_frontier(g[["compression", "accuracy"]])
            ax.plot(front["compression"], front["accuracy"], color=colour, linewidth=1.8, zorder=3,
                    gid=f"frontier:{method}", label="_nolegend_")
            counts = f"{_count(len(g), 'run')}, {_count(g['setting'].nunique(), 'setting')}"
            handles.append(Line2D([], [], color=colour, marker=marker, markeredgecolor="black",
                                  label=f"{shown_name(method)} ({counts})"))
        _log_compression_axis(ax)
        lo, hi = float(runs["compression"].min()), float(runs["compression"].max())
        ax.set_xlim(lo / 1.3, hi * 1.3)
        shown = [x for x in THRESHOLDS if lo <= x <= hi * 1.3]
        for x in shown:
            ax.axvline(x, color="0.5", linestyle=":", linewidth=1, zorder=1)
        if shown:
            handles.append(Line2D([], [], color="0.5", linestyle=":", linewidth=1,
                                  label="compression " + " / ".join(f"{x}x" for x in shown)))
        ax.set_xlabel("compression (dense weights / non-zero weights, log scale)")
        ax.set_ylabel("test accuracy of the deployed network (%)")
        ax.set_title(f"{task}: accuracy against compression (every seed and setting a point; "
                     "lines: frontier per method)", fontsize="medium")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False,
                  title="method (line: Pareto frontier)", title_fontsize="small")
    return fig


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _first_seconds(points: pd.DataFrame, levels: np.ndarray) -> np.ndarray:
    """Training seconds at which the running maximum of compression first reaches each level."""
    pts = points.sort_values("step")
    running = np.maximum.accumulate(pts["compression"].to_numpy(dtype=float))
    seconds = pts["train_seconds"].to_numpy(dtype=float)
    idx = np.searchsorted(running, levels, side="left")
    out = np.full(levels.shape, np.nan)
    ok = idx < len(running)
    out[ok] = seconds[idx[ok]]
    return out


def time_plot(db: Path | str, task: str, thresholds: tuple[int, ...] = THRESHOLDS,
              default_only: bool = False) -> Figure:
    """Training wall-clock to first reach each compression (x, log), per method and setting."""
    runs = _runs(db, task, None, thresholds, default_only)
    runs = runs[runs["method"] != "dense"]
    if runs.empty:
        raise ValueError(f"no finished pruning runs of task {task!r} in {db} (dense alone reaches 1x)")
    traj = load_trajectories(db, runs["run_id"].tolist())
    styles = _styles(runs)
    with _style():
        fig, ax = _new_figure(11.0, 6.0)
        top = 1.0
        for label, g in runs.groupby("label", sort=False):
            colour, ls = styles[label]
            per_run = [traj[traj["run_id"] == rid] for rid in g["run_id"]]
            reach = min(float(p["compression"].max()) for p in per_run if len(p))
            if not reach > 1.0:
                continue
            top = max(top, float(max(p["compression"].max() for p in per_run if len(p))))
            levels = np.geomspace(1.0, reach, 200)
            curves = np.vstack([_first_seconds(p, levels) for p in per_run])
            for p in per_run:
                lv = np.geomspace(1.0, float(p["compression"].max()), 200)
                ax.plot(lv, _first_seconds(p, lv), color=colour, linestyle=ls, linewidth=0.8, alpha=0.35,
                        label="_nolegend_")
            mean = curves.mean(axis=0)
            ax.plot(levels, mean, color=colour, linestyle=ls, linewidth=2.2, gid=f"time:{label}",
                    label=f"{label} ({_count(len(g), 'seed')}, all reach {reach:.0f}x)")
            for i, x in enumerate(thresholds):
                if x <= reach:
                    secs = float(np.interp(math.log(x), np.log(levels), mean))
                    ax.plot([x], [secs], linestyle="none", marker=_marker(x, i), markersize=8, color=colour,
                            markeredgecolor="black", zorder=5, label="_nolegend_")
        _log_compression_axis(ax)
        ax.set_xlim(0.9, top * 1.3)
        for x in thresholds:
            if x <= top * 1.3:
                ax.axvline(x, color="0.5", linestyle=":", linewidth=1, zorder=1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("compression reached (dense weights / non-zero weights, log scale)")
        ax.set_ylabel("training wall-clock to first reach it (s)")
        ax.set_title(f"{task}: training time to reach a compression (thick: mean over seeds, thin: each seed; "
                     "evaluation time excluded)", fontsize="medium")
        handles, _ = ax.get_legend_handles_labels()
        handles += _marker_key(thresholds, "mean time to {x}x (dotted line)")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return fig


def matched_plot(table: MatchedTable) -> Figure:
    """Two panels from a matched-compression table (`report.matched`): the accuracy loss against dense of the
    same seeds (pp) against the compression reached (log x), one line per method through its reached targets
    with the 95% CI of the mean as a band, the published figures overlaid as hollow stars labelled
    "published"; and the mean training seconds of each target's runs, per method. The loss, not the accuracy,
    is drawn so that the published points (a loss against each paper's own dense network) sit on the same axis.
    The loss axis is symmetric-log (linear within ±1 pp, logarithmic beyond) so that a method tens of points off
    does not flatten the differences of tenths near dense. A cell whose seeds landed off target (`on_target`) is
    no point of its method's line: it is drawn alone as a cross at the compression its seeds reached."""
    colours = method_colours(list(table.settings.methods))
    drawn = [m for m in table.settings.methods if any(c.has_accuracy for c in table.cells if c.method == m)]
    if not drawn:
        raise ValueError(f"no matched results of task {table.task!r}: no reached target with a finished seed run")
    with _style():
        fig = Figure(figsize=(14.0, 5.8), layout="constrained")
        FigureCanvasAgg(fig)
        loss_ax, time_ax = fig.subplots(1, 2, width_ratios=(3, 2))
        loss_ax.axhline(0.0, color="0.4", linestyle="--", linewidth=1.0, gid="dense", label="dense (same seeds)")
        for method in drawn:
            cells = sorted((c for c in table.cells if c.method == method and c.on_target),
                           key=lambda c: stats.mean(c.compression))
            off = [c for c in table.cells if c.method == method and c.has_accuracy and not c.on_target]
            x = np.array([stats.mean(c.compression) for c in cells])
            loss = np.array([c.loss_mean for c in cells])
            ci = np.array([stats.ci95_halfwidth(c.loss) for c in cells])
            colour = colours[method]
            reached = ", ".join(f"{c.target:g}x" for c in cells)
            loss_ax.plot(x, loss, color=colour, marker="o", markeredgecolor="black", linewidth=2.0,
                         gid=f"matched:{method}", label=f"{shown_name(method)} (targets {reached})")
            loss_ax.fill_between(x, loss - ci, loss + ci, color=colour, alpha=0.2, linewidth=0, gid=f"band:{method}")
            loss_ax.errorbar(x, loss, yerr=np.nan_to_num(ci), fmt="none", ecolor=colour, capsize=4, linewidth=1.0,
                             label="_nolegend_")
            if off:
                loss_ax.scatter([stats.mean(c.compression) for c in off], [c.loss_mean for c in off], marker="x",
                                s=60, color=colour, zorder=5, gid=f"off-target:{method}",
                                label=f"{shown_name(method)} off target ("
                                + ", ".join(f"{c.target:g}x" for c in off) + ")")
            time_ax.plot(x, [stats.mean(c.train_seconds) for c in cells], color=colour, marker="o",
                         markeredgecolor="black", linewidth=2.0, gid=f"time:{method}", label=shown_name(method))
            pub = published(method, table.task)
            if pub is not None and pub.compression is not None and pub.accuracy_loss is not None:
                loss_ax.scatter([pub.compression], [pub.accuracy_loss], marker="*", s=180, facecolors="none",
                                edgecolors=[colour], linewidths=1.5, zorder=5, gid=f"published:{method}",
                                label=f"{method} published ({pub.source})")
                loss_ax.annotate("published", (pub.compression, pub.accuracy_loss), textcoords="offset points",
                                 xytext=(6, 4), fontsize="x-small", color=colour)
        for ax in (loss_ax, time_ax):
            _log_compression_axis(ax)
            ax.set_xticks(list(table.settings.targets))
            ax.xaxis.set_minor_formatter(NullFormatter())
            for target in table.settings.targets:
                ax.axvline(target, color="0.6", linestyle=":", linewidth=1, zorder=1)
            ax.set_xlabel("compression reached (mean over seeds, log scale; dotted: the targets)")
        loss_ax.set_yscale("symlog", linthresh=1.0)
        loss_ax.set_ylabel("accuracy loss against dense of the same seeds\n"
                           "(pp, symlog: linear within ±1; lower is better)")
        loss_ax.set_title(f"{table.task}: accuracy at matched compression (band: 95% CI of the mean)",
                          fontsize="medium")
        time_ax.set_ylim(bottom=0)
        time_ax.set_ylabel("training wall-clock of a run (s, mean over seeds)")
        time_ax.set_title("training time to each target", fontsize="medium")
        handles, labels = loss_ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    return fig


# -- fig5-fig7: the course of one run per method (DT paper Figs. 5-7) ----------------------------------

def epochs_per_step(task: str, protocol: dict) -> float | None:
    """Epochs one optimizer step covers: batch_size / train_size (the run's protocol, the task's training
    set); from the protocol's `steps_per_epoch` when the task is not registered; None when neither is known."""
    batch = protocol.get("batch_size")
    try:
        train_size = get_task(task).train_size
    except KeyError:
        train_size = 0
    if batch and train_size:
        return batch / train_size
    steps = protocol.get("steps_per_epoch")
    return 1.0 / steps if steps else None


def training_runs(db: Path | str, task: str, seed: int | None = None, default_only: bool = False,
                  run_ids: list[str] | None = None) -> pd.DataFrame:
    """One run per method, setting and budget of `task` (finished, running or interrupted): seed `seed`,
    else seed 0, else the lowest seed. Columns: run_id, method, seed, status, label, epochs_per_step,
    environment. `run_ids` restricts the choice to those runs. ValueError when there is none."""
    runs = load_runs(db, status=None)
    runs = runs[(runs["task"] == task) & runs["status"].isin(TRAINING_STATUSES)]
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(run_ids)]
    if runs.empty:
        raise ValueError(f"no runs of task {task!r} in {db}")
    runs = runs.copy()
    runs["setting"] = [setting_string(*setting_items(t, m, json.loads(ident)))
                       for t, m, ident in zip(runs["task"], runs["method"], runs["identity"], strict=True)]
    if default_only:
        runs = runs[runs["setting"] == "default"]
        if runs.empty:
            raise ValueError(f"no runs of task {task!r} at the task's default setting in {db}")
    runs["label"] = [shown_name(m) + (f" ({st})" if st != "default" else "") + (f" budget {b}" if b != "equal" else "")
                     for m, st, b in zip(runs["method"], runs["setting"], runs["budget"], strict=True)]
    chosen = []
    for _, g in runs.groupby("label", sort=False):
        seeds = set(g["seed"].astype(int))
        pick = seed if seed is not None else (0 if 0 in seeds else min(seeds))
        if pick in seeds:
            chosen.append(g[g["seed"].astype(int) == pick].iloc[0])
    if not chosen:
        raise ValueError(f"no run of task {task!r} with seed {seed} in {db}")
    out = pd.DataFrame(chosen)
    out["epochs_per_step"] = [epochs_per_step(task, json.loads(p)) for p in out["protocol"]]
    order = {m: i for i, m in enumerate(method_names())}
    out["_order"] = out["method"].map(lambda m: order.get(m, len(order)))
    out = out.sort_values(["_order", "label"]).drop(columns="_order").reset_index(drop=True)
    return out[["run_id", "method", "seed", "status", "label", "epochs_per_step", "environment"]]


def _x_axis(runs: pd.DataFrame) -> tuple[dict[str, float], str]:
    """Per run, the factor from steps to the x axis, and the axis label: epochs when every run's is known."""
    if runs["epochs_per_step"].notna().all():
        return dict(zip(runs["run_id"], runs["epochs_per_step"].astype(float), strict=True)), "epoch"
    return {rid: 1.0 for rid in runs["run_id"]}, "training iterations"


def _panel_title(run: pd.Series) -> str:
    note = "" if run["status"] == "finished" else f", {run['status']}"
    return f"{run['label']} (seed {int(run['seed'])}{note})"


def _panels(count: int, columns: int = 2, width: float = 6.0, height: float = 4.0) -> tuple[Figure, list]:
    """A figure with `count` axes in a grid of up to `columns` columns (unused cells removed)."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(width * columns + 2.5, height * rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, columns, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[count:]:
        fig.delaxes(ax)
    return fig, axes[:count]


def _extra(value: object) -> dict:
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def threshold_bands(points: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation with a stored threshold distribution: step and the 5/25/50/75/95 % quantiles."""
    rows = []
    for step, extra in zip(points["step"], points["extra"], strict=True):
        dist = _extra(extra).get("thresholds")
        if not isinstance(dist, dict) or not dist.get("count"):
            continue
        q = dist.get("quantiles") or {}
        if any(q.get(k) is None for k in ("5", "25", "50", "75", "95")):
            continue
        rows.append({"step": int(step), **{f"q{k}": float(q[k]) for k in ("5", "25", "50", "75", "95")}})
    return pd.DataFrame(rows, columns=["step", "q5", "q25", "q50", "q75", "q95"])


def fig5(db: Path | str, task: str, seed: int | None = None, default_only: bool = False,
         run_ids: list[str] | None = None) -> Figure:
    """Threshold distribution during training (DT paper Fig. 5): per run, the median threshold and the
    25-75 % and 5-95 % bands against epochs, log scale."""
    runs = training_runs(db, task, seed, default_only, run_ids)
    traj = load_trajectories(db, runs["run_id"].tolist())
    bands = {rid: threshold_bands(traj[traj["run_id"] == rid]) for rid in runs["run_id"]}
    runs = runs[[not bands[rid].empty for rid in runs["run_id"]]]
    if runs.empty:
        raise ValueError(f"no run of task {task!r} in {db} has threshold distributions (extra['thresholds'] at "
                         "its evaluations: stored for methods with learned thresholds, dynthresh, dst and ltp)")
    scale, xlabel = _x_axis(runs)
    colours = method_colours(runs["method"].unique().tolist())
    floor = 10.0 ** THRESHOLD_LOG10_RANGE[0]
    with _style():
        fig, axes = _panels(len(runs))
        for ax, (_, run) in zip(axes, runs.iterrows(), strict=True):
            b = bands[run["run_id"]]
            x = b["step"].to_numpy(dtype=float) * scale[run["run_id"]]
            clip = {k: np.maximum(b[k].to_numpy(dtype=float), floor) for k in ("q5", "q25", "q50", "q75", "q95")}
            colour = colours[run["method"]]
            ax.fill_between(x, clip["q5"], clip["q95"], color=colour, alpha=0.18, linewidth=0,
                            gid=f"q5-95:{run['label']}", label="5-95 %")
            ax.fill_between(x, clip["q25"], clip["q75"], color=colour, alpha=0.38, linewidth=0,
                            gid=f"q25-75:{run['label']}", label="25-75 %")
            ax.plot(x, clip["q50"], color=colour, linewidth=2, gid=f"median:{run['label']}", label="median")
            ax.set_yscale("log")
            ax.set_title(_panel_title(run), fontsize="medium")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("threshold (on |w|)")
            ax.legend(loc="upper left", fontsize="small", frameon=False)
        fig.suptitle(f"{task}: distribution of the learned thresholds during training (DT paper Fig. 5); "
                     f"values below {floor:g} (zero or negative) drawn at {floor:g}", fontsize="medium")
    return fig


def layer_remaining(points: pd.DataFrame) -> pd.DataFrame:
    """Remaining weights per layer in % (columns: layers in stored order), one row per evaluation step."""
    rows, layers = [], []
    for step, text in zip(points["step"], points["per_layer"], strict=True):
        per_layer = _extra(text)
        if not per_layer:
            continue
        row = {"step": int(step)}
        for name, (nonzero, total) in per_layer.items():
            if name not in layers:
                layers.append(name)
            row[name] = 100.0 * nonzero / total if total else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["step", *layers])


def fig6(db: Path | str, task: str, seed: int | None = None, default_only: bool = False,
         run_ids: list[str] | None = None) -> Figure:
    """Remaining weights per layer (%) against epochs (DT paper Fig. 6): one panel per pruning method and
    setting, one line per layer (the same colour for a layer in every panel)."""
    runs = training_runs(db, task, seed, default_only, run_ids)
    runs = runs[runs["method"] != "dense"]
    traj = load_trajectories(db, runs["run_id"].tolist())
    tables = {rid: layer_remaining(traj[traj["run_id"] == rid]) for rid in runs["run_id"]}
    runs = runs[[not tables[rid].empty for rid in runs["run_id"]]]
    if runs.empty:
        raise ValueError(f"no pruning run of task {task!r} in {db} has per-layer weight counts in its trajectory")
    scale, xlabel = _x_axis(runs)
    layers: list[str] = []
    for rid in runs["run_id"]:
        layers += [c for c in tables[rid].columns[1:] if c not in layers]
    palette = dict(zip(layers, sns.color_palette("husl", len(layers)), strict=True))
    with _style():
        fig, axes = _panels(len(runs))
        for ax, (_, run) in zip(axes, runs.iterrows(), strict=True):
            t = tables[run["run_id"]]
            x = t["step"].to_numpy(dtype=float) * scale[run["run_id"]]
            for k, layer in enumerate(t.columns[1:]):
                ax.plot(x, t[layer].to_numpy(dtype=float), color=palette[layer], linewidth=1.5,
                        linestyle=LINESTYLES[(k // 10) % len(LINESTYLES)], gid=f"layer:{run['label']}:{layer}",
                        label=layer)
            ax.set_ylim(0, 102)
            ax.set_title(_panel_title(run), fontsize="medium")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("remaining weights (%)")
        handles = [Line2D([], [], color=palette[layer], linewidth=1.5,
                          linestyle=LINESTYLES[(k // 10) % len(LINESTYLES)], label=layer)
                   for k, layer in enumerate(layers)]
        fig.legend(handles=handles, loc="outside right upper", title="layer", fontsize="small",
                   title_fontsize="small", frameon=False)
        fig.suptitle(f"{task}: remaining weights per layer during training (DT paper Fig. 6)", fontsize="medium")
    return fig


def fig7(db: Path | str, task: str, seed: int | None = None, default_only: bool = False,
         run_ids: list[str] | None = None) -> Figure:
    """Top-1 (solid) and top-5 (dashed, where stored) test accuracy of the deployed network against
    epochs (DT paper Fig. 7), one colour per method."""
    runs = training_runs(db, task, seed, default_only, run_ids)
    traj = load_trajectories(db, runs["run_id"].tolist())
    if "top5" not in traj.columns:
        traj["top5"] = math.nan
    traj = traj[traj["accuracy"].notna()]
    runs = runs[runs["run_id"].isin(set(traj["run_id"]))]
    if runs.empty:
        raise ValueError(f"no run of task {task!r} in {db} has accuracy in its trajectory")
    scale, xlabel = _x_axis(runs)
    styles = _styles(runs)
    any_top5 = bool(traj["top5"].notna().any())
    with _style():
        fig, ax = _new_figure(11.0, 6.0)
        for _, run in runs.iterrows():
            pts = traj[traj["run_id"] == run["run_id"]].sort_values("step")
            x = pts["step"].to_numpy(dtype=float) * scale[run["run_id"]]
            colour, _ls = styles[run["label"]]
            note = "" if run["status"] == "finished" else f", {run['status']}"
            label = f"{run['label']} (seed {int(run['seed'])}{note})"
            ax.plot(x, 100.0 * pts["accuracy"].to_numpy(dtype=float), color=colour, linewidth=2,
                    gid=f"top1:{run['label']}", label=f"{label} top-1")
            top5 = pts["top5"].to_numpy(dtype=float)
            if np.isfinite(top5).any():
                ax.plot(x, 100.0 * top5, color=colour, linewidth=2, linestyle="--", gid=f"top5:{run['label']}",
                        label=f"{label} top-5")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy of the deployed network (%)")
        what = "top-1 (solid) and top-5 (dashed)" if any_top5 else "top-1"
        ax.set_title(f"{task}: {what} accuracy during training (DT paper Fig. 7)", fontsize="medium")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return fig


def make_plot(db: Path | str, task: str, kind: str, **kwargs) -> Figure:
    if kind == "fig1":
        return fig1(db, task, **kwargs)
    if kind == "pareto":
        return pareto(db, task, default_only=kwargs.get("default_only", False))
    if kind == "time":
        return time_plot(db, task, default_only=kwargs.get("default_only", False))
    if kind in ("fig5", "fig6", "fig7"):
        builder = {"fig5": fig5, "fig6": fig6, "fig7": fig7}[kind]
        return builder(db, task, seed=kwargs.get("seed"), default_only=kwargs.get("default_only", False),
                       run_ids=kwargs.get("run_ids"))
    raise ValueError(f"unknown plot kind {kind!r}; choose from: {', '.join(KINDS)}")


def save(fig: Figure, out_dir: Path | str, name: str) -> list[Path]:
    """`<out_dir>/<name>.png` and `.svg`, nothing clipped (bbox_inches='tight')."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
        paths.append(path)
    return paths


def write_plot(db: Path | str, task: str, kind: str, out_dir: Path | str, **kwargs) -> tuple[Figure, list[Path]]:
    """Build the `kind` plot of `task` and save it as `<out_dir>/<task>-<kind>.png/.svg`."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no result store at {db}")
    fig = make_plot(db, task, kind, **kwargs)
    return fig, save(fig, out_dir, f"{task}-{kind}")
