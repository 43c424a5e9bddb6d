"""Fig. 4 of the dynamic thresholding paper: every XOR weight's magnitude and its threshold over training.

J.-W. Park and J.-S. Lee, "Dynamic Thresholding for Learning Sparse Neural Networks", ECAI 2020, sec. 4.1,
Fig. 4: for the 2-5-1 sigmoid network on XOR, each weight's magnitude |w| (blue) and its threshold t (red)
against the training iteration, one panel per weight, gray where the weight is pruned (|w| < t, the hard
pruning function keeps |w| >= t). Row 1 holds the weights from input node 1 to the five hidden neurons
(layer 1, weights 1-5), row 2 those from input node 2 (layer 1, weights 6-10), row 3 the hidden-to-output
weights (layer 2, weights 1-5); the paper reports weights 1, 2, 6 of layer 1 and weight 1 of layer 2 pruned
at the end.

- The run records, at every evaluation, each prunable layer's signed weights and per-weight thresholds in the
  trajectory row's `extra` column (`observers.ThresholdRecorder`, `harness.TrainOptions.record_thresholds`).
- `pruned_spans`: the (first step, last step) of each maximal run of evaluation points with |w| < t.
- `fig4`: the grid drawn from a stored run; `run_fig4`: train (or reuse) the XOR run and draw it.

Panel numbering: PyTorch stores `fc1.weight` as (hidden, inputs), so input node i's weights are the column
`fc1.weight[:, i]`; weight k of layer 1 is hidden neuron (k - 1) % H of input node (k - 1) // H (H = 5),
matching a row-major (inputs, hidden) matrix as the paper's TensorFlow code holds it. Layer 2 is
`fc2.weight[o, :]` per output node o (one row for XOR). The state is known only at the evaluation points
(every `eval_every` steps, the first one after `eval_every` steps, not at initialisation); lines join them.

Artists carry gids (`magnitude:<layer>:<k>`, `threshold:<layer>:<k>`, `pruned:<layer>:<k>`) for tests.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from prunebench.harness import train
from prunebench.report.plots import _style, save
from prunebench.request import make_spec
from prunebench.store import ResultStore

#: seaborn "colorblind" palette: blue (index 0) for |w|, vermillion (index 3) for t, as blue/red in the paper.
PALETTE = sns.color_palette("colorblind", 10)
MAGNITUDE_COLOUR = PALETTE[0]
THRESHOLD_COLOUR = PALETTE[3]
PRUNED_COLOUR = "0.82"
MAX_PANELS = 100
HOW_TO_RECORD = "train it with record_thresholds=True (run --record-thresholds; run_fig4 does this for XOR)"


def pruned_spans(steps: Any, magnitudes: Any, thresholds: Any) -> list[tuple[int, int]]:
    """(first step, last step) of each maximal run of consecutive evaluation points where the weight is
    pruned (magnitude < threshold), in order. The plot shades from the first to the last step of a run,
    i.e. the whole stretch between the consecutive pruned evaluation points; a run of one point gives
    (step, step)."""
    s = np.asarray(steps)
    m = np.asarray(magnitudes, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    if not s.shape == m.shape == t.shape or s.ndim != 1:
        raise ValueError(f"steps, magnitudes and thresholds must be 1-D of one length; got shapes "
                         f"{s.shape}, {m.shape}, {t.shape}")
    pruned = m < t
    spans: list[tuple[int, int]] = []
    start = None
    for i, p in enumerate(pruned):
        if p and start is None:
            start = i
        elif not p and start is not None:
            spans.append((int(s[start]), int(s[i - 1])))
            start = None
    if start is not None:
        spans.append((int(s[start]), int(s[-1])))
    return spans


@dataclass
class Panel:
    """One weight's history: which layer (1-based), its number k in the layer, row/column in the grid."""

    layer: str
    layer_number: int
    k: int
    row: int
    column: int
    weights: np.ndarray  # signed, one per evaluation point
    thresholds: np.ndarray

    @property
    def label(self) -> str:
        return f"layer {self.layer_number}, weight {self.k}"

    @property
    def magnitudes(self) -> np.ndarray:
        return np.abs(self.weights)

    @property
    def pruned(self) -> np.ndarray:
        return self.magnitudes < self.thresholds


@dataclass
class Fig4Data:
    """A run's recorded weights and thresholds, arranged as the panels of Fig. 4."""

    run_id: str
    run: dict[str, Any]
    steps: np.ndarray
    panels: list[Panel]
    rows: int
    columns: int
    row_labels: list[str]

    def pruned_at_end(self) -> list[Panel]:
        return [p for p in self.panels if p.pruned[-1]]

    def spliced(self) -> list[tuple[Panel, list[int]]]:
        """Weights that were pruned at some evaluation and kept at a later one, with the steps of the
        first kept evaluation after each pruned run (the splicing events)."""
        out = []
        for p in self.panels:
            events = [int(self.steps[i]) for i in range(1, len(self.steps)) if p.pruned[i - 1] and not p.pruned[i]]
            if events:
                out.append((p, events))
        return out


def _run_row(db: Path | str, run_id: str) -> tuple[dict[str, Any], list[tuple[int, str | None]]]:
    if not Path(db).is_file():
        raise FileNotFoundError(f"no result store at {db}")
    with sqlite3.connect(str(db)) as conn:
        conn.row_factory = sqlite3.Row
        run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        rows = conn.execute("SELECT step, extra FROM trajectory WHERE run_id = ? ORDER BY step", (run_id,)).fetchall()
    if run is None:
        raise ValueError(f"no run {run_id!r} in {db}")
    return dict(run), [(int(r["step"]), r["extra"]) for r in rows]


def load_fig4_data(db: Path | str, run_id: str) -> Fig4Data:
    """Read the run's evaluation steps and recorded weights/thresholds and lay them out as Fig. 4's grid:
    one row per input node of layer 1 (its weights to the hidden neurons), then one row per output node
    of layer 2 (the hidden-to-output weights). Needs a two-layer fully connected network."""
    run, rows = _run_row(db, run_id)
    steps, weights, thresholds = [], [], []
    for step, extra in rows:
        payload = json.loads(extra) if extra else {}
        if isinstance(payload, dict) and "weights" in payload and "thresholds" in payload:
            steps.append(step)
            weights.append(payload["weights"])
            thresholds.append(payload["thresholds"])
    if not steps:
        raise ValueError(f"run {run_id} ({run['method']} on {run['task']}, seed {run['seed']}) has no recorded "
                         f"weights and thresholds in its trajectory's extra column; {HOW_TO_RECORD}")
    layers = list(weights[-1])
    w = {name: np.array([point[name] for point in weights], dtype=float) for name in layers}
    t = {name: np.array([point[name] for point in thresholds], dtype=float) for name in layers}
    if len(layers) != 2 or any(w[name].ndim != 3 for name in layers):
        shapes = {name: w[name].shape[1:] for name in layers}
        raise ValueError(f"fig4 draws a two-layer fully connected network (the XOR 2-5-1 net); run {run_id} "
                         f"has layers {shapes}")
    first, second = layers
    hidden, inputs = w[first].shape[1:]
    outputs, hidden2 = w[second].shape[1:]
    if hidden2 != hidden:
        raise ValueError(f"layer {second} reads {hidden2} units but layer {first} has {hidden}")
    n_rows = inputs + outputs
    if n_rows * hidden > MAX_PANELS:
        raise ValueError(f"{n_rows * hidden} panels is too many for one figure (at most {MAX_PANELS})")
    panels = []
    for i in range(inputs):  # row i: the column fc1.weight[:, i], input node i to each hidden neuron
        for j in range(hidden):
            panels.append(Panel(first, 1, i * hidden + j + 1, i, j, w[first][:, j, i], t[first][:, j, i]))
    for o in range(outputs):  # then fc2.weight[o, :], each hidden neuron to output node o
        for j in range(hidden):
            panels.append(Panel(second, 2, o * hidden + j + 1, inputs + o, j, w[second][:, o, j], t[second][:, o, j]))
    row_labels = ([f"input {i + 1} \u2192 hidden" for i in range(inputs)]
                  + [f"hidden \u2192 output{f' {o + 1}' if outputs > 1 else ''}" for o in range(outputs)])
    return Fig4Data(run_id, run, np.array(steps), panels, n_rows, hidden, row_labels)


def _weight_list(panels: list[Panel]) -> str:
    parts = []
    for number in sorted({p.layer_number for p in panels}):
        ks = [str(p.k) for p in panels if p.layer_number == number]
        parts.append(f"weight{'s' if len(ks) > 1 else ''} {', '.join(ks)} in layer {number}")
    return "; ".join(parts) if parts else "none"


def summary_text(data: Fig4Data) -> str:
    """Which weights are pruned at the last evaluation and which were spliced back during training."""
    end = data.pruned_at_end()
    lines = [f"Pruned at the end (iteration {int(data.steps[-1])}): {_weight_list(end)} "
             f"({len(end)} of {len(data.panels)} weights).   "
             "Paper (Fig. 4): weights 1, 2, 6 in layer 1; weight 1 in layer 2 (4 of 15)."]
    spliced = data.spliced()
    if spliced:
        events = "; ".join(f"{p.label} at {', '.join(str(s) for s in steps)}" for p, steps in spliced)
        lines.append(f"Spliced back (first kept evaluation after being pruned): {events}.")
    else:
        lines.append("No weight was spliced back: once pruned at an evaluation, every weight stayed pruned.")
    return "\n".join(lines)


def fig4(db: Path | str, run_id: str) -> Figure:
    """Fig. 4 of the DT paper from a stored run with recorded thresholds (see the module docstring)."""
    data = load_fig4_data(db, run_id)
    run = data.run
    steps = data.steps.astype(float)
    with _style():
        grid_height = 2.35 * data.rows + 1.0
        fig = Figure(figsize=(3.1 * data.columns + 1.2, grid_height + 1.1), layout="constrained")
        FigureCanvasAgg(fig)
        top, bottom = fig.subfigures(2, 1, height_ratios=[grid_height, 1.1])
        axes = top.subplots(data.rows, data.columns, sharex=True, squeeze=False)
        for p in data.panels:
            ax = axes[p.row][p.column]
            tag = f"{p.layer}:{p.k}"
            for start, end in pruned_spans(data.steps, p.magnitudes, p.thresholds):
                ax.axvspan(start, end, facecolor=PRUNED_COLOUR, edgecolor=PRUNED_COLOUR, linewidth=0.8, zorder=0,
                           gid=f"pruned:{tag}")
            ax.plot(steps, p.magnitudes, color=MAGNITUDE_COLOUR, linewidth=1.6, zorder=3, gid=f"magnitude:{tag}")
            ax.plot(steps, p.thresholds, color=THRESHOLD_COLOUR, linewidth=1.6, zorder=3, gid=f"threshold:{tag}")
            ax.set_title(p.label, fontsize="medium", fontweight="bold" if p.pruned[-1] else "normal")
            ax.set_xlim(0, steps[-1])
            ax.set_ylim(bottom=0)
            ax.tick_params(labelsize="small")
            if p.column == 0:
                ax.set_ylabel(data.row_labels[p.row], fontsize="medium")
        top.supxlabel("iteration")
        status = "" if run["status"] == "finished" else f" [{run['status']}]"
        top.suptitle(f"{run['task']}, {run['method']}, seed {run['seed']}{status}: each weight's magnitude and "
                     f"threshold during training (after Park & Lee 2020, Fig. 4; bold title: pruned at the end)",
                     fontsize="large")
        handles = [Line2D([], [], color=MAGNITUDE_COLOUR, linewidth=2, label="weight magnitude |w|"),
                   Line2D([], [], color=THRESHOLD_COLOUR, linewidth=2, label="threshold t"),
                   Patch(facecolor=PRUNED_COLOUR, edgecolor=PRUNED_COLOUR, label="pruned (|w| < t)")]
        bottom.legend(handles=handles, loc="upper center", ncols=3, frameon=False, fontsize="medium")
        every = f"every {int(steps[1] - steps[0])} iterations, " if len(steps) > 1 else ""
        bottom.text(0.01, 0.62, f"{summary_text(data)}\nEvaluated {every}first at iteration {int(steps[0])}; "
                    f"run {run_id}.", ha="left", va="top", fontsize="small", gid="summary")
    return fig


def has_thresholds(store: ResultStore, run_id: str, eval_every: int, iterations: int) -> bool:
    """Whether the stored run recorded thresholds at the evaluation points asked for (eval_every is not
    part of the run identity, so a run evaluated less often is trained again)."""
    rows = store.trajectory(run_id)
    wanted = set(range(eval_every, iterations + 1, eval_every)) | {iterations}
    recorded = {r["step"] for r in rows if r["extra"] and "thresholds" in json.loads(r["extra"])}
    return wanted <= recorded


def run_fig4(store_path: Path | str, data_dir: Path | str, seed: int = 0, iterations: int = 10_000,
             eval_every: int = 50, out_dir: Path | str | None = None,
             hparams: dict[str, Any] | None = None) -> tuple[str, Figure]:
    """Train (or reuse) the dynthresh XOR run with thresholds recorded, draw Fig. 4 and, with `out_dir`,
    save it as `<out_dir>/xor-fig4.png` and `.svg`. A finished run of the same identity stored without the
    thresholds (or evaluated at other steps) is trained again (force)."""
    spec = make_spec("xor", "dynthresh", seed, hparams, iterations=iterations, eval_every=eval_every)
    store = ResultStore(store_path)
    try:
        run_id = spec.run_id
        force = store.status(run_id) == "finished" and not has_thresholds(store, run_id, eval_every, iterations)
        result = train(spec, store, Path(data_dir), force=force, record_thresholds=True)
        if result.status != "finished":
            raise RuntimeError(f"xor dynthresh run {run_id} {result.status}: {result.error}")
    finally:
        store.close()
    fig = fig4(store_path, run_id)
    if out_dir is not None:
        save(fig, out_dir, "xor-fig4")
    return run_id, fig
