"""Leaderboard aggregation and plots on a store filled by hand (no training): the expected numbers
below are computed by hand from the rows written here."""

from __future__ import annotations

import csv
import math
import shlex
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from click.testing import CliRunner

from prunebench.cli import main
from prunebench.report.leaderboard import CSV_COLUMNS_REQUIRED, build_leaderboard, run_table, time_to_compression
from prunebench.report.plots import fig1, pareto, pareto_frontier, time_plot, write_plot
from prunebench.report.published import published
from prunebench.report.stats import ci95_halfwidth, std, t_quantile
from prunebench.request import format_seeds
from prunebench.setting import parse_seeds
from prunebench.store import ResultStore

T975_DF2 = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom (tables)


@pytest.fixture()
def filled(tmp_path, fill_board):
    db = tmp_path / "hand.sqlite"
    store = ResultStore(db)
    ids = fill_board(store)
    store.close()
    return db, ids


def _row(board, method, setting=None):
    rows = board.rows[board.rows["method"] == method]
    if setting is not None:
        rows = rows[rows["setting"] == setting]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_t_quantile_and_ci_match_tables():
    assert t_quantile(0.975, 2) == pytest.approx(T975_DF2, abs=1e-8)
    assert t_quantile(0.975, 1) == pytest.approx(12.706204736174707, abs=1e-8)
    assert t_quantile(0.975, 9) == pytest.approx(2.2621571627409915, abs=1e-8)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764451051977987, abs=1e-8)
    assert std([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3))
    assert ci95_halfwidth([0.4, 0.2, 0.3]) == pytest.approx(T975_DF2 * 0.1 / math.sqrt(3))
    assert math.isnan(ci95_halfwidth([0.3]))


def test_seed_lists_round_trip():
    assert parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert format_seeds([7, 0, 2, 1]) == "0-2,7"
    with pytest.raises(ValueError):
        parse_seeds("2-0")
    with pytest.raises(ValueError):
        parse_seeds("a")


def test_aggregation_gives_hand_computed_numbers(filled):
    db, ids = filled
    board = build_leaderboard(db, "lenet300", max_loss=0.4)
    dt = _row(board, "dynthresh")
    assert dt["setting"] == "default" and dt["budget"] == "equal"
    assert dt["seeds"] == 3 and dt["loss_seeds"] == 3 and dt["seed_list"] == "0-2"
    assert dt["accuracy_mean"] == pytest.approx(97.7)                # (97.6 + 98.0 + 97.5) / 3
    assert dt["accuracy_std"] == pytest.approx(math.sqrt(0.07))      # deviations -0.1, 0.3, -0.2
    assert dt["accuracy_loss_mean"] == pytest.approx(0.3)            # (0.4 + 0.2 + 0.3) / 3
    assert dt["accuracy_loss_std"] == pytest.approx(0.1)
    ci = T975_DF2 * 0.1 / math.sqrt(3)                               # 0.248414...
    assert dt["accuracy_loss_ci95"] == pytest.approx(ci)
    assert dt["accuracy_loss_ci95"] == pytest.approx(0.2484138, abs=1e-6)
    assert dt["accuracy_loss_ci_low"] == pytest.approx(0.3 - ci)
    assert dt["accuracy_loss_ci_high"] == pytest.approx(0.3 + ci)
    assert dt["compression_mean"] == pytest.approx(90.0) and dt["compression_std"] == pytest.approx(10.0)
    assert dt["compression_min"] == 80.0 and dt["compression_max"] == 100.0
    assert dt["train_seconds_mean"] == pytest.approx(22.0) and dt["train_seconds_std"] == pytest.approx(2.0)
    assert dt["iterations_mean"] == pytest.approx(400)
    assert dt["within_loss_limit"]
    # time to compression at loss <= 0.4 pp (seed 0: 300/300/400, seed 1: 200/300/300, seed 2: 200/400/400)
    assert dt["reached_50x"] == dt["reached_60x"] == dt["reached_70x"] == 3
    assert dt["seconds_to_50x_mean"] == pytest.approx((15.0 + 11.0 + 12.0) / 3)   # 12.667
    assert dt["iterations_to_50x_mean"] == pytest.approx((300 + 200 + 200) / 3)
    assert dt["seconds_to_60x_mean"] == pytest.approx((15.0 + 16.5 + 24.0) / 3)   # 18.5
    assert dt["iterations_to_60x_mean"] == pytest.approx((300 + 300 + 400) / 3)
    assert dt["seconds_to_70x_mean"] == pytest.approx((20.0 + 16.5 + 24.0) / 3)   # 20.167
    assert dt["iterations_to_70x_mean"] == pytest.approx((400 + 300 + 400) / 3)
    assert dt["device"] == "test-gpu"
    assert dt["published_compression"] == 81.0 and dt["published_accuracy_loss"] == 0.36
    assert "Table" in dt["published_source"]

    mag = _row(board, "magnitude")
    assert mag["setting"] == "rounds=3" and mag["seeds"] == 2
    assert mag["accuracy_loss_mean"] == pytest.approx(1.0) and mag["accuracy_loss_std"] == pytest.approx(0.0, abs=1e-9)
    assert mag["compression_mean"] == pytest.approx(12.5) and mag["compression_std"] == pytest.approx(math.sqrt(0.5))
    assert not mag["within_loss_limit"]
    assert mag["reached_50x"] == 0 and math.isnan(mag["seconds_to_50x_mean"])
    assert (mag["published_compression"], mag["published_accuracy_loss"]) == (12.2, -0.05)

    dense = _row(board, "dense", "default")
    assert dense["accuracy_loss_mean"] == 0.0 and dense["seeds"] == 3

    # ranking: within the limit by compression (dynthresh 90x, the two dense groups 1x), then over it
    # (magnitude), then without a dense reference (dns)
    ranked = board.rows[["rank", "method", "setting"]].values.tolist()
    assert ranked == [[1, "dynthresh", "default"], [2, "dense", "default"], [3, "dense", "iterations=2000"],
                      [4, "magnitude", "rounds=3"], [5, "dns", "default"]]
    assert board.unfinished == {"interrupted": 1}


def test_run_without_matching_dense_is_reported_not_compared(filled):
    db, ids = filled
    runs = run_table(db, "lenet300", 0.4)
    dns = runs[runs["run_id"] == ids["dns5"]].iloc[0]
    # a dense seed-5 run exists, but with another protocol (2,000 iterations): it must not be used
    assert pd.isna(dns["dense_run_id"]) and math.isnan(dns["accuracy_loss"]) and math.isnan(dns["dense_accuracy"])
    assert math.isnan(dns["seconds_to_50x"])  # the loss limit cannot be checked without a reference
    board = build_leaderboard(db, "lenet300", max_loss=0.4)
    row = _row(board, "dns")
    assert row["dense_missing_seeds"] == "5" and row["loss_seeds"] == 0
    assert math.isnan(row["accuracy_loss_mean"]) and not row["within_loss_limit"]
    assert row["rank"] == board.rows["rank"].max()
    dt = run_table(db, "lenet300", 0.4)
    assert set(dt.loc[dt["method"] == "dynthresh", "dense_run_id"]) == {ids["dense0"], ids["dense1"], ids["dense2"]}
    md = board.to_markdown("prunebench leaderboard --task lenet300")
    assert "no dense run" in md and "seed(s) 5" in md


def test_time_to_compression_without_a_loss_limit(filled):
    db, _ = filled
    runs = run_table(db, "lenet300", None)
    dt0 = runs[(runs["method"] == "dynthresh") & (runs["seed"] == 0)].iloc[0]
    assert (dt0["seconds_to_50x"], dt0["iterations_to_50x"]) == (10.0, 200.0)  # 55x at step 200, loss ignored
    assert (dt0["seconds_to_70x"], dt0["iterations_to_70x"]) == (20.0, 400.0)
    dns = runs[runs["method"] == "dns"].iloc[0]
    assert dns["seconds_to_60x"] == 40.0   # without a limit no dense reference is needed
    pts = pd.DataFrame({"step": [1, 2], "train_seconds": [1.0, 2.0], "accuracy": [0.9, 0.9], "compression": [1, 2]})
    assert all(math.isnan(v) for v in time_to_compression(pts, 50, 0.9, None))


def test_writers_md_csv_html_and_cli(filled, tmp_path):
    db, _ = filled
    out = tmp_path / "boards"
    result = CliRunner().invoke(main, ["leaderboard", "--task", "lenet300", "--db", str(db), "--out", str(out),
                                       "--format", "html", "--max-loss", "0.4"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "dynthresh" in result.output and "magnitude" in result.output
    md = (out / "lenet300.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# Leaderboard: lenet300"
    command = f"prunebench leaderboard --task lenet300 --max-loss 0.4 --db {db} --out {out} --format html"
    assert command in md
    assert "| 81x | +0.36 |" in md and "| 12.2x | -0.05 |" in md    # the published columns of those rows
    assert "- dynthresh: 81x at +0.36 pp, DT paper Tables 1-2" in md
    table_lines = [line for line in lines if line.startswith("| ")]
    assert len(table_lines) == 1 + 5  # header + dynthresh, dense, magnitude, dns, dense (iterations=2000)
    with open(out / "lenet300.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert set(CSV_COLUMNS_REQUIRED) <= set(rows[0])
    dt = next(r for r in rows if r["method"] == "dynthresh")
    assert float(dt["accuracy_loss_mean"]) == pytest.approx(0.3)
    assert float(dt["compression_std"]) == pytest.approx(10.0)
    assert float(dt["published_compression"]) == 81.0
    assert (out / "lenet300.html").read_text().startswith("<!DOCTYPE html>")
    # the rerun command printed for a row regenerates its identities (dry run: all already finished)
    mag = next(r for r in rows if r["method"] == "magnitude")
    args = shlex.split(mag["command"])
    assert args[:2] == ["prunebench", "sweep"] and "rounds=3" in args
    dry = CliRunner().invoke(main, [*args[1:], "--dry-run"], env={"COLUMNS": "300"})
    assert dry.exit_code == 0, dry.output
    for run_id in mag["run_ids"].split():
        assert run_id in dry.output
    assert "0 to run" in dry.output


def test_leaderboard_on_missing_store_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["leaderboard", "--task", "lenet300", "--db", str(tmp_path / "none.sqlite"),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no result store" in result.output


def test_published_figures():
    def fig(method, task):
        p = published(method, task)
        return p.compression, p.accuracy_loss

    assert fig("dynthresh", "lenet300") == (81, 0.36) and fig("dynthresh", "lenet5") == (151, -0.03)
    assert fig("magnitude", "lenet300") == (12.2, -0.05) and fig("magnitude", "lenet5") == (11.9, -0.03)
    assert fig("dns", "lenet300") == (56, -0.29) and fig("dns", "lenet5") == (108, 0.0)
    assert fig("sparse-vd", "lenet300") == (68, 0.28) and fig("sparse-vd", "lenet5") == (280, -0.05)
    assert fig("l0", "lenet300") == (12.2, 0.28) and fig("l0", "lenet5") == (70, 0.20)
    assert fig("dst", "lenet5")[0] == 61 and fig("dst", "lenet5")[1] == pytest.approx(99.18 - 99.11)
    assert published("dst", "lenet300").accuracy_loss == pytest.approx(98.16 - 97.69)
    assert published("ltp", "lenet300").compression is None and "none published" in published("ltp", "lenet300").note
    assert published("dense", "lenet300") is None


def _gids(fig, prefix):
    ax = fig.axes[0]
    artists = list(ax.get_lines()) + list(ax.collections)
    return sorted(a.get_gid() for a in artists if (a.get_gid() or "").startswith(prefix))


def _check_files(paths):
    png, svg = paths
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert svg.suffix == ".svg" and ET.parse(svg).getroot().tag.endswith("svg")


def test_fig1_has_one_curve_per_group_and_compression_markers(filled, tmp_path):
    db, _ = filled
    fig = fig1(db, "lenet300")
    # groups: dense (default), dense (iterations=2000), dynthresh, magnitude (rounds=3), dns
    assert len(_gids(fig, "curve:")) == 5
    markers = _gids(fig, "marker:")
    assert [m for m in markers if m.startswith("marker:dynthresh:")] == [
        "marker:dynthresh:50", "marker:dynthresh:60", "marker:dynthresh:70"]
    assert "marker:dns:50" in markers and "marker:dns:60" in markers and "marker:dns:70" not in markers
    assert not [m for m in markers if m.startswith("marker:magnitude")]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    method_legend, marker_key = legend[:5], legend[5:]   # one entry per curve, a gap, the marker key
    assert marker_key == [" ", "first reaches 50x", "first reaches 60x", "first reaches 70x"]
    # mean wall-clock to each marker (no loss limit): dynthresh first >= 50x at 10.0 s (55x), 5.5 s (52x),
    # 12.0 s (50x): mean 9.17 s; 60x at 15.0, 16.5, 18.0 s (65x): 16.5 s; 70x at 20.0, 16.5, 24.0 s: 20.17 s
    assert "dynthresh: 50x 9.2 s, 60x 16.5 s, 70x 20.2 s" in method_legend, method_legend
    assert "dns: 50x 40.0 s, 60x 40.0 s" in method_legend and "magnitude: below 50x" in method_legend
    _check_files(write_plot(db, "lenet300", "fig1", tmp_path)[1])


def test_pareto_points_and_frontier_per_method(filled, tmp_path):
    db, _ = filled
    fig = pareto(db, "lenet300")
    assert _gids(fig, "frontier:") == ["frontier:dns", "frontier:dynthresh", "frontier:magnitude"]
    points = {a.get_gid(): len(a.get_offsets()) for a in fig.axes[0].collections if a.get_gid()}
    assert points == {"points:dense": 4, "points:dynthresh": 3, "points:magnitude": 2, "points:dns": 1}
    assert fig.axes[0].get_xscale() == "log"
    frontier = {a.get_gid(): a for a in fig.axes[0].get_lines()}["frontier:dynthresh"]
    # dynthresh (compression, accuracy %): (80, 97.6) is dominated by (90, 98.0); (100, 97.5) is not
    assert list(frontier.get_xdata()) == [90.0, 100.0]
    assert list(frontier.get_ydata()) == pytest.approx([98.0, 97.5])
    _check_files(write_plot(db, "lenet300", "pareto", tmp_path)[1])


def test_pareto_frontier_drops_dominated_points():
    pts = pd.DataFrame({"compression": [10, 20, 30, 40], "accuracy": [98.0, 98.5, 97.0, 97.5]})
    assert pareto_frontier(pts)["compression"].tolist() == [20, 40]


def test_time_plot_one_line_per_pruning_group(filled, tmp_path):
    db, _ = filled
    fig = time_plot(db, "lenet300")
    assert _gids(fig, "time:") == ["time:dns", "time:dynthresh", "time:magnitude"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(legend) == 3 + 4 and legend[0].startswith("dns (1 seed, all reach 60x)")  # 3 lines, gap, 3 markers
    _check_files(write_plot(db, "lenet300", "time", tmp_path)[1])
    result = CliRunner().invoke(main, ["plot", "--task", "lenet300", "--kind", "pareto", "--kind", "time",
                                       "--db", str(db), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    for name in ("lenet300-pareto.png", "lenet300-pareto.svg", "lenet300-time.png", "lenet300-time.svg"):
        assert (tmp_path / "cli" / name).stat().st_size > 1000


def test_reconstructions_are_labelled_and_flops_reduction_is_aggregated(add_board_run, tmp_path):
    db = tmp_path / "flops.sqlite"
    store = ResultStore(db)
    for seed, acc in ((0, 0.98), (1, 0.98)):
        add_board_run(store, "dense", seed, acc, 1.0, 10.0, [(400, 10.0, acc, 1.0)])
    for seed, flops in ((0, 1000), (1, 4000)):  # reference 20,000 MACs: 20x and 5x
        run_id = add_board_run(store, "autoprune", seed, 0.97, 10.0, 10.0, [(400, 10.0, 0.97, 10.0)])
        store.finish(run_id, {"iterations": 400, "accuracy": 0.97, "compression": 10.0, "compression_all": 8.0,
                              "weights_total": 1000, "weights_nonzero": 100, "flops": flops,
                              "flops_nonzero": flops // 2, "flops_reference": 20_000})
    store.close()
    board = build_leaderboard(db, "lenet300")
    row = _row(board, "autoprune")
    assert row["provenance"] == "reconstruction"
    assert row["flops_reduction_mean"] == pytest.approx((20 + 5) / 2)
    assert row["flops_reduction_sparse_mean"] == pytest.approx((40 + 10) / 2)
    assert row["params_reduction_mean"] == pytest.approx(8.0)
    md = board.to_markdown("cmd")
    assert "autoprune (reconstruction)" in md and "12.5x / 25.0x" in md
    assert _row(board, "dense")["provenance"] == "paper"
