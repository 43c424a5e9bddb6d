"""The matched-compression table (prunebench/report/matched.py), its plot and `prunebench matched`, on a store
built by hand: every probe and seed run the search asks for is written straight into it (no training), with
compressions from made-up knob curves and accuracies chosen so that the marks can be worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from click.testing import CliRunner

from prunebench.cli import main
from prunebench.report import stats
from prunebench.report.matched import CSV_COLUMNS, build_matched, read_settings, settings_args
from prunebench.running.curve import CurveSettings
from prunebench.store import ResultStore

#: The curve tests/conftest.py writes (`fill_matched`): dynthresh, magnitude and dns at 10x and 50x, seeds 0-2.
SETTINGS = CurveSettings("lenet300", ("dynthresh", "magnitude", "dns"), (10.0, 50.0), (0, 1, 2))

@pytest.fixture()
def matched_db(tmp_path, fill_matched):
    db = tmp_path / "runs.sqlite"
    store = ResultStore(db)
    try:
        fill_matched(store)
    finally:
        store.close()
    return db


def t_cdf_df4(t: float) -> float:
    """Student t's CDF at 4 degrees of freedom in closed form (no incomplete beta)."""
    x = t / math.sqrt(4 + t * t)
    return 0.5 + 0.75 * x * (1 - x * x / 3)


def test_welch_matches_a_hand_computed_t_and_the_closed_form_p_at_4_degrees_of_freedom():
    t, df, p = stats.welch([98.0, 98.2, 98.1], [97.9, 98.1, 98.0])
    se = math.sqrt(0.01 / 3 + 0.01 / 3)  # both samples: s = 0.1
    assert t == pytest.approx(0.1 / se) and t == pytest.approx(1.2247449, abs=1e-6)
    assert df == pytest.approx(4.0)
    assert p == pytest.approx(2 * (1 - t_cdf_df4(0.1 / se)), abs=1e-9) and p == pytest.approx(0.2879, abs=1e-4)
    t, df, p = stats.welch([1.0, 2.0, 3.0, 4.0], [1.0, 1.5])  # unequal sizes and spreads
    va, vb = (5 / 3) / 4, 0.125 / 2
    assert t == pytest.approx(1.25 / math.sqrt(va + vb))
    assert df == pytest.approx((va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 1))
    assert all(math.isnan(v) for v in stats.welch([1.0], [1.0, 2.0]))
    assert stats.welch([1.0, 1.0], [1.0, 1.0])[2] == 1.0 and stats.welch([2.0, 2.0], [1.0, 1.0])[2] == 0.0


def test_the_table_marks_best_tied_worse_and_na_and_shows_unreached_cells(matched_db):
    table = build_matched(matched_db, SETTINGS)
    dt, mag, dns = (table.cell(m, 10.0) for m in SETTINGS.methods)
    assert [c.status for c in table.cells] == ["reached", "reached", "reached", "unreached", "reached", "reached"]
    assert (dt.versus_best, mag.versus_best, dns.versus_best) == ("best", "tied", "worse")
    t_dns = 1.0 / math.sqrt(0.01 / 3 + 0.01 / 3)  # 12.25 > t(0.975, 4) = 2.776: significant
    assert dns.p_vs_best == pytest.approx(2 * (1 - t_cdf_df4(t_dns)), abs=1e-9) and dns.p_vs_best < 0.001
    assert mag.p_vs_best == pytest.approx(0.2879, abs=1e-4)
    # CI: t(0.975, 2) * s / sqrt(3) with s = 0.1 pp
    assert dt.accuracy_mean == pytest.approx(98.1) and dt.accuracy_ci95 == pytest.approx(4.302653 * 0.1 / math.sqrt(3))
    assert dt.loss_mean == pytest.approx(0.2) and dns.loss_mean == pytest.approx(1.2)
    assert stats.mean(dt.compression) == pytest.approx(dt.compression[0] * 3.02 / 3)  # seed 1 lands 2% higher
    unreached = table.cell("magnitude", 50.0)
    assert unreached.status == "unreached" and "at most 31.0x" in unreached.note and not unreached.accuracy
    dns50 = table.cell("dns", 50.0)
    assert dns50.seeds == [0] and dns50.versus_best == "n/a" and table.cell("dynthresh", 50.0).versus_best == "best"
    md = table.to_markdown()
    row = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    assert row["dynthresh"][1].startswith("**98.10 ± 0.25** %") and "+0.20 pp (3 seeds)" in row["dynthresh"][1]
    assert "≈" in row["magnitude"][1] and "≈" not in row["dns"][1] and "**" not in row["dns"][1]
    assert "unreached: at most 31.0x at the knob's limit" in row["magnitude"][2]
    assert row["dns"][2].startswith("97.50 % (n/a)") and "(1/3 seeds)" in row["dns"][2]
    assert "Welch's t-test on the seeds' accuracies, two-sided, p = 0.05" in md
    assert "prunebench sweep --methods dynthresh --tasks lenet300 --seeds 0-2 --grid lam=" in md


def test_the_csv_has_the_columns_and_numbers_and_each_cell_its_command(matched_db, tmp_path):
    table = build_matched(matched_db, SETTINGS, db_label="runs.sqlite")
    paths = table.write(tmp_path / "out")
    assert [p.name for p in paths] == ["lenet300-matched.md", "lenet300-matched.csv", "lenet300-matched.json"]
    csv = pd.read_csv(paths[1])
    assert tuple(csv.columns) == CSV_COLUMNS
    for col in ("method", "target", "seeds", "compression_mean", "accuracy_mean", "accuracy_ci95", "loss_mean",
                "significant_vs_best", "knob", "knob_value", "probe_runs", "status", "note"):
        assert col in csv.columns
    at10 = csv[csv["target"] == 10].set_index("method")
    assert list(at10["significant_vs_best"]) == ["best", "no", "yes"]
    assert at10.loc["dynthresh", "accuracy_ci95"] == pytest.approx(0.248414, abs=1e-5)
    assert at10.loc["dns", "loss_mean"] == pytest.approx(1.2, abs=1e-6)
    assert list(at10["seeds"]) == [3, 3, 3] and (at10["probe_runs"] >= 1).all()
    assert at10.loc["magnitude", "knob"] == "quality scale" and at10.loc["dynthresh", "knob"] == "lam"
    unreached = csv[(csv["method"] == "magnitude") & (csv["target"] == 50)].iloc[0]
    assert unreached["status"] == "unreached" and math.isnan(unreached["accuracy_mean"])
    assert unreached["note"].startswith("unreached: at most 31.0x")
    # Each reached cell's command reruns exactly its seed runs.
    dt = table.cell("dynthresh", 10.0)
    assert dt.command.endswith("--db runs.sqlite") and f"--grid lam={dt.knob_value:g} " in dt.command
    assert dt.run_ids == [SETTINGS.request("dynthresh", s, {"lam": dt.knob_value}).run_id for s in (0, 1, 2)]
    assert read_settings(paths[2]) == SETTINGS


def test_prunebench_matched_writes_the_table_and_the_plot(matched_db, tmp_path):
    out = tmp_path / "boards"
    result = CliRunner().invoke(main, ["matched", "--task", "lenet300", "--methods", "dynthresh,magnitude,dns",
                                       "--targets", "10,50", "--seeds", "0-2", "--db", str(matched_db),
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    md = (out / "lenet300-matched.md").read_text()
    assert "prunebench matched --task lenet300 --methods dynthresh,magnitude,dns --targets 10,50 --seeds 0-2" in md
    assert "prunebench curve --task lenet300 --methods dynthresh,magnitude,dns --targets 10,50 --seeds 0-2" in md
    png = out / "figures" / "lenet300-matched.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_the_curve_plot_draws_one_line_per_method_with_bands_published_points_and_times(matched_db):
    from prunebench.report.plots import matched_plot

    table = build_matched(matched_db, SETTINGS)
    fig = matched_plot(table)
    accuracy, seconds = fig.axes[:2]
    lines = {line.get_gid(): line for line in accuracy.get_lines() if line.get_gid()}
    assert sorted(g for g in lines if g.startswith("matched:")) == ["matched:dns", "matched:dynthresh",
                                                                   "matched:magnitude"]
    assert list(lines["matched:dynthresh"].get_ydata()) == pytest.approx([0.2, 0.6])  # loss pp at 10x, 50x
    assert len(lines["matched:magnitude"].get_xdata()) == 1  # 50x unreached: one point
    bands = [c.get_gid() for c in accuracy.collections if (c.get_gid() or "").startswith("band:")]
    assert sorted(bands) == ["band:dns", "band:dynthresh", "band:magnitude"]
    published = {c.get_gid() for c in accuracy.collections if (c.get_gid() or "").startswith("published:")}
    assert published == {"published:dynthresh", "published:magnitude", "published:dns"}
    assert accuracy.get_xscale() == "log" and accuracy.get_yscale() == "symlog"
    times = {line.get_gid(): line for line in seconds.get_lines() if line.get_gid()}
    assert list(times["time:dynthresh"].get_ydata()) == pytest.approx([21.0, 21.0])  # mean of 20, 21, 22


def test_protocol_overrides_reach_the_settings_and_come_back_as_flags(tmp_path):
    settings = CurveSettings("lenet5", ("dynthresh",), (25.0,), (0, 1, 2), protocol=(("channels_last", True),))
    args = settings_args(settings)
    assert args[-2:] == ["--channels-last", "true"]
    db = tmp_path / "empty.sqlite"
    ResultStore(db).close()
    result = CliRunner().invoke(main, ["matched", *args, "--db", str(db), "--out", str(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert read_settings(tmp_path / "lenet5-matched.json") == settings
    # The protocol is part of every run's identity: the same cell without it asks for other runs.
    plain = CurveSettings("lenet5", ("dynthresh",), (25.0,), (0, 1, 2))
    assert settings.request("dynthresh", 0, {}).run_id != plain.request("dynthresh", 0, {}).run_id


def test_the_dt_paper_section_puts_dt_against_the_others_per_target(matched_db):
    from prunebench.suites.reproduce import matched_section

    lines = matched_section([(SETTINGS, matched_db)])
    rows = [line for line in lines if line.startswith("| lenet300 |")]
    assert len(rows) == 2
    at10, at50 = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    # 10x: DT 98.10 +- 0.25 (t-interval of 98.0/98.2/98.1), loss 98.3 - 98.1 = +0.20 pp; magnitude 0.1 pp lower
    # is not significantly different (t = 1.22), dns 1.0 pp lower is significantly worse than DT.
    assert at10[2].startswith("98.10 ± 0.25 %") and at10[2].endswith("+0.20 pp")
    assert at10[4].startswith("Magnitude") or at10[4].lower().startswith("magnitude")
    assert "98.00 %" in at10[4]
    assert at10[5] == "1 / 1 / 0 of 2"
    # 50x: magnitude cannot reach it; dns has one finished seed, so no test: counted as not different.
    assert at50[5] == "0 / 1 / 0 of 1"
    # Without DT in any curve the section says how to make one.
    assert "prunebench curve" in "\n".join(matched_section([]))


def test_a_cell_whose_seeds_land_off_target_is_in_no_comparison():
    from prunebench.report.matched import MatchedCell, cell_text, mark_significance

    def cell(method: str, accuracy: list[float], compression: list[float]) -> MatchedCell:
        return MatchedCell(method, 100.0, "reached", "", "lam", 1.0, ["p"], seeds=[0, 1, 2], accuracy=accuracy,
                           compression=compression, loss=[0.0] * 3, planned_seeds=3)

    # "b" is the most accurate but its seeds average 1,434x (seed 0 found 213x at 200x, the others collapsed):
    # off target, not the best; "a" (mean 104x, within +-10%) is.
    a = cell("a", [97.0, 97.2, 97.1], [99.0, 104.0, 109.0])
    b = cell("b", [98.0, 98.1, 98.2], [213.0, 2000.0, 2090.0])
    c = cell("c", [96.0, 96.1, 96.2], [88.0, 92.0, 90.0])   # mean 90.0x: exactly at the -10% edge
    mark_significance([a, b, c])
    assert (a.versus_best, b.versus_best, c.versus_best) == ("best", "off target", "worse")
    assert not b.on_target and c.on_target
    assert "(off target)" in cell_text(b) and "1434.3x" in cell_text(b) and "**" not in cell_text(b)
    assert b.record("t")["significant_vs_best"] == "off target" and b.record("t")["on_target"] is False


def test_the_search_cost_counts_probes_per_cell_distinct_runs_and_their_hours(matched_db):
    cost = build_matched(matched_db, SETTINGS).cost
    # Probes: dynthresh 2 + 2, magnitude 2 (1, 0.833) + 3 (1, 4.17, 5: unreached), dns 2 + 1 = 12 over 6 cells;
    # the start value is shared by both targets of each method: 12 - 3 = 9 distinct runs.
    assert (cost.cells, cost.probes_per_cell, cost.distinct_probes) == (6, 2.0, 9)
    # Seeds 1-2 of the 5 reached cells, but dns at 50x has none finished: 8; dense seeds 0-2.
    assert (cost.seed_runs, cost.dense_runs) == (8, 3)
    # Seconds (tests/conftest.py SECONDS, + seed for seeds): probes 3*20 + 4*30 + 2*40, seeds 2*(21+22) + (31+32)
    # + (41+42), dense 3*10: 522 s.
    assert cost.train_hours == pytest.approx(522 / 3600)
    assert "6 cells took 2.00 probe runs each on average (9 distinct" in cost.describe()
