"""Sweeps on the tiny XOR task (a few hundred iterations): planning, skipping finished identities,
re-running interrupted / stale ones, worker processes, and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunebench import harness
from prunebench.cli import main
from prunebench.request import make_spec
from prunebench.running.sweep import parse_grid, plan_sweep, run_sweep, summary_table
from prunebench.store import ResultStore

ITER = 200   # XOR steps per run: well under a second each
EVAL = 100


@pytest.fixture()
def counted(monkeypatch):
    """Wrap the real training function and record the run_id of every call."""
    calls: list[str] = []
    real = harness.train

    def train(spec, *args, **kwargs):
        calls.append(spec.run_id)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(harness, "train", train)
    return calls


def test_parse_grid_aliases_per_layer_values_and_errors():
    assert parse_grid(["lambda=1e-4,3e-4"]) == {"lam": ["1e-4", "3e-4"]}
    assert parse_grid(["tau=0.03", "lam=1e-3"]) == {"tau": ["0.03"], "lam": ["1e-3"]}
    # per-layer values: ';' between values, ',' between layers
    assert parse_grid(["c_rate=1,3,4,2.5;2,3,4,2.5"]) == {"c_rate": ["1,3,4,2.5", "2,3,4,2.5"]}
    assert parse_grid(["c-rate=3"]) == {"c_rate": ["3"]}
    with pytest.raises(ValueError, match="no method has a hyperparameter 'lamda'"):
        parse_grid(["lamda=1e-4"])
    with pytest.raises(ValueError, match="name=value"):
        parse_grid(["lam"])
    with pytest.raises(ValueError):
        parse_grid(["lam=abc"])


def test_plan_is_the_cross_product_with_dense_and_skips_keys_a_method_lacks():
    plan = plan_sweep(["dynthresh", "magnitude"], ["xor"], [0, 1], parse_grid(["lambda=1e-3,1e-2"]), iterations=ITER)
    # per seed: dense + dynthresh x 2 lambdas + magnitude (no lam: once, defaults)
    assert len(plan.runs) == 8
    assert [(r.spec.method, r.setting) for r in plan.runs[:4]] == [
        ("dense", "iterations=200"), ("dynthresh", "lam=0.001 iterations=200"),
        ("dynthresh", "lam=0.01 iterations=200"), ("magnitude", "iterations=200")]
    assert [r.spec.seed for r in plan.runs] == [0] * 4 + [1] * 4
    assert any("lam: not a hyperparameter of dense, magnitude" in n for n in plan.notes)
    assert plan.runs[1].spec.hparams.lam == 1e-3
    assert plan.runs[1].spec.run_id == make_spec("xor", "dynthresh", 0, {"lam": 1e-3}, ITER).run_id
    assert len({r.spec.run_id for r in plan.runs}) == 8
    # a grid value equal to the task default is the default identity: deduplicated, not run twice
    default_lam = make_spec("xor", "dynthresh").hparams.lam
    plan = plan_sweep(["dynthresh"], ["xor"], [0], {"lam": [str(default_lam), str(default_lam * 1.0)]},
                      iterations=ITER, with_dense=False)
    assert len(plan.runs) == 1 and plan.runs[0].setting == "iterations=200"
    with pytest.raises(ValueError, match="none of the methods dense has a hyperparameter 'lam'"):
        plan_sweep(["dense"], ["xor"], [0], {"lam": ["1e-3"]})
    with pytest.raises(KeyError):
        plan_sweep(["nope"], ["xor"], [0])
    with pytest.raises(ValueError, match="lam must be >= 0"):
        plan_sweep(["dynthresh"], ["xor"], [0], {"lam": ["-1"]})


def test_sweep_skips_finished_and_reruns_interrupted_and_stale_runs(tmp_path, counted, add_stored_run):
    db = tmp_path / "sweep.sqlite"
    store = ResultStore(db)
    # before the sweep: dense seed 0 finished (a real run), dynthresh seed 0 interrupted at step 100,
    # dynthresh seed 1 left 'running' by a killed process, dense seed 1 never started
    dense0 = make_spec("xor", "dense", 0, iterations=ITER, eval_every=EVAL)
    harness.train(dense0, store, tmp_path)
    dt0 = make_spec("xor", "dynthresh", 0, iterations=ITER, eval_every=EVAL)
    dt1 = make_spec("xor", "dynthresh", 1, iterations=ITER, eval_every=EVAL)
    for spec, status in ((dt0, "interrupted"), (dt1, "running")):
        add_stored_run(store, spec, [{"step": 50, "accuracy": 0.5, "compression": 1.0}], environment={}, status=status)
    counted.clear()

    plan = plan_sweep(["dynthresh"], ["xor"], [0, 1], {}, store, iterations=ITER, eval_every=EVAL)
    assert {r.spec.run_id: r.status_before for r in plan.runs} == {
        dense0.run_id: "finished", dt0.run_id: "interrupted", dt1.run_id: "running",
        make_spec("xor", "dense", 1, iterations=ITER).run_id: None}
    report = run_sweep(plan, db, tmp_path)
    assert not report.interrupted
    assert sorted(counted) == sorted([dt0.run_id, dt1.run_id, make_spec("xor", "dense", 1, iterations=ITER).run_id])
    assert report.count("finished") == 3 and report.count("skipped") == 1 and report.count("failed") == 0
    for r in plan.runs:
        assert store.status(r.spec.run_id) == "finished"
    # the interrupted run started over: its old step-50 point is gone
    assert [p["step"] for p in store.trajectory(dt0.run_id)] == [100, 200]
    assert store.final_row(dt0.run_id)["iterations"] == ITER

    # the same sweep again: everything is finished, nothing trains
    counted.clear()
    again = run_sweep(plan_sweep(["dynthresh"], ["xor"], [0, 1], {}, store, iterations=ITER, eval_every=EVAL),
                      db, tmp_path)
    assert counted == [] and again.count("skipped") == 4 and again.pending == 0
    assert "4 skipped" in summary_table(again).title
    store.close()


def test_a_failing_run_does_not_stop_the_sweep(tmp_path, monkeypatch):
    real = harness.train
    bad = make_spec("xor", "dense", 0, iterations=ITER).run_id

    def train(spec, *args, **kwargs):
        if spec.run_id == bad:
            raise RuntimeError("boom")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(harness, "train", train)
    plan = plan_sweep(["dense"], ["xor"], [0, 1], {}, iterations=ITER)
    report = run_sweep(plan, tmp_path / "f.sqlite", tmp_path)
    statuses = {o.run.spec.seed: (o.status, o.error) for o in report.outcomes}
    assert statuses[0] == ("failed", "RuntimeError: boom") and statuses[1][0] == "finished"


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("protocol", [None, {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4}])
def test_worker_processes_fill_the_store(tmp_path, protocol):
    db = tmp_path / "jobs.sqlite"
    plan = plan_sweep(["dense", "magnitude"], ["xor"], [0], {}, iterations=100, eval_every=50, with_dense=False,
                      protocol=protocol)
    report = run_sweep(plan, db, tmp_path, jobs=2)
    assert report.count("finished") == 2, [(o.status, o.error) for o in report.outcomes]
    store = ResultStore(db)
    for r in plan.runs:
        assert store.status(r.spec.run_id) == "finished"  # the worker ran exactly the planned identity
        assert [p["step"] for p in store.trajectory(r.spec.run_id)] == [50, 100]
    store.close()


def test_cli_sweep_dry_run_then_run(tmp_path):
    db = tmp_path / "cli.sqlite"
    args = ["sweep", "--methods", "dynthresh", "--tasks", "xor", "--seeds", "0", "--grid", "lambda=1e-3,3e-3",
            "--iterations", str(ITER), "--eval-every", str(EVAL), "--db", str(db), "--data-dir", str(tmp_path)]
    dry = CliRunner().invoke(main, [*args, "--dry-run"], env={"COLUMNS": "250"})
    assert dry.exit_code == 0, dry.output
    assert "3 identities: 3 to run, 0 already finished" in dry.output
    assert ResultStore(db).conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    run = CliRunner().invoke(main, args, env={"COLUMNS": "250"})
    assert run.exit_code == 0, run.output
    assert "3 run, 0 skipped" in run.output
    again = CliRunner().invoke(main, args, env={"COLUMNS": "250"})
    assert "0 to run, 3 already finished" in again.output and "0 run, 3 skipped" in again.output
    bad = CliRunner().invoke(main, ["sweep", "--methods", "dynthresh,nope", "--tasks", "xor", "--db", str(db)])
    assert bad.exit_code == 2 and "unknown method(s) 'nope'" in bad.output
    bad = CliRunner().invoke(main, ["sweep", "--methods", "dense", "--tasks", "xor", "--grid", "lam=1",
                                    "--db", str(db)])
    assert bad.exit_code == 2 and "has a hyperparameter 'lam'" in bad.output


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _sweep_in_training(tmp_path: Path) -> tuple[subprocess.Popen, Path, list[int]]:
    """A 2-worker sweep process whose two (endless) runs have both written a checkpoint."""
    db = tmp_path / "stop.sqlite"
    cmd = [sys.executable, "-m", "prunebench", "sweep", "--methods", "dense,magnitude", "--tasks", "xor",
           "--seeds", "0", "--no-dense", "--jobs", "2", "--iterations", "10000000", "--eval-every", "50",
           "--checkpoint-every", "0", "--db", str(db), "--data-dir", str(tmp_path)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    checkpoints = tmp_path / "stop.checkpoints"
    deadline = time.monotonic() + 120
    while len(list(checkpoints.glob("*.pt"))) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, "the sweep never started both runs"
        time.sleep(0.2)
    workers = _children(driver.pid)
    assert len(workers) == 2
    return driver, db, workers


@pytest.mark.slow  # worker processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_a_sweep_stops_its_workers_and_stores_their_runs_interrupted(tmp_path):
    driver, db, workers = _sweep_in_training(tmp_path)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=90) == 130  # the same stop as Ctrl-C: "rerun the same command to continue"
    assert not any(_alive(pid) for pid in workers)
    store = ResultStore(db)
    rows = store.conn.execute("SELECT status, failed_step FROM runs").fetchall()
    store.close()
    assert len(rows) == 2 and all(status == "interrupted" and step > 0 for status, step in rows), rows


@pytest.mark.slow  # worker processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses PR_SET_PDEATHSIG")
def test_workers_of_a_killed_sweep_stop_and_keep_their_checkpoints(tmp_path):
    driver, _db, workers = _sweep_in_training(tmp_path)
    driver.kill()  # SIGKILL: the driver stops nothing itself
    driver.wait()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers):  # without the parent-death signal they train for ever
        assert time.monotonic() < deadline, "orphaned workers still training a minute after their sweep died"
        time.sleep(0.2)
    assert len(list((tmp_path / "stop.checkpoints").glob("*.pt"))) == 2  # the next sweep continues both
