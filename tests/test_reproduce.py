"""`prunebench reproduce dt-paper`: Fig. 1 markers computed by hand on a hand-filled store, and the quick
reproduction end to end (report with every published figure, figures, reuse, continuation)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from prunebench.store import ResultStore
from prunebench.suites.reproduce import FIG1_RATIOS, TABLE2_VARIANTS, Item, fig1_markers, make_item, plan, reproduce


def _store_run(add_stored_run, store: ResultStore, item: Item, points: list[dict]) -> None:
    last = points[-1]
    add_stored_run(store, item.spec, points, {"iterations": last["step"], "train_seconds": last["train_seconds"],
                                              "accuracy": last["accuracy"], "compression": last["compression"]})


def test_fig1_markers_by_hand(add_stored_run, tmp_path):
    db = tmp_path / "fig1.sqlite"
    store = ResultStore(db)
    dt = make_item("fig1", "lenet300", "dynthresh", 0, eval_every=100)
    vd = make_item("fig1", "lenet300", "sparse-vd", 0, eval_every=100, at_compressions=FIG1_RATIOS)
    # DT: final accuracy 0.980; within 0.5 pp means >= 0.975.
    _store_run(add_stored_run, store, dt, [
        {"step": 100, "train_seconds": 1.0, "accuracy": 0.960, "compression": 70.0},  # too inaccurate
        {"step": 200, "train_seconds": 2.0, "accuracy": 0.976, "compression": 55.0},  # 50x
        {"step": 300, "train_seconds": 3.0, "accuracy": 0.974, "compression": 80.0},  # 0.6 pp: not yet
        {"step": 400, "train_seconds": 4.0, "accuracy": 0.975, "compression": 65.0},  # 60x
        {"step": 500, "train_seconds": 5.0, "accuracy": 0.980, "compression": 90.0}])  # 70x
    # sparse VD: final accuracy 0.970 (its own, not DT's); markers from the exact-ratio accuracies.
    def vd_point(step, at):
        return {"step": step, "train_seconds": step / 50, "accuracy": 0.970, "compression": 2.0,
                "extra": json.dumps({"at_compression": at})}
    _store_run(add_stored_run, store, vd, [
        vd_point(100, {"50": 0.960, "60": 0.950, "70": 0.900}),
        vd_point(200, {"50": 0.966, "60": 0.964, "70": 0.950}),  # 50x (>= 0.965)
        vd_point(300, {"50": 0.970, "60": 0.965, "70": 0.960}),  # 60x
        vd_point(400, {"50": 0.970, "60": 0.969, "70": 0.964})])  # 70x never within 0.5 pp
    store.close()
    markers = fig1_markers(db, [dt, vd]).set_index(["method", "ratio"])
    assert markers.loc[("dynthresh", 50.0), "iterations"] == 200
    assert markers.loc[("dynthresh", 60.0), "iterations"] == 400
    assert markers.loc[("dynthresh", 70.0), "iterations"] == 500
    assert markers.loc[("dynthresh", 70.0), "seconds"] == 5.0
    assert markers.loc[("sparse-vd", 50.0), "iterations"] == 200
    assert markers.loc[("sparse-vd", 60.0), "iterations"] == 300 and markers.loc[("sparse-vd", 60.0), "seconds"] == 6
    assert markers.loc[("sparse-vd", 70.0), "reached"] == 0


def test_plan_full_covers_every_published_mnist_number():
    items = plan(quick=False)
    table2 = {(i.task, i.method, i.budget) for i in items if i.purpose == "table2"}
    for task in ("lenet300", "lenet5"):
        for method in ("magnitude", "dns", "sparse-vd"):
            assert (task, method, "paper") in table2
    assert {i.seed for i in items if i.purpose == "table2"} == {0, 1, 2}
    scales = {dict(i.hparams).get("scale", "individual") for i in items if i.purpose == "table1"}
    assert scales == {"individual", "layer", "global"}
    fig1 = [i for i in items if i.purpose == "fig1"]
    assert all(i.eval_every == 100 for i in fig1)
    assert all(i.at_compressions == FIG1_RATIOS for i in fig1 if i.method == "sparse-vd")
    # Table 2's further rows: 3 seeds each; one under another protocol has dense under that protocol beside it.
    variants = [i for i in items if i.purpose == "table2-variant"]
    assert {(i.task, i.method, i.label) for i in variants} == {
        (v.task, v.method, v.label) for v in TABLE2_VARIANTS}
    assert len(variants) == 3 * len(TABLE2_VARIANTS)
    dst_sgd = next(i for i in variants if i.method == "dst" and i.seed == 0)
    assert dst_sgd.spec.protocol.optimizer == "sgd" and dst_sgd.spec.protocol.batch_size == 64
    assert dst_sgd.command().endswith("--iterations 18750 --optimizer sgd --lr 0.01 --momentum 0.9 --batch-size 64 "
                                      "--alpha 0.0005")
    dense = {(i.seed, i.spec.protocol) for i in items if i.purpose == "table2-dense"}
    assert all((i.seed, i.spec.protocol) in dense for i in variants if i.protocol)
    assert {(i.task, i.method, i.budget) for i in variants if i.method == "l0"} == {
        ("lenet300", "l0", "paper"), ("lenet5", "l0", "paper")}
    # Table 1's individual runs are Fig. 1's DT runs (same identities), evaluated as finely
    assert {i.run_id for i in fig1 if i.method == "dynthresh"} == {
        i.run_id for i in items if i.purpose == "table1" and not i.hparams}


def _final_rows(db) -> dict[str, sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["run_id"]: r for r in conn.execute(
            "SELECT r.run_id, r.task, r.method, r.seed, r.budget, r.identity, f.accuracy, f.compression "
            "FROM runs r JOIN final f ON f.run_id = r.run_id WHERE r.status = 'finished'")}


def _dense_accuracy(finals: dict[str, sqlite3.Row], run: sqlite3.Row) -> float:
    """The accuracy of `dense` of the run's task, seed and protocol (its budget if stored, else 'equal')."""
    protocol = json.loads(run["identity"]).get("protocol")
    dense = {d["budget"]: d["accuracy"] for d in finals.values()
             if (d["method"], d["task"], d["seed"]) == ("dense", run["task"], run["seed"])
             and json.loads(d["identity"]).get("protocol") == protocol}
    return dense[run["budget"]] if run["budget"] in dense else dense["equal"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("reproduce")
    db, out = root / "runs.sqlite", root / "report"
    started: list[tuple[str, bool]] = []
    path = reproduce(out, db, mnist_dir, quick=True, command="prunebench reproduce dt-paper --quick",
                     on_start=lambda item, skip: started.append((item.run_id, skip)))
    return db, out, path, started, mnist_dir


@pytest.mark.slow
def test_quick_report_has_every_published_figure_beside_a_measurement(quick):
    db, out, path, started, _ = quick
    text = path.read_text()
    assert "QUICK VERSION" in text
    for published in ("| 81x |", "| 23x |", "| 17x |", "| 12x |", "| 56x |", "| 68x |", "| 108x |", "| 280x |",
                      "| 151x |", "| 40x |", "| 61x |", "| 70x |", "| 103x |", "| 51x |", "| 24x |",
                      "5,600", "6,700", "7,400", "9,100"):
        assert published in text, published
    assert "L0-sep units 9-18-65-25" in text  # where the quoted L0 figure comes from
    # DNS's released models, measured here, beside our dns rows (issue 31)
    assert "| lenet300 / dns | 53.76x | 98.01 % | -0.29 |" in text
    assert "| lenet5 / dns | 108.25x | 99.09 % | +0.00 |" in text
    assert "yiwenguo/Dynamic-Network-Surgery@27d4926f0f, models/lenet5/caffe_lenet5_sparse.caffemodel" in text
    assert "not run yet" not in text  # every planned run finished
    assert all(not skip for _, skip in started)
    for name in ("fig1.png", "fig1.svg", "xor-fig4.png", "xor-fig4.svg"):
        assert (out / name).stat().st_size > 1000
    assert (out / "fig1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_report_measured_cells_are_the_stores(quick):
    """Each table row of the quick report (one seed) shows its run's stored compression and its loss against
    the stored dense run of the same seed and protocol, found from the row's own rerun command."""
    db, _, path, _, _ = quick
    by_command = {i.command(): i for i in plan(quick=True) if i.seed == 0}
    finals = _final_rows(db)
    checked = 0
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 11 or not cells[10].startswith("`"):  # the rows of the published-vs-measured tables
            continue
        item = by_command[cells[10].strip("`")]
        run = finals[item.run_id]
        assert cells[2] == f"{run['compression']:.1f}x", line
        assert cells[5] == f"{100 * (_dense_accuracy(finals, run) - run['accuracy']):+.2f}", line
        assert cells[7] == "1", line  # seeds
        checked += 1
    assert checked >= 15


@pytest.mark.slow
def test_quick_reproduction_reuses_finished_runs_and_continues_an_interrupted_one(quick):
    db, out, _, started, data_dir = quick
    victim = started[3][0]
    store = ResultStore(db)
    store.mark(victim, "interrupted", "interrupted at step 10", 10)
    store.close()
    again: list[tuple[str, bool]] = []
    reproduce(out, db, data_dir, quick=True, on_start=lambda item, skip: again.append((item.run_id, skip)))
    assert [run_id for run_id, _ in again] == [run_id for run_id, _ in started]
    assert [run_id for run_id, skip in again if not skip] == [victim]


def test_verdict_flags_differences_in_both_directions():
    from prunebench.suites.reproduce import _verdict

    def summary(cr, loss, seeds=3):
        return {"compression": cr, "loss": loss, "seeds": seeds, "planned": 3}

    assert _verdict(summary(90.0, 0.40), 81.0, 0.36) == "within 20% / 0.2 pp"
    assert _verdict(summary(53.3, 0.43), 23.0, 0.33) == "compression 132% above published"
    assert _verdict(summary(33.7, 0.14, seeds=1), 108.0, 0.0) == "compression 69% below published; 1 of 3 seeds"
    assert _verdict(summary(46.1, 0.38), 56.0, -0.29) == "loss 0.67 pp worse than published"
    assert _verdict(summary(104.8, -0.25, seeds=2), 68.0, 0.28) == (
        "compression 54% above published; loss 0.53 pp better than published; 2 of 3 seeds")
    assert _verdict(summary(float("nan"), float("nan"), seeds=0), 280.0, -0.05) == "not run yet"
    assert _verdict(summary(22.6, 0.03), None, None) == "nothing published"


def test_item_run_id_without_building_the_network_is_make_specs():
    """Item.run_id skips make_spec's dry attach (a site build plans ~100 items); it must name the same
    identity as the full spec for every kind of item the plan holds (seed 0 of each setting)."""
    items = [i for i in plan() if i.seed == 0 and not i.large]
    kinds = {(i.task, i.method, i.budget, i.protocol, i.hparams) for i in items}
    assert len(kinds) > 20
    for item in items:
        assert item.run_id == item.spec.run_id, item
