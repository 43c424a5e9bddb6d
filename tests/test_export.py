"""`prunebench run --save-model` and `prunebench export`: each format loads outside prunebench and gives the
stored accuracy with the stored zeros; a run without a kept model is rerun to the same file; the compressed
file's bytes follow its formula; errors are one line."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from prunebench.cli import main
from prunebench.data import load_mnist, make_xor
from prunebench.deploy import load_saved, model_path, models_dir, rebuild
from prunebench.models import LeNet5, LeNet300, XorNet
from prunebench.report import deployment
from prunebench.report import export as exporting
from prunebench.sparse import (
    CSRConv2d,
    CSRLinear,
    layer_bytes,
    load_safetensors,
    read_compressed,
    safetensors_data_bytes,
    write_compressed,
    write_dense,
)
from prunebench.store import ResultStore

SHORT = ["--iterations", "300", "--eval-every", "300", "--seed", "0"]


def _run(db, data_dir, *args: str) -> dict:
    result = CliRunner().invoke(main, ["run", *args, *SHORT, "--db", str(db), "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _export(db, data_dir, run_id: str, fmt: str, out, *extra: str):
    return CliRunner().invoke(main, ["export", run_id, "--format", fmt, "--out", str(out), "--db", str(db),
                                     "--data-dir", str(data_dir), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir):
    """A magnitude run on LeNet-300-100 (about 13x after 300 steps) and an autoprune run on XOR, both with
    --save-model, in one store."""
    folder = tmp_path_factory.mktemp("export")
    db = folder / "runs.sqlite"
    magnitude = _run(db, mnist_dir, "--method", "magnitude", "--task", "lenet300", "--save-model")
    autoprune = _run(db, mnist_dir, "--method", "autoprune", "--task", "xor", "--save-model")
    return {"db": db, "folder": folder, "magnitude": magnitude, "autoprune": autoprune}


@pytest.fixture(scope="module")
def mnist_test(mnist_dir):
    data = load_mnist(mnist_dir)
    return data.x_test, data.y_test


def _correct(forward, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> int:
    with torch.no_grad():
        return sum(int((forward(x[i:i + batch]).argmax(dim=1) == y[i:i + batch]).sum())
                   for i in range(0, x.shape[0], batch))


def _weights_nonzero(tensors) -> int:
    return sum(int(torch.count_nonzero(t)) for t in tensors if t.dim() >= 2)


@pytest.mark.slow
def test_save_model_keeps_the_deployed_network_beside_the_store(runs):
    run = runs["magnitude"]
    path = model_path(models_dir(runs["db"]), run["run_id"])
    assert path == runs["folder"] / "runs.models" / f"{run['run_id']}.pt"
    saved = load_saved(path)
    assert (saved.run_id, saved.task, saved.method, saved.origin) == (run["run_id"], "lenet300", "magnitude", "run")
    assert saved.architecture == "prunebench.models.LeNet300"
    assert _weights_nonzero(saved.state_dict.values()) == run["nonzero"]
    assert saved.final["accuracy"] == run["accuracy"] and saved.final["weights_nonzero"] == run["nonzero"]
    # plain torch reads it without unpickling code
    blob = torch.load(path, weights_only=True)
    assert blob["shapes"]["fc1.weight"] == [300, 784]


@pytest.mark.slow
def test_pt_export_runs_in_plain_torch_at_any_batch_with_the_stored_accuracy(runs, mnist_dir, mnist_test, tmp_path):
    run = runs["magnitude"]
    out = tmp_path / "net.pt"
    result = _export(runs["db"], mnist_dir, run["run_id"], "pt", out)
    assert result.exit_code == 0, result.output
    assert "running it again" not in result.output  # the kept model was used
    program = torch.export.load(str(out))  # plain torch
    net = program.module()
    x, y = mnist_test
    assert _correct(net, x, y) == round(run["accuracy"] * 10_000)
    assert _weights_nonzero(program.state_dict.values()) == run["nonzero"]
    for batch in (1, 100):
        assert net(x[:batch]).shape == (batch, 10)
    reference = rebuild(LeNet300, load_saved(model_path(models_dir(runs["db"]), run["run_id"])).state_dict)
    with torch.no_grad():
        assert torch.equal(net(x[:100]), reference(x[:100]))
    # a process in which prunebench cannot be imported loads and runs it
    script = ("import sys; sys.modules['prunebench'] = None; import torch; "
              f"print(torch.export.load({str(out)!r}).module()(torch.zeros(3, 1, 28, 28)).shape)")
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "torch.Size([3, 10])"


@pytest.mark.slow
def test_safetensors_export_loads_into_the_task_architecture(runs, mnist_dir, mnist_test, tmp_path):
    run = runs["magnitude"]
    out = tmp_path / "net.safetensors"
    result = _export(runs["db"], mnist_dir, run["run_id"], "safetensors", out)
    assert result.exit_code == 0, result.output
    state = load_file(str(out))
    net = LeNet300().eval()
    net.load_state_dict(state)
    x, y = mnist_test
    assert _correct(net, x, y) == round(run["accuracy"] * 10_000)
    assert _weights_nonzero(state.values()) == run["nonzero"]
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert (meta["prunebench_run_id"], meta["task"], meta["method"]) == (run["run_id"], "lenet300", "magnitude")
    assert json.loads(meta["shapes"])["fc2.weight"] == [100, 300]


@pytest.mark.slow
def test_compressed_safetensors_export_round_trips_to_a_plain_module(runs, mnist_dir, mnist_test, tmp_path):
    """`--format safetensors --compressed` writes the compressed file the table measures (issue 32): each
    layer in the layout the table names, the same tensor bytes as the measured file, and
    `load_safetensors` gives back a plain module with the deployed network's outputs and non-zeros."""
    run = runs["magnitude"]
    dense_out, out = tmp_path / "dense.safetensors", tmp_path / "net.safetensors"
    assert _export(runs["db"], mnist_dir, run["run_id"], "safetensors", dense_out).exit_code == 0
    result = _export(runs["db"], mnist_dir, run["run_id"], "safetensors", out, "--compressed")
    assert result.exit_code == 0, result.output
    deployed = rebuild(LeNet300, load_saved(model_path(models_dir(runs["db"]), run["run_id"])).state_dict)
    measured = tmp_path / "measured.safetensors"
    size, layouts = write_compressed(deployed, measured)
    shown = " ".join(result.output.replace("│", " ").split())
    assert f"({out.stat().st_size:,} bytes)" in shown
    assert "exported weights' storage " + ", ".join(f"{name} {layout}" for name, layout in layouts.items()) in shown
    assert set(layouts.values()) - {"dense"}  # at ~13x the layers are stored sparse
    # the measured file plus the run's metadata: the same tensors, a longer header
    assert safetensors_data_bytes(out)[1] == safetensors_data_bytes(measured)[1]
    assert size < out.stat().st_size < size + 2_000 < dense_out.stat().st_size / 5
    net = load_safetensors(out)
    assert type(net) is LeNet300 and not net.training
    x, y = mnist_test
    with torch.no_grad():
        assert torch.equal(net(x[:500]), deployed(x[:500]))
    assert _correct(net, x, y) == round(run["accuracy"] * 10_000)
    assert _weights_nonzero(net.state_dict().values()) == run["nonzero"]
    assert isinstance(load_safetensors(dense_out), LeNet300)  # the same call loads the dense file
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["prunebench_run_id"] == run["run_id"]
    assert {k: json.loads(v)["layout"] for k, v in meta.items() if k.endswith(".weight")} == {
        f"{name}.weight": layout for name, layout in layouts.items()}
    wrong = _export(runs["db"], mnist_dir, run["run_id"], "onnx", tmp_path / "x.onnx", "--compressed")
    assert wrong.exit_code == 2 and "--compressed applies to --format safetensors, not onnx" in wrong.output


@pytest.mark.slow
def test_autoprune_compressed_export_loads_its_smaller_network(runs, mnist_dir, tmp_path):
    run = runs["autoprune"]
    out = tmp_path / "xor.safetensors"
    result = _export(runs["db"], mnist_dir, run["run_id"], "safetensors", out, "--compressed")
    assert result.exit_code == 0, result.output
    net = load_safetensors(out)
    saved = load_saved(model_path(models_dir(runs["db"]), run["run_id"]))
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        k: tuple(v.shape) for k, v in saved.state_dict.items()}
    x = torch.randn(16, 2)
    with torch.no_grad():
        assert torch.equal(net(x), rebuild(XorNet, saved.state_dict)(x))


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime(runs, mnist_dir, mnist_test, tmp_path):
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    run = runs["magnitude"]
    out = tmp_path / "net.onnx"
    result = _export(runs["db"], mnist_dir, run["run_id"], "onnx", out)
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, y = mnist_test
    logits = torch.cat([torch.from_numpy(session.run(None, {"input": x[i:i + 2000].numpy()})[0])
                        for i in range(0, 10_000, 2000)])
    reference = rebuild(LeNet300, load_saved(model_path(models_dir(runs["db"]), run["run_id"])).state_dict)
    with torch.no_grad():
        expected = reference(x)
    # ONNX Runtime's GEMM sums in another order than torch's: logits agree to float rounding, and a prediction
    # may differ only where torch's top two logits are closer than that rounding.
    tolerance = 1e-4
    assert torch.allclose(logits, expected, atol=tolerance, rtol=0)
    top2 = expected.topk(2, dim=1).values
    ambiguous = int((top2[:, 0] - top2[:, 1] < 2 * tolerance).sum())
    onnx_correct = int((logits.argmax(dim=1) == y).sum())
    assert abs(onnx_correct - round(run["accuracy"] * 10_000)) <= ambiguous
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer]
    assert sum(int(np.count_nonzero(w)) for w in weights if w.ndim >= 2) == run["nonzero"]
    assert session.run(None, {"input": x[:1].numpy()})[0].shape == (1, 10)


@pytest.mark.slow
def test_autoprune_exports_its_physically_smaller_network(runs, tmp_path):
    run = runs["autoprune"]
    data = make_xor()
    for fmt in ("safetensors", "pt"):
        out = tmp_path / f"xor.{fmt}"
        result = _export(runs["db"], tmp_path, run["run_id"], fmt, out)
        assert result.exit_code == 0, result.output
        if fmt == "safetensors":
            state = load_file(str(out))
            assert state["fc1.weight"].shape[0] < 5 and state["fc2.weight"].shape[1] == state["fc1.weight"].shape[0]
            net = rebuild(XorNet, state)
        else:
            net = torch.export.load(str(out)).module()
            assert net(data.x_test[:1]).shape == (1, 1)
        with torch.no_grad():
            correct = int(((net(data.x_test) > 0).float() == data.y_test).sum())
        assert correct == round(run["accuracy"] * data.y_test.shape[0])


@pytest.mark.slow
def test_export_without_a_kept_model_reruns_to_the_same_file(runs, mnist_dir, tmp_path):
    run = runs["magnitude"]
    kept = tmp_path / "kept.safetensors"
    assert _export(runs["db"], mnist_dir, run["run_id"], "safetensors", kept).exit_code == 0
    store = ResultStore(runs["db"])
    before = (store.run_row(run["run_id"]), store.final_row(run["run_id"]), store.trajectory(run["run_id"]))
    store.close()
    empty = tmp_path / "models"
    again = tmp_path / "rerun.safetensors"
    result = _export(runs["db"], mnist_dir, run["run_id"], "safetensors", again, "--models-dir", str(empty))
    assert result.exit_code == 0, result.output
    assert "running it again from its stored identity" in result.output
    assert "equal to the stored run" in " ".join(result.output.split())
    # the same tensors and metadata (safetensors writes its header's metadata in no fixed order)
    with safe_open(str(kept), framework="pt") as a, safe_open(str(again), framework="pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118
    saved = load_saved(model_path(empty, run["run_id"]))
    assert saved.origin == "rerun" and saved.final["accuracy"] == run["accuracy"]
    assert saved.environment["device"].startswith("cpu") and saved.environment["torch"] == torch.__version__
    store = ResultStore(runs["db"])
    assert (store.run_row(run["run_id"]), store.final_row(run["run_id"]), store.trajectory(run["run_id"])) == before
    store.close()


@pytest.mark.slow
def test_compressed_file_bytes_follow_the_formula(runs):
    run = runs["magnitude"]
    net = rebuild(LeNet300, load_saved(model_path(models_dir(runs["db"]), run["run_id"])).state_dict)
    folder = runs["folder"] / "files"
    folder.mkdir(exist_ok=True)
    dense = write_dense(net, folder / "dense.safetensors")
    size, layouts = write_compressed(net, folder / "compressed.safetensors")
    header, data = safetensors_data_bytes(folder / "compressed.safetensors")
    assert size == header + data
    expected = 0
    for name, module in net.named_children():
        nonzero = int(torch.count_nonzero(module.weight))
        expected += layer_bytes(tuple(module.weight.shape), nonzero)[layouts[name]] + 4 * module.bias.numel()
        # fc1: 235,200 weights at ~7.6% density: bitmask 29,400 + 4 per non-zero is below CSR's 6 per non-zero
        assert layouts[name] == min(layer_bytes(tuple(module.weight.shape), nonzero).items(), key=lambda kv: kv[1])[0]
    assert data == expected
    assert dense == safetensors_data_bytes(folder / "dense.safetensors")[0] + 4 * 266_610
    # dense / compressed bytes: below the compression (indices cost bytes), above half of it
    assert run["compression"] / 2 < dense / size < run["compression"]
    decoded = read_compressed(folder / "compressed.safetensors")
    assert all(torch.equal(decoded[k], v) for k, v in net.state_dict().items())


def test_layer_bytes_per_layout():
    # 3 x 300 with 10 non-zeros: dense 3,600; bitmask 113 + 40; CSR uint16 indices (300 > 256), uint8 pointers
    assert layer_bytes((3, 300), 10) == {"dense": 3600, "bitmask": 153, "csr": 20 + 4 + 40}
    # a conv 50 x 20 x 5 x 5 viewed as 50 x 500 with 1,000 non-zeros: uint16 indices, uint16 row pointers
    assert layer_bytes((50, 20, 5, 5), 1000)["csr"] == 2000 + 2 * 51 + 4000
    assert layer_bytes((2, 2), 4)["bitmask"] == 1 + 16


def test_csr_layers_compute_what_the_dense_ones_do():
    torch.manual_seed(0)
    net = LeNet5().eval()
    with torch.no_grad():
        for module in (net.conv2, net.fc1):
            module.weight.mul_(torch.rand_like(module.weight) < 0.1)
    x = torch.rand(3, 1, 28, 28)
    features = torch.max_pool2d(torch.relu(net.conv1(x)), 2)
    with torch.no_grad():
        assert torch.allclose(CSRConv2d(net.conv2)(features), net.conv2(features), atol=1e-5)
        flat = torch.rand(3, 800)
        assert torch.allclose(CSRLinear(net.fc1)(flat), net.fc1(flat), atol=1e-5)
    with pytest.raises(ValueError, match="ungrouped"):
        CSRConv2d(nn.Conv2d(4, 4, 3, groups=2))


@pytest.mark.slow
def test_deployment_table_row(runs, mnist_dir, monkeypatch, tmp_path):
    run = runs["magnitude"]
    monkeypatch.setattr(deployment, "pick_runs", lambda db, task: [
        {"method": "magnitude", "run_id": run["run_id"], "accuracy": run["accuracy"],
         "compression": run["compression"]},
        {"method": "dense", "run_id": "0123456789abcdef", "accuracy": 0.98, "compression": 1.0}])
    out, rows = deployment.write_deployment_table("lenet300", runs["db"], tmp_path / "d.md", mnist_dir, "CMD",
                                                  rerun=False, log=lambda _: None)
    text = out.read_text()
    assert rows[0].result is not None and rows[1].result is None and "not kept" in rows[1].note
    cost = rows[0].result.cost
    assert f"| magnitude | `{run['run_id']}` | {100 * run['accuracy']:.2f} | {run['compression']:.1f}x |" in text
    assert f"{cost.dense_bytes:,} | {cost.compressed_bytes:,}" in text
    assert "kept by its run = stored; file =" in text
    assert f"{run['compression']:.1f}x" in text and "```\nCMD\n```" in text
    assert set(cost.latency) == {1, 100} and all(v > 0 for pair in cost.latency.values() for v in pair)
    # the theoretical FLOPs reduction of an unstructured LeNet-300-100 is its compression
    assert math.isclose(exporting.flops_reductions(rows[0].result)[1], run["compression"])


@pytest.mark.slow
def test_export_errors_are_one_line(runs, mnist_dir, tmp_path, monkeypatch):
    def error_of(*args: str) -> str:
        result = CliRunner().invoke(main, ["export", *args, "--data-dir", str(mnist_dir)])
        assert result.exit_code != 0 and (result.exception is None or isinstance(result.exception, SystemExit))
        assert "Traceback" not in result.output
        return result.output.strip()

    db = str(runs["db"])
    assert error_of("0000000000000000", "--out", str(tmp_path / "x.pt"), "--db", db) == (
        f"error: no run 0000000000000000 in {db}")
    assert error_of("0000000000000000", "--out", "x.pt", "--db", str(tmp_path / "none.sqlite")) == (
        f"error: no result store at {tmp_path / 'none.sqlite'}")
    assert "give RUN_ID and --out FILE" in error_of(runs["magnitude"]["run_id"], "--db", db)
    # an unfinished run
    unfinished = tmp_path / "unfinished.sqlite"
    store = ResultStore(unfinished)
    store.start_run("feedfacefeedface", task="lenet300", method="magnitude", seed=0, budget="equal", identity={},
                    hparams={}, protocol={}, environment={})
    store.mark("feedfacefeedface", "interrupted")
    store.close()
    assert error_of("feedfacefeedface", "--out", "x.pt", "--db", str(unfinished)) == (
        "error: run feedfacefeedface is interrupted, not finished: it has no deployed network to export")
    # without the export extra
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    message = error_of(runs["magnitude"]["run_id"], "--out", "x.pt", "--db", db)
    assert message == "error: prunebench export needs onnxscript (the 'export' extra): pip install 'prunebench[export]'"
    assert len(message.splitlines()) == 1

