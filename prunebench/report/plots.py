"""Plots from the result store (seaborn style, matplotlib Agg canvas, PNG and SVG).

- `fig1`: test accuracy of the deployed network against training iterations, one line per method
  (and setting): mean over seeds, band = min..max over seeds; markers where the deployed network
  first reaches 50x / 60x / 70x compression (mean step over the seeds that reached it), the mean
  training wall-clock to each marker in the legend, as in Fig. 1 of the dynamic thresholding paper.
- `pareto`: accuracy against compression (log axis), every run a point, the Pareto frontier per method.
- `time`: training wall-clock to first reach each compression, per method (mean over seeds).

Every series carries a gid (`curve:<label>`, `marker:<label>:<X>`, `points:<method>`,
`frontier:<method>`, `time:<label>`) so tests and scripts can find it. Colours come from seaborn's
"colorblind" palette, one fixed colour per method across all plots; settings of one method differ by
line style. Figures are built on a plain `Figure` with an Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

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
from matplotlib.ticker import FuncFormatter

from prunebench.pruner import method_names
from prunebench.report.leaderboard import THRESHOLDS, run_table
from prunebench.results import load_trajectories

KINDS = ("fig1", "pareto", "time")
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
    spare = [c for i, c in enumerate(palette) if i not in PALETTE_INDEX.values()] or palette
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
        labels[g.group] = g.method + (f" ({', '.join(extra)})" if extra else "")
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
                                  label=f"{method} ({counts})"))
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


def make_plot(db: Path | str, task: str, kind: str, **kwargs) -> Figure:
    if kind == "fig1":
        return fig1(db, task, **kwargs)
    if kind == "pareto":
        return pareto(db, task, default_only=kwargs.get("default_only", False))
    if kind == "time":
        return time_plot(db, task, default_only=kwargs.get("default_only", False))
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
