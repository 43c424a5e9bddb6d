"""`prunebench sweep --jobs auto`: what it chooses, and that the sweep says so."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from prunebench.cli import main
from prunebench.running import jobs
from prunebench.running.jobs import auto_jobs


@pytest.mark.parametrize(("pending", "cpus", "expected"), [
    (8, 2, (2, 1)),  # more runs than CPUs: one run per CPU, one thread each
    (3, 8, (3, 2)),  # fewer runs than CPUs: the threads shared out
    (1, 4, (1, 4)),  # one run: all CPUs, in this process
    (0, 4, (1, 4)),
    (5, 1, (1, 1)),
])
def test_auto_jobs_on_cpu(pending, cpus, expected):
    plan = auto_jobs(pending, "cpu", cpus=cpus)
    assert (plan.jobs, plan.threads) == expected
    assert plan.jobs * plan.threads <= max(cpus, 1)


def test_auto_jobs_on_cuda_trains_in_this_process():
    plan = auto_jobs(12, "cuda", cpus=16)
    assert plan.jobs == 1 and "one CUDA device" in plan.why


def test_sweep_prints_what_jobs_auto_chose(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "usable_cpus", lambda: 2)
    db = str(tmp_path / "j.sqlite")
    args = ["sweep", "--methods", "dense,magnitude", "--tasks", "xor", "--seeds", "0-1", "--no-dense", "--db", db,
            "--jobs", "auto", "--device", "cpu", "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "--jobs auto: 2 runs at once, 1 thread each (2 CPUs, 4 runs to train" in result.output


@pytest.mark.parametrize("value", ["0", "many", "-2"])
def test_jobs_takes_a_positive_number_or_auto(tmp_path, value):
    args = ["sweep", "--methods", "dense", "--tasks", "xor", "--db", str(tmp_path / "j.sqlite"), "--jobs", value]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "neither a whole number >= 1 nor 'auto'" in result.output


def test_jobs_auto_is_for_the_local_executor(tmp_path):
    args = ["sweep", "--methods", "dense", "--tasks", "xor", "--db", str(tmp_path / "j.sqlite"), "--jobs", "auto",
            "--executor", "ray"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--jobs is for --executor local" in result.output
