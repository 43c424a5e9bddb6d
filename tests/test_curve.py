"""`prunebench curve`: the matched-compression search (prunebench/running/curve.py). The search's decisions
on made-up compression curves (no training), then on XOR: it lands within tolerance, a stopped curve resumes
without training a finished run again, an unreachable target says so, and accuracy never enters it."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from rich.console import Console

from prunebench.cli import main
from prunebench.data import default_data_dir
from prunebench.knob import CompressionKnob
from prunebench.running.curve import CurveSettings, curve_cells, decide, run_curve
from prunebench.store import ResultStore

QUIET = Console(quiet=True)


def search(knob: CompressionKnob, start: float, compression, target: float, max_probes: int = 6):
    """Run `decide` against `compression(value)` until it ends: (decision, probes)."""
    probes: list[tuple[float, float]] = []
    while (decision := decide(knob, start, probes, target, 0.1, max_probes)).status == "searching":
        probes.append((decision.value, compression(decision.value)))
    return decision, probes


def test_the_search_lands_on_a_power_law_in_few_probes_and_says_when_the_limit_falls_short():
    knob = CompressionKnob("lam", raises=True, low=1e-6, high=0.1)
    curve = lambda lam: min(87.0 * (lam / 5e-4) ** 0.7, 300.0)  # noqa: E731 (DT-like: 87x at the default)
    for target in (10, 25, 50, 100, 200):
        decision, probes = search(knob, 5e-4, curve, target)
        assert decision.status == "reached" and len(probes) <= 4, (target, probes)
        assert abs(probes[decision.chosen][1] / target - 1) <= 0.1
    decision, probes = search(knob, 5e-4, curve, 1000)
    assert decision.status == "unreached" and probes[-1][0] == 0.1
    assert decision.note == "unreached: at most 300.0x at the knob's limit (lam=0.1)"
    # A knob that lowers compression (a threshold of what is dropped), searched linearly.
    cut = CompressionKnob("threshold", raises=False, low=-8.0, high=8.0, log=False)
    decision, probes = search(cut, 3.0, lambda t: math.exp(0.6 * (8 - t)), 20.0)
    assert decision.status == "reached" and abs(math.exp(0.6 * (8 - probes[decision.chosen][0])) / 20 - 1) <= 0.1
    # A step in compression wider than the tolerance: the search stops instead of probing forever.
    decision, probes = search(knob, 5e-4, lambda lam: 5.0 if lam < 1e-3 else 40.0, 15.0, max_probes=20)
    assert decision.status == "exhausted" and "jumps across 15x" in decision.note and len(probes) < 20
    decision, probes = search(knob, 5e-4, lambda lam: 5.0 if lam < 1e-3 else 40.0, 15.0, max_probes=3)
    assert decision.status == "exhausted" and len(probes) == 3 and "after 3 probes" in decision.note


def settings(**kw) -> CurveSettings:
    values = dict(task="xor", methods=("magnitude",), targets=(3.0,), seeds=(0, 1),
                  iterations=1000)
    return CurveSettings(**{**values, **kw})


def test_the_search_lands_within_tolerance_on_xor_and_trains_the_other_seeds(tmp_path):
    db = tmp_path / "runs.sqlite"
    # On XOR (15 weights) dynthresh reaches about 1.7x at most in 1,000 steps: each method at a target it can reach.
    reports = [run_curve(settings(methods=(m,), targets=(t,)), db, default_data_dir(), console=QUIET)
               for m, t in (("magnitude", 3.0), ("dynthresh", 1.8))]
    store = ResultStore(db)
    try:
        for cell in (r.cells[0] for r in reports):
            assert cell.status == "reached", cell.record()
            assert 1 <= len(cell.probes) <= 6 and cell.done
            stored = store.final_compression(cell.chosen.run_id)
            assert stored == cell.chosen.compression and abs(stored / cell.target - 1) <= 0.1
            assert set(cell.seed_runs) == {0, 1} and cell.seed_runs[0] == cell.chosen.run_id
            seed1 = store.run_row(cell.seed_runs[1])
            assert seed1["status"] == "finished" and seed1["seed"] == 1
            assert json.loads(seed1["hparams"])[cell.knob.hparam] == json.loads(
                store.run_row(cell.chosen.run_id)["hparams"])[cell.knob.hparam]
        magnitude, dynthresh = (r.cells[0] for r in reports)
        assert magnitude.probes[0].value == 1.0 and len(magnitude.probes) >= 3  # a real search, from scale 1
        assert dynthresh.probes[0].value == 0.003 and len(dynthresh.probes) >= 2  # from XOR's calibrated lam
        assert sum(r.trained for r in reports) == len(store.conn.execute("SELECT run_id FROM runs").fetchall())
    finally:
        store.close()


def test_a_stopped_curve_resumes_without_training_a_finished_run_again(tmp_path):
    db = tmp_path / "runs.sqlite"
    finished: list[str] = []

    def stop_after_three(outcome) -> None:
        finished.append(outcome.run.request.run_id)
        if len(finished) == 3:
            raise KeyboardInterrupt

    first = run_curve(settings(methods=("magnitude",)), db, default_data_dir(), console=QUIET,
                      on_outcome=stop_after_three)
    assert first.interrupted and first.trained == 3
    second = run_curve(settings(methods=("magnitude",)), db, default_data_dir(), console=QUIET)
    again = {o.run.request.run_id for o in second.outcomes}
    assert not again & set(finished) and second.trained >= 1 and not second.interrupted
    store = ResultStore(db)
    try:
        assert len(store.conn.execute("SELECT run_id FROM runs").fetchall()) == 3 + second.trained
    finally:
        store.close()
    assert all(c.status == "reached" and c.done for c in second.cells)
    assert run_curve(settings(methods=("magnitude",)), db, default_data_dir(), console=QUIET).trained == 0


def test_cli_curve_reports_an_unreachable_target_with_the_compression_reached(tmp_path):
    db = tmp_path / "runs.sqlite"
    result = CliRunner().invoke(main, ["curve", "--task", "xor", "--methods", "magnitude", "--targets", "100",
                                       "--iterations", "1000", "--no-dense", "--json", "--db", str(db)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    # XOR's 2-5-1 network has 15 weights: 15x (one weight left, the harness's floor) is all the knob can reach.
    assert record["status"] == "unreached" and record["compression"] == 15.0 and record["knob_value"] == 5.0
    assert record["note"] == "unreached: at most 15.0x at the knob's limit (quality scale=5)"
    assert record["seed_runs"] == {} and len(record["probe_runs"]) == record["probes"] <= 6


def test_the_search_never_reads_accuracy(tmp_path, monkeypatch):
    db = tmp_path / "runs.sqlite"
    chosen = settings(methods=("magnitude",), targets=(3.0,), seeds=(0,))
    run_curve(chosen, db, default_data_dir(), console=QUIET, with_dense=False)
    store = ResultStore(db)
    try:
        before = [c.record() for c in curve_cells(store, chosen)]
        with store.conn:  # garbage where accuracy is stored
            store.conn.execute("UPDATE final SET accuracy = -7.0")
            store.conn.execute("UPDATE trajectory SET accuracy = 'nan'")
        for reader in ("final_row", "trajectory", "run_row"):
            monkeypatch.setattr(ResultStore, reader, lambda *a, **k: pytest.fail("the search read a whole row"))
        after = [c.record() for c in curve_cells(store, chosen)]
    finally:
        store.close()
    assert after == before and before[0]["status"] == "reached" and before[0]["probes"] >= 2
