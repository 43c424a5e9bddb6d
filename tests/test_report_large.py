"""Reports for the CIFAR-10 / ImageNet tasks (DT paper Table 2's other columns, Figs. 5-7): the threshold
distribution and the methods' `thresholds` hooks, the fig5/fig6/fig7 plots and the leaderboard's top-5
column and unverified-data mark on stores filled by hand, the reproduction's plan and report for items
that cannot run here (needs the data / needs a GPU), and `prunebench check --tasks`. Nothing large trains."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from prunebench.methods.dst import DSTHparams, DynamicSparseTraining
from prunebench.methods.dynthresh import DynamicThresholding, DynThreshHparams
from prunebench.methods.ltp import LearnedThresholdPruning, LTPHparams
from torch import nn

from prunebench.cli import main
from prunebench.metrics import THRESHOLD_BINS_PER_DECADE, count_flops, threshold_distribution
from prunebench.protocol import Protocol
from prunebench.pruner import make_hparams, prunable_layers
from prunebench.registry import get_method, get_task
from prunebench.report.leaderboard import UNVERIFIED_NOTE, build_leaderboard, shown_name
from prunebench.report.plots import fig5, fig6, fig7
from prunebench.request import RunSpec
from prunebench.running import estimate as estimate_module
from prunebench.store import ResultStore
from prunebench.suites import check as check_module
from prunebench.suites import reproduce as reproduce_module
from prunebench.suites.check import CheckConfig, Measurement, compare, default_configs, updated_baseline
from prunebench.tasks import TASKS, Task

VGG_LAYERS = [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2"]
ALEXNET_LAYERS = [f"conv{i}" for i in range(1, 6)] + ["fc6", "fc7", "fc8"]


def _stand_in(name: str, train_size: int, batch_size: int) -> Task:
    return Task(name=name, description="stand-in", architecture=lambda: nn.Linear(2, 2), load=lambda *a, **k: None,
                protocol=Protocol(batch_size=batch_size), loss_kind="cross_entropy", train_size=train_size)


@pytest.fixture()
def large_tasks(monkeypatch):
    """vgg-cifar10 and alexnet-imagenet: the real tasks, or stand-ins with their training-set sizes."""
    for name, train_size in (("vgg-cifar10", 50_000), ("alexnet-imagenet", 1_281_167)):
        if name not in TASKS:
            monkeypatch.setitem(TASKS, name, _stand_in(name, train_size, 128))


@pytest.fixture()
def add_run(add_stored_run):
    """`add_run(store, task, method, seed, points, *, final=None, environment=None) -> run_id`: a finished run at
    the task's calibrated defaults, written straight into the store (no network built)."""

    def add(store: ResultStore, task: str, method: str, seed: int, points: list[dict], *, final: dict | None = None,
            environment: dict | None = None) -> str:
        task_obj = get_task(task)
        spec = RunSpec(task_obj, method, make_hparams(get_method(method), task_obj), task_obj.protocol, seed)
        last = points[-1]
        return add_stored_run(store, spec, points, {
            "iterations": last["step"], "train_seconds": 10.0, "eval_seconds": 1.0, "accuracy": last["accuracy"],
            "compression": last["compression"], "weights_total": 1000,
            "weights_nonzero": round(1000 / last["compression"]), **(final or {})},
            environment={"device": "test-gpu", **(environment or {})})

    return add


def point(step: int, accuracy: float, compression: float, layers: list[str], kept: float,
          thresholds: dict | None = None, top5: float | None = None) -> dict:
    per_layer = {name: [round(1000 * kept * (k + 1) / len(layers)), 1000] for k, name in enumerate(layers)}
    p = {"step": step, "train_seconds": step / 100, "accuracy": accuracy, "compression": compression,
         "per_layer": per_layer}
    if thresholds is not None:
        p["extra"] = {"thresholds": thresholds}
    if top5 is not None:
        p["top5"] = top5
    return p


def distribution(scale: float) -> dict:
    return threshold_distribution({"conv1": torch.linspace(0.1, 1.0, 10) * scale, "fc1": torch.full((5,), scale)})


def gids(fig) -> set[str]:
    out = set()
    for ax in fig.axes:
        out |= {a.get_gid() for a in [*ax.get_lines(), *ax.collections] if a.get_gid()}
    return out


def line(fig, gid: str):
    return next(ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == gid)


# -- threshold distribution ---------------------------------------------------------------------------

def test_threshold_distribution_counts_quantiles_and_fixed_bins():
    values = {"a": torch.tensor([1e-5, 0.0, -0.1]), "b": torch.arange(1, 101, dtype=torch.float32) / 1000,
              "c": torch.tensor([20.0, float("nan")])}
    d = json.loads(json.dumps(threshold_distribution(values)))  # JSON-able as it is
    finite = np.concatenate([[1e-5, 0.0, -0.1], np.arange(1, 101) / 1000, [20.0]]).astype(np.float32)
    assert d["count"] == 104 == sum(d["hist"]["counts"])
    assert d["nonfinite"] == 1
    assert d["hist"]["log10_range"] == [-4.0, 1.0] and d["hist"]["bins_per_decade"] == THRESHOLD_BINS_PER_DECADE
    assert len(d["hist"]["counts"]) == 20
    assert d["hist"]["below"] == 3 and d["hist"]["above"] == 1  # in the end bins
    assert d["hist"]["counts"][0] == 3 and d["hist"]["counts"][-1] == 1
    # bin k holds [10^(-4 + k/4), 10^(-4 + (k+1)/4)): 0.001 opens bin 4, 0.01 bin 8, 0.1 bin 12
    assert d["hist"]["counts"][4] == 1  # 0.001 only (the next value, 0.002, is in bin 5)
    assert d["hist"]["counts"][12] == 1  # 0.1
    assert sum(d["hist"]["counts"][8:12]) == 90  # 0.01 ... 0.099
    for q in (5, 25, 50, 75, 95):
        assert d["quantiles"][str(q)] == pytest.approx(float(np.quantile(finite, q / 100)), rel=1e-5)
    assert d["mean"] == pytest.approx(float(finite.astype(np.float64).mean()), rel=1e-5)
    assert d["min"] == pytest.approx(-0.1) and d["max"] == 20.0
    assert d["layer_median"] == {"a": 0.0, "b": pytest.approx(0.0505), "c": 20.0}


def test_threshold_distribution_of_nothing():
    d = threshold_distribution({})
    assert d["count"] == 0 and d["quantiles"]["50"] is None and sum(d["hist"]["counts"]) == 0


# -- the methods' thresholds hooks (LeNet-300-100) -------------------------------------------------------

@pytest.mark.parametrize("scale", ["individual", "layer", "global"])
def test_dynthresh_thresholds_are_t_max_sigmoid_s(scale):
    task = get_task("lenet300")
    pruner = DynamicThresholding(DynThreshHparams(scale=scale, t_max=2.0), task)
    model = pruner.attach(task.build_model(0))
    torch.manual_seed(1)
    with torch.no_grad():
        for s, _ in pruner.threshold_params:  # the (s, served) list the penalty uses
            s.copy_(torch.randn_like(s))
    hooked = pruner.thresholds(model)  # as the harness calls it
    assert hooked.keys() == {"fc1", "fc2", "fc3"}
    for name, module in prunable_layers(model):
        s = module.parametrizations.weight[0].s
        torch.testing.assert_close(hooked[name], 2.0 * torch.sigmoid(s.detach()))
        assert hooked[name].shape == (module.weight.shape if scale == "individual" else (1,))
    if scale == "global":
        assert len({float(t) for t in hooked.values()}) == 1
    assert threshold_distribution(hooked)["count"] == {"individual": 266_200, "layer": 3, "global": 3}[scale]


def test_dst_thresholds_are_its_per_unit_vectors():
    task = get_task("lenet300")
    pruner = DynamicSparseTraining(DSTHparams(), task)
    model = pruner.attach(task.build_model(0))
    with torch.no_grad():
        model.fc2.parametrizations.weight[0].threshold.copy_(torch.linspace(-0.05, 0.2, 100))
    t = pruner.thresholds(model)
    assert {k: tuple(v.shape) for k, v in t.items()} == {"fc1": (300,), "fc2": (100,), "fc3": (10,)}
    torch.testing.assert_close(t["fc2"], torch.linspace(-0.05, 0.2, 100))
    assert float(t["fc1"].abs().sum()) == 0.0  # they start at 0


def test_ltp_thresholds_are_the_square_root_of_tau():
    task = get_task("lenet300")
    pruner = LearnedThresholdPruning(LTPHparams(), task)
    model = pruner.attach(task.build_model(0))
    assert all(float(v) == 0.0 for v in pruner.thresholds(model).values())  # pretrain phase: tau = 0
    with torch.no_grad():
        for k, (_, module, threshold) in enumerate(pruner.layers):
            threshold.activate(module.parametrizations.weight.original, 1.0)
            threshold.s.fill_(2.0 + k)
    t = pruner.thresholds(model)
    for k, (name, _, threshold) in enumerate(pruner.layers):
        assert t[name].shape == (1,)
        assert float(t[name]) == pytest.approx(math.sqrt(threshold.unit * (2.0 + k)), rel=1e-6)
        w = model.get_submodule(name).parametrizations.weight.original.detach()
        kept = pruner.masks(model)[name]
        assert torch.equal(kept, w.abs() > t[name])  # the same cut on |w|


# -- fig5 / fig6 / fig7 ------------------------------------------------------------------------------------

@pytest.fixture()
def vgg_store(add_run, tmp_path, large_tasks):
    db = tmp_path / "vgg.sqlite"
    store = ResultStore(db)
    ids = {"dense": add_run(store, "vgg-cifar10", "dense", 0,
                            [point(s, 0.5 + s / 4000, 1.0, VGG_LAYERS, 1.0) for s in (390, 780, 1170)])}
    ids["dt0"] = add_run(store, "vgg-cifar10", "dynthresh", 0, [
        point(390, 0.4, 2.0, VGG_LAYERS, 0.5, distribution(0.01)),
        point(780, 0.6, 5.0, VGG_LAYERS, 0.2, distribution(0.02)),
        point(1170, 0.7, 10.0, VGG_LAYERS, 0.1, distribution(0.04))])
    ids["dt1"] = add_run(store, "vgg-cifar10", "dynthresh", 1, [
        point(390, 0.3, 2.0, VGG_LAYERS, 0.5, distribution(1.0))])
    ids["dst"] = add_run(store, "vgg-cifar10", "dst", 0, [
        point(390, 0.5, 3.0, VGG_LAYERS, 0.3, threshold_distribution({"fc1": torch.tensor([-0.1, 0.0, 0.05])}))])
    ids["mag"] = add_run(store, "vgg-cifar10", "magnitude", 0, [point(780, 0.6, 4.0, VGG_LAYERS, 0.25)])
    store.close()
    return db, ids


def test_fig5_bands_in_epochs_for_methods_with_thresholds(vgg_store):
    db, ids = vgg_store
    fig = fig5(db, "vgg-cifar10")
    found = gids(fig)
    assert {"median:dynthresh", "q25-75:dynthresh", "q5-95:dynthresh", "median:dst"} <= found
    assert not any("magnitude" in g or "dense" in g for g in found)
    median = line(fig, "median:dynthresh")
    epochs = np.array([390, 780, 1170]) * 128 / get_task("vgg-cifar10").train_size
    np.testing.assert_allclose(median.get_xdata(), epochs)
    expected = [distribution(x)["quantiles"]["50"] for x in (0.01, 0.02, 0.04)]  # seed 0, not seed 1
    np.testing.assert_allclose(median.get_ydata(), expected, rtol=1e-6)
    assert line(fig, "median:dst").get_ydata()[0] == pytest.approx(1e-4)  # median 0 drawn at the floor
    fig_seed1 = fig5(db, "vgg-cifar10", seed=1)
    np.testing.assert_allclose(line(fig_seed1, "median:dynthresh").get_ydata(), [distribution(1.0)["quantiles"]["50"]])


def test_fig6_remaining_weights_per_layer(vgg_store):
    db, _ = vgg_store
    fig = fig6(db, "vgg-cifar10")
    found = gids(fig)
    assert {f"layer:dynthresh:{name}" for name in VGG_LAYERS} <= found
    assert any(g.startswith("layer:magnitude:") for g in found) and not any(g.startswith("layer:dense") for g in found)
    fc2 = line(fig, "layer:dynthresh:fc2")  # the 15th of 15 layers: kept * 15/15
    np.testing.assert_allclose(fc2.get_ydata(), [50.0, 20.0, 10.0])


def test_fig7_top1_and_top5_where_stored(add_run, vgg_store, tmp_path, large_tasks):
    db, _ = vgg_store
    fig = fig7(db, "vgg-cifar10")
    assert "top1:dynthresh" in gids(fig) and not any(g.startswith("top5:") for g in gids(fig))
    np.testing.assert_allclose(line(fig, "top1:dynthresh").get_ydata(), [40.0, 60.0, 70.0])

    db2 = tmp_path / "alexnet.sqlite"
    store = ResultStore(db2)
    steps = (10_009, 20_018)
    add_run(store, "alexnet-imagenet", "dynthresh", 0,
            [point(s, 0.3 + s / 1e5, 3.0, ALEXNET_LAYERS, 0.3, top5=0.5 + s / 1e5) for s in steps])
    store.close()
    fig = fig7(db2, "alexnet-imagenet")
    np.testing.assert_allclose(line(fig, "top5:dynthresh").get_ydata(), [60.009, 70.018])
    np.testing.assert_allclose(line(fig, "top5:dynthresh").get_xdata(), np.array(steps) * 128 / 1_281_167)


def test_new_kinds_from_the_cli_and_clear_errors(add_run, vgg_store, tmp_path):
    db, _ = vgg_store
    out = tmp_path / "plots"
    assert "fig5|fig6|fig7" in CliRunner().invoke(main, ["plot", "--help"]).output
    result = CliRunner().invoke(main, ["plot", "--task", "vgg-cifar10", "--kind", "fig7", "--db", str(db),
                                       "--out", str(out)])  # fig5 and fig6 save the same way (slower)
    assert result.exit_code == 0, result.output
    assert (out / "vgg-cifar10-fig7.png").stat().st_size > 1000
    empty = tmp_path / "empty.sqlite"
    ResultStore(empty).close()
    result = CliRunner().invoke(main, ["plot", "--task", "vgg-cifar10", "--kind", "fig6", "--db", str(empty)])
    assert result.exit_code == 2 and "no runs of task 'vgg-cifar10'" in result.output
    only_dense = tmp_path / "dense.sqlite"
    store = ResultStore(only_dense)
    add_run(store, "vgg-cifar10", "magnitude", 0, [point(390, 0.5, 2.0, VGG_LAYERS, 0.5)])
    store.close()
    with pytest.raises(ValueError, match="threshold distributions"):
        fig5(only_dense, "vgg-cifar10")


# -- leaderboards ------------------------------------------------------------------------------------------

def test_leaderboard_top5_column_and_unverified_mark(add_run, tmp_path, large_tasks):
    db = tmp_path / "alexnet.sqlite"
    store = ResultStore(db)
    add_run(store, "alexnet-imagenet", "dense", 0, [point(100, 0.57, 1.0, ALEXNET_LAYERS, 1.0, top5=0.80)])
    add_run(store, "alexnet-imagenet", "dynthresh", 0, [point(100, 0.56, 11.0, ALEXNET_LAYERS, 0.1, top5=0.79)],
            final={"top5": 0.79})
    add_run(store, "alexnet-imagenet", "magnitude", 0, [point(100, 0.575, 20.0, ALEXNET_LAYERS, 0.05)],
            final={"top5": 0.805}, environment={"unverified_data": True})
    store.close()
    board = build_leaderboard(db, "alexnet-imagenet")
    rows = board.rows.set_index("method")
    assert rows.loc["dynthresh", "top5_mean"] == pytest.approx(79.0)
    assert rows.loc["dynthresh", "published_compression"] == 11.7
    assert rows.loc["dynthresh", "published_accuracy_loss"] == 0.82
    assert bool(rows.loc["magnitude", "unverified_data"]) and not bool(rows.loc["dynthresh", "unverified_data"])
    assert list(board.rows["method"])[-1] == "magnitude"  # ranked after every verified row despite 20x
    text = board.to_markdown("cmd")
    assert "top-5 %" in text and "79.00" in text
    assert "| magnitude † |" in text.replace(" (reconstruction)", "")
    assert UNVERIFIED_NOTE in text and UNVERIFIED_NOTE.startswith("† trained on data that failed checksum")
    assert UNVERIFIED_NOTE in board._caption()


def test_leaderboard_without_top5_and_an_unverified_dense_reference(add_run, vgg_store, tmp_path):
    db, _ = vgg_store
    board = build_leaderboard(db, "vgg-cifar10")
    assert not board.has_top5 and "top-5" not in board.to_markdown("cmd")
    assert not board.has_unverified
    db2 = tmp_path / "vgg2.sqlite"
    store = ResultStore(db2)
    add_run(store, "vgg-cifar10", "dense", 0, [point(390, 0.9, 1.0, VGG_LAYERS, 1.0)],
            environment={"unverified_data": True})
    add_run(store, "vgg-cifar10", "dynthresh", 0, [point(390, 0.91, 100.0, VGG_LAYERS, 0.01)])
    store.close()
    rows = build_leaderboard(db2, "vgg-cifar10").rows.set_index("method")
    assert bool(rows.loc["dynthresh", "unverified_data"])  # its loss is measured against unverified data
    assert rows.loc["dynthresh", "published_compression"] == 102.0
    assert rows.loc["dynthresh", "published_accuracy_loss"] == -1.2


# -- reproduce dt-paper: the large items --------------------------------------------------------------------

def test_plan_lists_the_cifar_and_imagenet_columns_and_figs_5_to_7():
    items = reproduce_module.plan(quick=False)
    large = {(i.purpose, i.task, i.method) for i in items if i.large}
    for task, methods in reproduce_module.LARGE_TABLE2.items():
        for method in methods:
            assert ("table2", task, method) in large
    assert {("fig5", "vgg-cifar10", "dynthresh"), ("fig6", "alexnet-imagenet", "dynthresh"),
            ("fig7", "alexnet-imagenet", "dynthresh")} <= large
    assert not any(i.large for i in reproduce_module.plan(quick=True))
    # the figures come from the same runs as the Table 2 DT rows
    by = {(i.purpose, i.task): i.run_id for i in items if i.large and i.method == "dynthresh"}
    assert by[("fig5", "vgg-cifar10")] == by[("table2", "vgg-cifar10")]
    assert by[("fig7", "alexnet-imagenet")] == by[("table2", "alexnet-imagenet")]


def test_large_item_identity_is_make_specs():
    from prunebench.request import make_spec

    item = reproduce_module.make_item("table2", "vgg-cifar10", "dense", 0)
    assert item.run_id == make_spec("vgg-cifar10", "dense", 0).run_id


def test_items_that_cannot_run_here_say_what_they_need(tmp_path, monkeypatch):
    items = reproduce_module.large_items()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    needs = reproduce_module.needs(items, tmp_path)  # an empty data dir: nothing verified
    assert set(needs) == {i.run_id for i in items}
    vgg_dt = next(i for i in items if i.task == "vgg-cifar10" and i.method == "dynthresh")
    short = needs[vgg_dt.run_id].short()
    assert short.startswith("needs the data; needs a GPU (about ") and short.endswith(" h estimated)")
    assert "CIFAR-10 is not verified" in needs[vgg_dt.run_id].long()
    assert "ASSUMED" in needs[vgg_dt.run_id].long()
    # data verified, still no GPU: a GPU only
    monkeypatch.setattr(reproduce_module, "data_blocker", lambda task, data_dir: None)
    assert needs_text(reproduce_module.needs(items, tmp_path)) == {"needs a GPU"}
    # data and a GPU: every item can run (nothing blocks it)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert reproduce_module.needs(items, tmp_path) == {}


def needs_text(needs: dict) -> set[str]:
    return {n.short().split(" (")[0] for n in needs.values()}


def test_blocked_items_are_not_trained_and_the_report_lists_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_training(*args, **kwargs):
        raise AssertionError("a blocked item must not train")

    monkeypatch.setattr(reproduce_module, "train_requests", no_training)
    items = reproduce_module.large_items()
    db = tmp_path / "runs.sqlite"
    store = ResultStore(db)
    started = []
    status = reproduce_module.execute(items, store, tmp_path, on_start=lambda item, skip: started.append(item))
    store.close()
    assert len(status) == len({i.run_id for i in items}) == len(started)
    assert all(s.startswith("blocked: needs the data; needs a GPU (about ") for s in status.values())
    text = reproduce_module.write_report(db, tmp_path / "report", items, False, "cmd", figures=False,
                                         data_dir=tmp_path).read_text()
    for task, methods in reproduce_module.LARGE_TABLE2.items():
        for method in methods:
            assert f"| {task} / {shown_name(method)} |" in text  # listed, never skipped silently
    assert text.count("needs the data; needs a GPU (about ") >= 2 * len(items) - 3
    for published in ("| 102x |", "| 65x |", "| 11.7x |", "| 9.1x |", "| 17.7x |", "| 10.3x |"):
        assert published in text, published
    assert "| alexnet-imagenet / srinivas (reconstruction) |" in text
    assert "ASSUMED" in text and "not a measurement" in text
    for fig in ("Fig. 5", "Fig. 6", "Fig. 7"):
        assert f"**{fig}**" in text


def test_gpu_hour_estimate_formula():
    est = estimate_module.estimate_gpu_hours("vgg-cifar10", "dynthresh")
    macs = estimate_module.dense_macs("vgg-cifar10")
    assert macs == count_flops(get_task("vgg-cifar10").architecture(), torch.zeros(3, 32, 32)).dense
    assert 0.30e9 < macs < 0.32e9
    assert est.epochs == 100 and est.overhead == 1.5
    rate = estimate_module.THROUGHPUT["vgg-cifar10"].flops_per_second
    assert est.hours == pytest.approx(6 * macs * 100 * 50_000 * 1.5 / rate / 3600)
    alexnet = estimate_module.estimate_gpu_hours("alexnet-imagenet", "dense")
    assert 0.71e9 < alexnet.macs_per_image < 0.73e9
    assert alexnet.loader_bound and alexnet.hours == pytest.approx(150 * 1_281_167 / 2_500 / 3600)
    assert "ASSUMED" in alexnet.describe()


# -- prunebench check --tasks ---------------------------------------------------------------------------------

def test_check_tasks_without_data_says_so_and_runs_nothing(tmp_path):
    result = CliRunner().invoke(main, ["check", "--tasks", "vgg-cifar10", "--data-dir", str(tmp_path),
                                       "--baseline", str(tmp_path / "none.toml")])
    assert result.exit_code == check_module.EXIT_DATA_MISSING == 3
    assert "CIFAR-10 is not verified" in result.output and "nothing was run" in result.output
    assert "Traceback" not in result.output


def test_check_configs_default_suite_unchanged_and_extra_tasks_short():
    assert [(c.task, c.iterations, c.eval_every) for c in default_configs(["dense"])] == [
        (t, i, e) for t, i, e in check_module.SUITE]
    assert [(c.task, c.iterations) for c in default_configs(["dense"], ["vgg-cifar10", "xor"])] == [
        ("vgg-cifar10", check_module.EXTRA_TASK_ITERATIONS), ("xor", check_module.SUITE[0][1])]
    assert check_module.SUITE[0][:2] == ("xor", 5_000)


def test_check_a_task_without_baseline_rows_is_a_note_and_its_rows_keep_their_machine():
    def measured(task: str, iterations: int) -> Measurement:
        return Measurement(CheckConfig(task, "dense", iterations, iterations), "finished", run_id="r", accuracy=0.5,
                           compression=1.0, weights_nonzero=10, weights_total=10, train_seconds=1.0,
                           steps_per_second=10.0)

    base = updated_baseline(None, [measured("xor", 600)], "cpu")
    meta = dict(base.meta)
    report = compare([measured("vgg-cifar10", 20)], base, machine="here")
    assert report.ok and [r.verdict for r in report.rows] == ["note"]
    assert "no baseline for this task" in report.rows[0].message and "--update" in report.rows[0].message
    new = updated_baseline(base, [measured("vgg-cifar10", 20)], "cpu")
    assert new.meta == meta  # the suite's [meta] is left alone
    assert new.configs["vgg-cifar10/dense"]["machine"] == check_module.machine_id("cpu")
    # stale-row notes only for the measured tasks
    assert all(r.config.startswith("vgg-cifar10/") for r in compare([measured("vgg-cifar10", 20)], new,
                                                                      all_keys=True).rows)
