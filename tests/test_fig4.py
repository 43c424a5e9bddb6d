"""Fig. 4 of the DT paper (weights and thresholds of the XOR net): spans by hand, a hand-filled store, one
short real XOR run."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from prunebench.methods.dynthresh import DynamicThresholding, DynThreshHparams
from prunebench.methods.magnitude import MagnitudePruning

from prunebench.observers import ThresholdRecorder
from prunebench.registry import get_task
from prunebench.request import make_spec
from prunebench.store import ResultStore
from prunebench.suites.fig4 import fig4, load_fig4_data, pruned_spans, run_fig4

STEPS = [50, 100, 150, 200, 250, 300]


def _gids(fig, prefix: str) -> list[str]:
    out = []
    for ax in fig.axes:
        for artist in [*ax.get_lines(), *ax.patches]:
            gid = artist.get_gid() or ""
            if gid.startswith(prefix):
                out.append(gid)
    return out


# -- pruned_spans ---------------------------------------------------------------------------------------


def test_spans_start_pruned_splice_prune_again_end_pruned():
    mags = [0.1, 0.1, 0.5, 0.5, 0.1, 0.1]
    thr = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    # pruned at 50-100, spliced at 150, pruned again from 250 to the end
    assert pruned_spans(STEPS, mags, thr) == [(50, 100), (250, 300)]


def test_spans_single_points_none_and_all():
    thr = [1.0] * 6
    assert pruned_spans(STEPS, [2, 0.5, 2, 2, 0.5, 2], thr) == [(100, 100), (250, 250)]
    assert pruned_spans(STEPS, [2] * 6, thr) == []
    assert pruned_spans(STEPS, [0] * 6, thr) == [(50, 300)]
    # |w| == t is kept (the hard forward keeps |w| >= t)
    assert pruned_spans(STEPS, [1.0] * 6, thr) == []
    assert pruned_spans([], [], []) == []


def test_spans_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="one length"):
        pruned_spans(STEPS, [1.0] * 5, [1.0] * 6)


# -- record_thresholds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["individual", "layer", "global"])
def test_record_thresholds_raw_signed_weights_and_broadcast_thresholds(scale):
    task = get_task("xor")
    pruner = DynamicThresholding(DynThreshHparams(scale=scale, t_max=20.0), task)
    model = pruner.attach(task.build_model(0))
    extra = json.loads(json.dumps(ThresholdRecorder().measure(pruner, model, None)))  # survives the JSON column
    assert list(extra["weights"]) == ["fc1", "fc2"] == list(extra["thresholds"])
    raw = model.fc1.parametrizations.weight.original
    assert np.allclose(extra["weights"]["fc1"], raw.detach().numpy())  # signed, not the pruned forward
    assert np.array(extra["weights"]["fc1"]).shape == (5, 2)
    assert np.array(extra["thresholds"]["fc1"]).shape == (5, 2)
    assert np.array(extra["thresholds"]["fc2"]).shape == (1, 5)
    t0 = 20.0 / (1 + np.exp(5.0))
    assert np.allclose(extra["thresholds"]["fc2"], t0)
    with torch.no_grad():
        pruner.threshold_params[0][0].fill_(0.0)  # t = t_max / 2 for the first threshold parameter
    assert np.allclose(ThresholdRecorder().measure(pruner, model, None)["thresholds"]["fc1"], 10.0)


def test_record_thresholds_refuses_a_method_without_thresholds():
    task = get_task("xor")
    pruner = MagnitudePruning(MagnitudePruning.hparams_class(), task)
    with pytest.raises(TypeError, match="threshold_of"):
        ThresholdRecorder().measure(pruner, pruner.attach(task.build_model(0)), None)


# -- fig4 on a hand-filled store ------------------------------------------------------------------------


def _hand_history() -> tuple[list[dict], int]:
    """Six evaluations of the 2-5-1 net; every weight 1.0 (sign alternating) and threshold 0.5 (kept)
    except: fc1[0, 0] (layer 1, weight 1) pruned at 50-100, spliced, pruned 250-300 (2 spans);
    fc1[3, 1] (layer 1, weight 9, input 2 -> hidden 4) pruned at 150 only (1 span);
    fc2[0, 2] (layer 2, weight 3) pruned from 200 to the end (1 span). 4 spans in all."""
    extras = []
    for i in range(len(STEPS)):
        w1 = [[(-1.0) ** (j + k) for k in range(2)] for j in range(5)]
        t1 = [[0.5] * 2 for _ in range(5)]
        w2 = [[1.0, -1.0, 1.0, -1.0, 1.0]]
        t2 = [[0.5] * 5]
        if i in (0, 1, 4, 5):
            t1[0][0] = 2.0
        if i == 2:
            w1[3][1] = -0.1
        if i >= 3:
            w2[0][2] = -0.2
        extras.append({"weights": {"fc1": w1, "fc2": w2}, "thresholds": {"fc1": t1, "fc2": t2}})
    return extras, 4


@pytest.fixture()
def add_xor_run(add_stored_run):
    """`add_xor_run(store, extras, seed=0) -> run_id`: a finished XOR dynthresh run with a point at each of STEPS
    carrying its extra (None: no extra)."""

    def add(store: ResultStore, extras: list[dict | None], seed: int = 0) -> str:
        spec = make_spec("xor", "dynthresh", seed, iterations=300, eval_every=50)
        points = [{"step": step, "train_seconds": step / 100, "accuracy": 1.0, "compression": 1.0,
                   **({"extra": extra} if extra is not None else {})}
                  for step, extra in zip(STEPS, extras, strict=True)]
        final = {"iterations": STEPS[-1], "train_seconds": 3.0, "eval_seconds": 1.0, "accuracy": 1.0,
                 "compression": 1.0, "weights_total": 15, "weights_nonzero": 15}
        return add_stored_run(store, spec, points, final, environment={"device": "x"})

    return add


def test_fig4_hand_filled_store_panels_lines_spans(add_xor_run, store):
    extras, n_spans = _hand_history()
    run_id = add_xor_run(store, extras)
    fig = fig4(store.path, run_id)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 15
    assert all(len(ax.get_lines()) == 2 for ax in panels)
    titles = [ax.get_title() for ax in panels]
    assert titles[:10] == [f"layer 1, weight {k}" for k in range(1, 11)]
    assert titles[10:] == [f"layer 2, weight {k}" for k in range(1, 6)]
    spans = _gids(fig, "pruned:")
    assert len(spans) == n_spans
    assert sorted(spans) == ["pruned:fc1:1", "pruned:fc1:1", "pruned:fc1:9", "pruned:fc2:3"]
    # the layout: row 2, column 4 is input 2 -> hidden 4, i.e. fc1.weight[3, 1]
    by_gid = {line.get_gid(): (ax, line) for ax in panels for line in ax.get_lines()}
    ax9, line9 = by_gid["magnitude:fc1:9"]
    assert ax9.get_title() == "layer 1, weight 9"
    assert list(line9.get_ydata()) == [1.0, 1.0, 0.1, 1.0, 1.0, 1.0]  # magnitudes, not signed weights
    assert list(line9.get_xdata()) == [float(s) for s in STEPS]
    texts = [t for sub in [fig, *fig.subfigs] for t in sub.texts]
    summary = next(t.get_text() for t in texts if t.get_gid() == "summary")
    assert "weight 1 in layer 1; weight 3 in layer 2 (2 of 15 weights)" in summary
    assert "layer 1, weight 1 at 150" in summary and "layer 1, weight 9 at 200" in summary
    data = load_fig4_data(store.path, run_id)
    assert [p.label for p in data.pruned_at_end()] == ["layer 1, weight 1", "layer 2, weight 3"]
    assert [(p.label, s) for p, s in data.spliced()] == [("layer 1, weight 1", [150]), ("layer 1, weight 9", [200])]


def test_fig4_without_recorded_thresholds_says_how_to_record(add_xor_run, store):
    run_id = add_xor_run(store, [None] * len(STEPS))
    with pytest.raises(ValueError, match="record_thresholds=True"):
        fig4(store.path, run_id)
    with pytest.raises(ValueError, match="no run"):
        fig4(store.path, "0123456789abcdef")


# -- one real short XOR run -----------------------------------------------------------------------------


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_run_fig4_real_short_xor_run(tmp_path):
    db, out = tmp_path / "fig4.sqlite", tmp_path / "out"
    run_id, fig = run_fig4(db, tmp_path, seed=0, iterations=500, eval_every=50, out_dir=out)
    png, svg = out / "xor-fig4.png", out / "xor-fig4.svg"
    assert png.is_file() and _is_png(png)
    assert ET.parse(svg).getroot().tag.endswith("svg")
    assert len(_gids(fig, "magnitude:")) == 15 and len(_gids(fig, "threshold:")) == 15
    data = load_fig4_data(db, run_id)
    assert list(data.steps) == list(range(50, 501, 50))
    # the recorded state is the network the harness measured: kept weights = |w| >= t at the last point
    store = ResultStore(db)
    try:
        nonzero = store.final_row(run_id)["weights_nonzero"]
    finally:
        store.close()
    assert nonzero == 15 - len(data.pruned_at_end())


def test_run_fig4_reruns_a_stored_run_without_thresholds(add_xor_run, tmp_path):
    """A finished run of the same identity stored without the extra (here: by hand) is trained again."""
    db = tmp_path / "fig4.sqlite"
    store = ResultStore(db)
    spec = make_spec("xor", "dynthresh", 0, iterations=300, eval_every=50)
    assert add_xor_run(store, [None] * len(STEPS)) == spec.run_id
    store.close()
    run_id, _ = run_fig4(db, tmp_path, seed=0, iterations=300, eval_every=50)
    assert run_id == spec.run_id
    assert list(load_fig4_data(db, run_id).steps) == STEPS
