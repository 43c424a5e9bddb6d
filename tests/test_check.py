"""`prunebench check`: regressions fail with a readable table, `--update` round-trips, the TOML is sound.

Real runs use task xor with a few hundred steps (well under a second each); the comparison logic is
also tested on canned measurements (no training at all)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from click.testing import CliRunner

from prunebench.cli import main
from prunebench.pruner import prunable_layers
from prunebench.registry import get_method, get_task
from prunebench.suites import check as check_module
from prunebench.suites.check import (
    Baseline,
    CheckConfig,
    Measurement,
    baseline_text,
    compare,
    load_baseline,
    parse_baseline,
    updated_baseline,
)

SHORT_SUITE = (("xor", 600, 300),)


@pytest.fixture()
def short_suite(monkeypatch):
    """The check's suite shrunk to xor at 600 steps (the code path is the real one)."""
    monkeypatch.setattr(check_module, "SUITE", SHORT_SUITE)
    monkeypatch.delenv(check_module.SPEED_ENV, raising=False)


def invoke(*args: str):
    return CliRunner().invoke(main, ["check", *args], catch_exceptions=False)


def one_line(text: str) -> str:
    return " ".join(text.split())


def table_row(output: str, config: str, metric: str) -> list[str]:
    """The cells of the table row for (config, metric), or [] when there is none."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells[:2] == [config, metric]:
            return cells
    return []


# -- real runs (xor, short) ---------------------------------------------------------------------------

def test_update_writes_a_baseline_that_the_next_check_passes(short_suite, tmp_path):
    path = tmp_path / "regression.toml"
    first = invoke("--methods", "dense,magnitude", "--update", "--baseline", str(path))
    assert first.exit_code == 0, first.output
    assert "baseline changes" in first.output and "new" in first.output
    baseline = load_baseline(path)
    assert set(baseline.configs) == {"xor/dense", "xor/magnitude"}
    assert baseline.configs["xor/magnitude"]["compression"] > 1.0  # magnitude prunes xor in 600 steps
    assert baseline.configs["xor/magnitude"]["iterations"] == 600
    assert baseline.meta["threads"] == 1 and baseline.meta["machine"]

    again = invoke("--methods", "dense,magnitude", "--baseline", str(path), "--no-speed")
    assert again.exit_code == 0, again.output
    assert "check passed" in again.output
    assert table_row(again.output, "xor/magnitude", "compression")[-1] == "ok"
    assert table_row(again.output, "xor/magnitude", "steps/s")[-1] == "off"


def test_impossible_baseline_fails_with_the_expected_rows(short_suite, tmp_path):
    path = tmp_path / "regression.toml"
    assert invoke("--methods", "magnitude", "--update", "--baseline", str(path)).exit_code == 0
    text = path.read_text()
    text = re.sub(r"(?m)^compression = .*$", "compression = 1e9", text)
    text = re.sub(r"(?m)^accuracy = .*$", "accuracy = 1.5", text)
    path.write_text(text)

    result = invoke("--methods", "magnitude", "--baseline", str(path), "--no-speed")
    assert result.exit_code == 1, result.output
    row = table_row(result.output, "xor/magnitude", "compression")
    assert row[2] == "1000000000.00x" and row[-2] == "-3%" and row[-1] == "FAIL", row
    assert row[4].startswith("-100.0%")
    row = table_row(result.output, "xor/magnitude", "accuracy")
    assert row[2] == "150.00%" and row[-2] == "-0.50 pp" and row[-1] == "FAIL", row
    out = one_line(result.output)
    assert "FAIL xor/magnitude compression" in out and "the method prunes less than the baseline" in out
    assert "FAIL xor/magnitude accuracy" in out and "lost accuracy" in out
    assert "check failed (2 regression(s))" in out


def _no_magnitude_pruning(monkeypatch):
    module = get_method("magnitude").__module__
    monkeypatch.setattr(f"{module}.magnitude_mask", lambda weight, threshold: torch.ones_like(weight))


def _no_dynthresh_pruning(monkeypatch):
    def deployed(self, model):  # the trained weights as they are: the thresholds never applied
        raw = {name: m.parametrizations.weight.original for name, m in prunable_layers(model)}
        return self.export(model, weights=raw)

    monkeypatch.setattr(get_method("dynthresh"), "deployed", deployed)


@pytest.mark.parametrize("method,breaker", [("magnitude", _no_magnitude_pruning),
                                            ("dynthresh", _no_dynthresh_pruning)])
def test_a_method_with_its_pruning_disabled_is_caught(short_suite, tmp_path, monkeypatch, method, breaker):
    # XOR's dynthresh default (lam 3e-3, chosen on validation) prunes nothing within the short suite's 600
    # steps; lam 1e-2 does: the check has to see pruning to see it disabled.
    monkeypatch.setitem(get_task("xor").method_defaults, "dynthresh", {"lam": 1e-2, "tau": 0.5, "t_max": 20.0})
    path = tmp_path / "regression.toml"
    assert invoke("--methods", method, "--update", "--baseline", str(path)).exit_code == 0
    assert load_baseline(path).configs[f"xor/{method}"]["compression"] > 1.0

    breaker(monkeypatch)
    result = invoke("--methods", method, "--baseline", str(path), "--no-speed")
    assert result.exit_code == 1, result.output
    row = table_row(result.output, f"xor/{method}", "compression")
    assert row[3] == "1.00x" and row[-1] == "FAIL", row
    assert f"FAIL xor/{method} compression" in one_line(result.output)


def test_missing_baseline_is_an_error_not_a_pass(short_suite, tmp_path):
    result = invoke("--methods", "dense", "--baseline", str(tmp_path / "none.toml"))
    assert result.exit_code == 2
    assert "no baseline" in result.output and "--update" in result.output


def test_unknown_method_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["check", "--methods", "nope", "--baseline", str(tmp_path / "b.toml")])
    assert result.exit_code == 2 and "unknown method(s) 'nope'" in result.output


# -- canned measurements ------------------------------------------------------------------------------

def measured(method: str = "magnitude", task: str = "xor", accuracy: float = 0.99, compression: float = 2.0,
             speed: float = 1000.0, vs_dense: float | None = 0.5, status: str = "finished",
             iterations: int = 600) -> Measurement:
    return Measurement(CheckConfig(task, method, iterations, 300), status, run_id="abc", accuracy=accuracy,
                       compression=compression, weights_nonzero=7, weights_total=15, train_seconds=1.0,
                       steps_per_second=speed, speed_vs_dense=vs_dense,
                       reason=None if status == "finished" else "boom")


def baseline_of(*ms: Measurement, machine: str = "here") -> Baseline:
    b = updated_baseline(None, ms, "cpu")
    b.meta["machine"] = machine
    return b


def verdicts(report) -> dict[tuple[str, str], str]:
    return {(r.config, r.metric): r.verdict for r in report.rows}


def test_small_moves_pass_and_regressions_fail_per_metric():
    base = baseline_of(measured())
    v = verdicts(compare([measured(accuracy=0.986, compression=1.95, speed=400.0, vs_dense=0.2)], base,
                         machine="here"))
    assert v[("xor/magnitude", "accuracy")] == "ok"  # -0.4 pp, tolerance 0.5 pp
    assert v[("xor/magnitude", "compression")] == "ok"  # -2.5%, tolerance 3%
    assert v[("xor/magnitude", "steps/s")] == "ok"  # x0.40 >= x0.33
    assert v[("xor/magnitude", "steps/s vs dense")] == "ok"
    report = compare([measured(accuracy=0.984, compression=1.93, speed=300.0, vs_dense=0.15)], base, machine="here")
    assert {r.metric for r in report.failures} == {"accuracy", "compression", "steps/s", "steps/s vs dense"}
    assert all(r.message for r in report.failures)


def test_pruning_more_passes_with_a_note():
    report = compare([measured(compression=3.0, accuracy=0.999)], baseline_of(measured()), machine="here")
    assert report.ok
    notes = {r.metric: r.message for r in report.notes}
    assert "compression" in notes and "pruning more passes" in notes["compression"]
    assert "accuracy" in notes


def test_speed_switches_and_other_machine_bound(monkeypatch):
    base = baseline_of(measured())
    slow = [measured(speed=200.0, vs_dense=0.5)]  # x0.2: fails on the baseline's machine only
    assert not compare(slow, base, machine="here").ok
    assert compare(slow, base, machine="elsewhere").ok  # other machine: bound x0.1
    assert not compare([measured(speed=50.0)], base, machine="elsewhere").ok
    assert compare([measured(speed=1.0, vs_dense=0.01)], base, speed=False, machine="here").ok
    monkeypatch.setenv(check_module.SPEED_ENV, "0")
    assert check_module.speed_enabled(None) is False
    assert check_module.speed_enabled(True) is True
    monkeypatch.setenv(check_module.SPEED_ENV, "1")
    assert check_module.speed_enabled(None) is True


def test_failed_skipped_new_and_changed_configs():
    base = baseline_of(measured(), measured("dns"))
    report = compare([measured(status="failed"), measured("dns", status="skipped"), measured("dense")], base,
                     machine="here")
    v = verdicts(report)
    assert v[("xor/magnitude", "status")] == "FAIL"  # the run failed (e.g. NaN loss)
    assert v[("xor/dns", "status")] == "FAIL"  # ran in the baseline, no longer applies
    assert v[("xor/dense", "status")] == "FAIL"  # no baseline row: asks for --update
    changed = compare([measured(iterations=700)], base, machine="here")
    assert [r.metric for r in changed.failures] == ["config"]
    assert "iterations 600 -> 700" in changed.failures[0].message


def test_per_config_tolerance_override_wins():
    base = baseline_of(measured())
    base.configs["xor/magnitude"]["compression_rel"] = 0.5
    assert compare([measured(compression=1.2)], base, machine="here").ok
    base.configs["xor/magnitude"]["compression_rel"] = 0.01
    assert not compare([measured(compression=1.97)], base, machine="here").ok


def test_toml_round_trip_keeps_header_tolerances_and_overrides(tmp_path):
    base = baseline_of(measured(), measured("dense", vs_dense=None), measured("sparse-vd", task="lenet300"))
    base.header = "# measured spread: none\n# second line\n"
    base.tolerances["accuracy_abs"] = 0.003
    base.configs["xor/magnitude"]["compression_rel"] = 0.1
    base.configs["xor/magnitude"]["compression"] = math.inf
    base.meta["note"] = 'quotes " and \\ backslash, ünïcode'
    text = baseline_text(base)
    again = parse_baseline(text)
    assert again.header == base.header
    assert again.tolerances == base.tolerances
    assert again.meta == base.meta
    assert again.configs == {k: {n: v for n, v in e.items() if v is not None} for k, e in base.configs.items()}
    assert baseline_text(again) == text
    # --update keeps the header, the tolerances and the override, and replaces the values
    path = tmp_path / "b.toml"
    path.write_text(text)
    new = updated_baseline(load_baseline(path), [measured(compression=4.0)], "cpu")
    assert new.header == base.header and new.tolerances["accuracy_abs"] == 0.003
    assert new.configs["xor/magnitude"]["compression"] == 4.0
    assert new.configs["xor/magnitude"]["compression_rel"] == 0.1
    assert "lenet300/sparse-vd" in new.configs  # not measured this time: kept


def test_malformed_baseline_is_reported(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[tolerances\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_baseline(path)
    path.write_text("[tolerances]\naccuracy_tol = 1\n")
    with pytest.raises(ValueError, match="unknown tolerance"):
        load_baseline(path)


def test_partial_update_keeps_the_relative_speed_it_could_not_measure():
    old = baseline_of(measured(vs_dense=0.5))
    new = updated_baseline(old, [measured(vs_dense=None, compression=3.0)], "cpu")  # --methods magnitude: no dense
    assert new.configs["xor/magnitude"]["speed_vs_dense"] == 0.5
    assert new.configs["xor/magnitude"]["compression"] == 3.0
