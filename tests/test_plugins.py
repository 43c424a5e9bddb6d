"""Plugins (issue 20): the example plugin package, installed the way a user installs one, shows up in
`prunebench list` and runs through `run`, `sweep` (worker processes), `leaderboard`, `plot` and `check`;
a plugin that raises on import is listed as broken while everything else keeps working.

The plugin is installed with pip into a directory of its own (`--target`) and put on PYTHONPATH of the
prunebench processes the tests start, so this environment's site-packages is never changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunebench.store import ResultStore

pytestmark = pytest.mark.slow  # pip installs the example plugin; each command is a new process

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "prunebench-example-plugin"
PRUNEBENCH = Path(sys.executable).with_name("prunebench")


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(EXAMPLE)], check=True)
    assert (site / "prunebench_example" / "random_pruning.py").exists()
    return site


def prunebench(*args: str, path: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path)), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([str(PRUNEBENCH), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_without_the_plugin_its_names_are_unknown(tmp_path):
    out = prunebench("run", "--method", "random", "--task", "mnist-mlp", path=[], cwd=tmp_path)
    assert out.returncode == 2
    assert "'random' is not one of" in out.stderr


def test_example_plugin_runs_like_a_built_in(plugin_path, tmp_path, mnist_dir):
    path = [plugin_path]
    listed = prunebench("list", path=path, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "random" in listed.stdout and "mnist-mlp" in listed.stdout
    assert listed.stdout.count("(plugin: prunebench-example-plugin 0.1.0)") == 2  # the method and the task
    assert "broken plugin" not in listed.stdout

    db = tmp_path / "runs.sqlite"
    run = prunebench("run", "--method", "random", "--task", "mnist-mlp", "--keep", "0.25", "--iterations", "200",
                     "--eval-every", "100", "--db", str(db), "--json", path=path, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    final = json.loads(run.stdout.strip().splitlines()[-1])
    # The harness counted the deployed network: 79,400 weights, a random quarter of each layer kept.
    assert final["weights_total"] == 784 * 100 + 100 * 10
    per_layer = {name: kept / total for name, (kept, total) in final["per_layer"].items()}
    assert abs(per_layer["1"] - 0.25) < 0.01  # 78,400 Bernoulli(0.25): std 0.0015
    assert abs(per_layer["3"] - 0.25) < 0.06  # 1,000 weights: std 0.014
    assert 3.8 < final["compression"] < 4.2
    assert final["accuracy"] > 0.8  # 200 Adam steps of a quarter of a 784-100-10 MLP on real MNIST

    # A sweep in worker processes (each loads the plugin itself): a built-in method on the plugin task,
    # with the dense reference the sweep adds.
    sweep = prunebench("sweep", "--methods", "magnitude", "--tasks", "mnist-mlp", "--iterations", "200",
                       "--eval-every", "100", "--jobs", "2", "--db", str(db), path=path, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    store = ResultStore(db)
    rows = store.conn.execute("SELECT method, status FROM runs WHERE task = 'mnist-mlp' ORDER BY method").fetchall()
    store.close()
    assert [tuple(r) for r in rows] == [("dense", "finished"), ("magnitude", "finished"), ("random", "finished")]

    board = prunebench("leaderboard", "--task", "mnist-mlp", "--max-loss", "100", "--db", str(db),
                       "--out", str(tmp_path / "boards"), path=path, cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    text = (tmp_path / "boards" / "mnist-mlp.md").read_text()
    assert "random" in text and "magnitude" in text

    plot = prunebench("plot", "--task", "mnist-mlp", "--kind", "pareto", "--db", str(db),
                      "--out", str(tmp_path / "figures"), path=path, cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    assert list((tmp_path / "figures").glob("*.png"))

    baseline = tmp_path / "regression.toml"
    check = prunebench("check", "--tasks", "mnist-mlp", "--methods", "random", "--update", "--baseline",
                       str(baseline), path=path, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert '"mnist-mlp/random"' in baseline.read_text() or "mnist-mlp/random" in baseline.read_text()


def test_a_plugin_that_raises_on_import_is_listed_as_broken(plugin_path, tmp_path):
    broken = tmp_path / "broken-site"
    info = broken / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[prunebench.methods]\nexplodes = broken_plugin:Method\n\n"
                                           "[prunebench.tasks]\nnot-a-task = broken_plugin_task:TASK\n")
    (broken / "broken_plugin.py").write_text('raise ImportError("needs a library that is not installed")\n')
    (broken / "broken_plugin_task.py").write_text("TASK = 42\n")
    listed = prunebench("list", path=[broken, plugin_path], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = [line for line in listed.stdout.splitlines() if line.startswith("broken plugin")]
    assert len(lines) == 2
    assert "'explodes'" in lines[0] and "ImportError: needs a library that is not installed" in lines[0]
    assert "'not-a-task'" in lines[1] and "neither a prunebench.tasks.Task" in lines[1]
    assert "mnist-mlp" in listed.stdout and "dynthresh" in listed.stdout  # the rest still loads
    assert "explodes" not in listed.stdout.split("broken plugin")[0]  # not offered as a method
