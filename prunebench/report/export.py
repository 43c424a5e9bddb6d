"""`prunebench export`: a finished run's deployed network as a file others load, and what its compression buys.

The network is the one the harness measured (`Pruner.deployed`: pruned weights exactly zero; autoprune's
physically smaller network), as `prunebench run --save-model` kept it beside the store
(`prunebench.deploy`). Formats, each with a dynamic batch dimension and the evaluation input of the task
(MNIST: floats in [0, 1], shape [N, 1, 28, 28]):

- pt: a `torch.export` ExportedProgram (`torch.export.save`); plain torch loads and runs it without
  prunebench: `torch.export.load(FILE).module()(x)`. Run details in its extra file "prunebench.json".
- safetensors: the deployed state dict; the header's metadata holds run_id, task, method, seed, the
  architecture's class and every tensor's shape (`prunebench.deploy.rebuild` builds the network from
  them; for an unstructured method the task architecture itself loads it). With `compressed` (`--compressed`)
  each Linear / Conv2d weight is stored in the smallest of the layouts dense, bitmask or csr
  (`prunebench.sparse`: the compressed file the deployment cost measures, plus the run's metadata), and
  the metadata says which layout each layer got. `prunebench.sparse.load_safetensors(FILE)` loads either file
  back as a plain `nn.Module`.
- onnx: `torch.onnx.export` (the dynamo exporter), one input "input", one output "output"; onnxruntime
  runs it. Run details in the model's metadata_props.

Every exported file is loaded back and evaluated on the task's test set on the CPU; its correct count
and non-zero weights are printed beside the stored ones.

A run whose model was not kept is run again from its stored identity (`RunRequest.from_row`: the stored task,
method, seed, budget, hyperparameters and protocol, checked to resolve to the same run_id) into a
`RecordingStore` with a temporary checkpoint directory, so the stored row is never touched; the rerun's
model is kept in the models directory, and its accuracy and compression are compared with the stored
ones (on the same machine, code and thread count they are equal, see `leaderboards/regression.toml`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunebench.deploy import (
    SavedModel,
    load_saved,
    model_path,
    models_dir,
    rebuild,
    save_deployed,
)
from prunebench.errors import DiskFullError, room_for
from prunebench.harness import TrainOptions
from prunebench.metrics import Flops, count_flops
from prunebench.observers import Observer
from prunebench.pruner import prunable_layers
from prunebench.records import RecordingStore
from prunebench.registry import get_task
from prunebench.request import RunRequest, RunSpec
from prunebench.running.runner import train_requests
from prunebench.sparse import DeploymentCost, deployment_cost, load_safetensors, read_compressed, write_compressed
from prunebench.store import read_only
from prunebench.tasks import Task

FORMATS = ("pt", "safetensors", "onnx")
#: The modules of the `export` extra (pyproject.toml).
EXTRA_MODULES = ("safetensors", "onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = "pip install 'prunebench[export]'"
#: What the rerun must reproduce of the stored final row.
REPRODUCED = ("accuracy", "compression", "weights_nonzero")
#: Evaluation inputs kept for the latency measurement (batch sizes up to this many).
LATENCY_INPUTS = 100


class ExportError(Exception):
    """A run that cannot be exported (unknown, unfinished, missing store or extra): a one-line message."""


def require_export_extra() -> None:
    """Raise ExportError naming the install command when a module of the `export` extra is missing."""
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"prunebench export needs {', '.join(missing)} (the 'export' extra): {INSTALL_HINT}")


def read_stored_run(db: Path, run_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(runs row, final row or None) of `run_id`, read without writing to the store."""
    db = Path(db)
    if not db.exists():
        raise ExportError(f"no result store at {db}")
    try:
        with read_only(db) as conn:
            run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            final = conn.execute("SELECT * FROM final WHERE run_id = ?", (run_id,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise ExportError(f"{db} is not a prunebench result store ({exc})") from None
    if run is None:
        raise ExportError(f"no run {run_id} in {db}")
    return dict(run), dict(final) if final is not None else None


def finished_run(db: Path, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored row and final row of a finished run; ExportError otherwise."""
    run, final = read_stored_run(db, run_id)
    if run["status"] != "finished" or final is None:
        raise ExportError(f"run {run_id} is {run['status']}, not finished: it has no deployed network to export")
    return run, final


def request_from_row(run: dict[str, Any]) -> RunRequest:
    """`RunRequest.from_row`, its refusal as an ExportError."""
    try:
        return RunRequest.from_row(run)
    except ValueError as exc:
        raise ExportError(str(exc)) from None


@dataclass
class RunModel:
    """A finished run's deployed network, from the models directory or from a rerun."""

    run: dict[str, Any]                 #: the stored runs row
    final: dict[str, Any]               #: the stored final row
    saved: SavedModel
    path: Path                          #: the kept model file
    rerun_now: bool = False             #: made again by this call

    @property
    def task(self) -> Task:
        return get_task(self.run["task"])

    def network(self) -> nn.Module:
        return rebuild(self.task.architecture, self.saved.state_dict)

    @property
    def rerun(self) -> dict[str, Any] | None:
        """The rerun's accuracy, compression and non-zero weights when the model was made again from the
        stored identity (now or by an earlier export), else None."""
        return self.saved.final if self.saved.origin == "rerun" else None

    @property
    def reproduced(self) -> bool:
        """Whether the network's own run (the rerun, or the run that kept it) has the stored accuracy,
        compression and non-zero weights."""
        return all(self.saved.final.get(k) == self.final.get(k) for k in REPRODUCED)


def ensure_model(run_id: str, db: Path, data_dir: Path, models: Path | None = None, device: str | None = None,
                 observer: Observer | None = None) -> RunModel:
    """The deployed network of finished run `run_id` of store `db`: read from `models` (default: beside the
    store, `deploy.models_dir`), else made by running the run again (module docstring) and kept there."""
    run, final = finished_run(db, run_id)
    directory = Path(models) if models is not None else models_dir(Path(db))
    path = model_path(directory, run_id)
    if path.exists():
        saved = load_saved(path)
        if saved.run_id != run_id:
            raise ExportError(f"{path} holds run {saved.run_id}, not {run_id}")
        return RunModel(run, final, saved, path)
    request = request_from_row(run)
    spec = request.resolve()
    store = RecordingStore()
    with tempfile.TemporaryDirectory(prefix="prunebench-rerun-") as checkpoints:
        options = TrainOptions(device=device, checkpoints=Path(checkpoints), checkpoint_seconds=None, save_model=path)
        (result,) = train_requests([request], store, data_dir, options, specs={run_id: spec},
                                   observer_for=lambda _: observer)
    if result.status != "finished":
        raise ExportError(f"the rerun of {run_id} {result.status}: {result.error}")
    saved = load_saved(path)
    save_deployed(path, rebuild(spec.task.architecture, saved.state_dict), run_id=run_id, task=saved.task,
                  method=saved.method, seed=saved.seed, architecture=spec.task.architecture, final=saved.final,
                  origin="rerun", environment=json.loads(store.run_row(run_id)["environment"]))
    return RunModel(run, final, load_saved(path), path, rerun_now=True)


# -- the formats ---------------------------------------------------------------------------------------------

def file_metadata(model: RunModel) -> dict[str, str]:
    """What an exported file says about itself (strings, for safetensors and ONNX metadata): the accuracy,
    compression and non-zero weights are its network's (the stored run's, or the rerun's where it differs)."""
    saved = model.saved
    return {"prunebench_run_id": saved.run_id, "task": saved.task, "method": saved.method, "seed": str(saved.seed),
            "architecture": saved.architecture, "shapes": json.dumps(saved.shapes),
            "accuracy": repr(saved.final["accuracy"]), "compression": repr(saved.final["compression"]),
            "weights_nonzero": str(saved.final["weights_nonzero"]), "reproduces_stored_run": str(model.reproduced),
            "rebuild": "prunebench.deploy.rebuild(prunebench.registry.get_task(task).architecture, state_dict); "
                       "the task architecture when no layer's shape differs from it"}


def _dynamic_batch(example: torch.Tensor) -> tuple[tuple[torch.Tensor], tuple[dict[int, Any]]]:
    """Example arguments (batch 2: torch.export specialises sizes 0 and 1) and their dynamic batch dimension."""
    batch = example.unsqueeze(0).repeat(2, *([1] * example.dim()))
    return (batch,), ({0: torch.export.Dim("batch", min=1)},)


def write_export(net: nn.Module, fmt: str, out: Path, example: torch.Tensor, metadata: dict[str, str],
                 compressed: bool = False) -> dict[str, str]:
    """Write deployed `net` to `out` in `fmt` (module docstring); `example`: one input, no batch dimension.
    Returns the storage of each prunable layer's weight ('dense' everywhere unless `compressed`, safetensors
    only). A write that finds no room removes the partial file and raises `DiskFullError`."""
    out = Path(out)
    if compressed and fmt != "safetensors":
        raise ExportError(f"--compressed applies to --format safetensors, not {fmt}")
    net = net.to("cpu").eval()
    try:
        with room_for(out, f"the {fmt} export"):
            out.parent.mkdir(parents=True, exist_ok=True)
            return _write(net, fmt, out, example, metadata, compressed)
    except DiskFullError:
        out.unlink(missing_ok=True)
        raise


def _write(net: nn.Module, fmt: str, out: Path, example: torch.Tensor, metadata: dict[str, str],
           compressed: bool) -> dict[str, str]:
    layouts = {name: "dense" for name, _ in prunable_layers(net)}
    if fmt == "safetensors" and compressed:
        _size, layouts = write_compressed(net, out, metadata)
        return layouts
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: t.contiguous() for k, t in net.state_dict().items()}, str(out), metadata=metadata)
        return layouts
    args, dynamic = _dynamic_batch(example.to("cpu"))
    if fmt == "pt":
        program = torch.export.export(net, args, dynamic_shapes=dynamic)
        buffer = io.BytesIO()  # through a buffer: torch.export.save warns about a path not ending in .pt2
        torch.export.save(program, buffer, extra_files={"prunebench.json": json.dumps(metadata)})
        out.write_bytes(buffer.getvalue())
        return layouts
    if fmt == "onnx":
        import onnx

        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            torch.onnx.export(net, args, str(out), dynamo=True, input_names=["input"], output_names=["output"],
                              dynamic_shapes=dynamic, external_data=False, verbose=False)
        proto = onnx.load(str(out))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(out))
        return layouts
    raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def load_program(path: Path) -> torch.export.ExportedProgram:
    """`torch.export.load` of a pt export (through a buffer: it warns about a path not ending in .pt2)."""
    return torch.export.load(io.BytesIO(Path(path).read_bytes()))


def load_export(path: Path, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported network as a function of a CPU batch, loaded as a user without prunebench would (pt:
    torch.export.load; onnx: onnxruntime), safetensors through `deploy.rebuild`."""
    if fmt == "pt":
        return load_program(path).module()
    if fmt == "safetensors":
        try:
            return load_safetensors(path)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def export_weights_nonzero(path: Path, fmt: str) -> int:
    """Non-zero entries of the exported file's weight tensors (2-D and more: Linear and Conv2d weights)."""
    if fmt == "pt":
        tensors = list(load_program(path).state_dict.values())
    elif fmt == "safetensors":
        tensors = list(read_compressed(path).values())
    elif fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        tensors = [torch.from_numpy(numpy_helper.to_array(t).copy())
                   for t in onnx.load(str(path)).graph.initializer]
    else:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return sum(int(torch.count_nonzero(t)) for t in tensors if t.dim() >= 2 and t.is_floating_point())


def evaluation_batches(task: Task, data_dir: Path) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The task's evaluation batches on the CPU, as the harness evaluates (inputs normalised as it does)."""
    source = task.make_source(Path(data_dir), task.protocol.batch_size, 0, torch.device("cpu"))
    return source.eval_batches()


@torch.no_grad()
def count_correct(forward: Callable[[torch.Tensor], torch.Tensor], task: Task, data_dir: Path) -> tuple[int, int]:
    """(correct predictions, examples) of `forward` on the task's test set."""
    correct = total = 0
    for x, y in evaluation_batches(task, data_dir):
        correct += int(task.correct(forward(x), y))
        total += y.shape[0]
    return correct, total


def latency_inputs(task: Task, data_dir: Path, count: int = LATENCY_INPUTS) -> torch.Tensor:
    """The first `count` evaluation inputs (the latency measurement's batches)."""
    return next(iter(evaluation_batches(task, data_dir)))[0][:count]


@dataclass
class ExportResult:
    model: RunModel
    fmt: str
    out: Path
    correct: int                 #: correct test predictions of the exported file, loaded back
    total: int
    nonzero: int                 #: non-zero weights in the exported file
    cost: DeploymentCost
    flops: Flops                 #: MACs per example of the deployed network (as built, non-zero weights)
    flops_reference: int         #: MACs per example of the task architecture
    layouts: dict[str, str] = field(default_factory=dict)  #: storage of each layer in the file
    compressed: bool = False     #: the file is the compressed safetensors file

    @property
    def file_bytes(self) -> int:
        return self.out.stat().st_size

    @property
    def expected_correct(self) -> int:
        """Correct test predictions of the network's own run (the stored run, or the rerun that made it)."""
        return round(self.model.saved.final["accuracy"] * self.total)

    @property
    def faithful(self) -> bool:
        """The file gives its network's own accuracy and holds its non-zero weights."""
        return self.correct == self.expected_correct and self.nonzero == self.model.saved.final["weights_nonzero"]


def export_run(run_id: str, db: Path, fmt: str, out: Path, data_dir: Path, models: Path | None = None,
               device: str | None = None, observer: Observer | None = None, cost_dir: Path | None = None,
               before_rerun: Callable[[RunSpec], None] | None = None, compressed: bool = False) -> ExportResult:
    """Export run `run_id` (rerunning it when its model was not kept), load the file back, count its correct
    test predictions and non-zero weights, and measure what compression buys (`sparse.deployment_cost`; its
    dense and compressed files go to `cost_dir` when given). `before_rerun(spec)` is called before a rerun.
    `compressed`: safetensors only, each layer in its smallest layout (module docstring)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if compressed and fmt != "safetensors":
        raise ExportError(f"--compressed applies to --format safetensors, not {fmt}")
    require_export_extra()
    run, _ = finished_run(db, run_id)
    directory = Path(models) if models is not None else models_dir(Path(db))
    if before_rerun is not None and not model_path(directory, run_id).exists():
        before_rerun(request_from_row(run).resolve())
    model = ensure_model(run_id, db, data_dir, directory, device=device, observer=observer)
    task = model.task
    inputs = latency_inputs(task, data_dir)
    net = model.network()
    layouts = write_export(net, fmt, out, inputs[0], file_metadata(model), compressed)
    correct, total = count_correct(load_export(out, fmt), task, data_dir)
    with room_for(cost_dir or tempfile.gettempdir(), "the files the deployment cost measures"):
        cost = deployment_cost(net, task.architecture, inputs, cost_dir)
    flops = count_flops(net, inputs[0])
    reference = count_flops(task.architecture(), inputs[0]).dense
    return ExportResult(model, fmt, Path(out), correct, total, export_weights_nonzero(out, fmt), cost, flops,
                        reference, layouts, compressed)


# -- what compression buys, as rows of a table ---------------------------------------------------------------

def flops_reductions(result: ExportResult) -> tuple[float, float]:
    """(MACs of the task architecture / MACs of the deployed network as built, / MACs of its non-zero weights):
    the theoretical FLOPs reductions (dense kernels of its shapes; ideal sparse kernels), as the store's
    `flops_reference / flops` and `flops_reference / flops_nonzero`."""
    return (result.flops_reference / max(result.flops.dense, 1), result.flops_reference / max(result.flops.nonzero, 1))


def cost_rows(result: ExportResult) -> list[tuple[str, str, str, str]]:
    """(quantity, dense, compressed, ratio) rows: file bytes, latency per batch size, theoretical MACs."""
    cost = result.cost
    rows = [("file bytes", f"{cost.dense_bytes:,}", f"{cost.compressed_bytes:,}", f"{cost.size_ratio:.1f}x")]
    for batch, (dense, compressed) in cost.latency.items():
        rows.append((f"latency, batch {batch} (us)", f"{1e6 * dense:,.1f}", f"{1e6 * compressed:,.1f}",
                     f"{dense / compressed:.2f}x"))
    built, nonzero = flops_reductions(result)
    rows.append(("MACs per example, non-zero weights (theory)", f"{result.flops_reference:,}",
                 f"{result.flops.nonzero:,}", f"{nonzero:.1f}x"))
    if cost.reshaped:
        rows.append(("MACs per example, as built", f"{result.flops_reference:,}", f"{result.flops.dense:,}",
                     f"{built:.1f}x"))
    return rows


def cost_caption(cost: DeploymentCost) -> str:
    kernels = ", ".join(f"{name} {kernel}" for name, kernel in cost.kernels.items())
    dense = "the task architecture (dense kernels)" if cost.reshaped else "the deployed network with its zeros"
    return (f"dense: {dense}, float32 safetensors; compressed storage per layer: {cost.describe_storage()}; "
            f"compressed network's kernels: {kernels}; latency: median of one forward pass, 1 CPU thread, "
            "both networks alternating in one process")


def _summary(values: dict[str, Any]) -> str:
    return (f"{100 * values['accuracy']:.2f}% / {values['compression']:.1f}x / "
            f"{values['weights_nonzero']:,} non-zero")


def check_rows(result: ExportResult) -> list[tuple[str, str]]:
    """(item, value) rows: the stored run, its rerun (if any), and the exported file loaded back."""
    model = result.model
    rows = [("task / method / seed", f"{model.saved.task} / {model.saved.method} / {model.saved.seed}"),
            ("stored: accuracy / compression / weights", _summary(model.final))]
    if model.rerun is not None:
        verdict = "equal to the stored run" if model.reproduced else "DIFFERS from the stored run"
        when = "now" if model.rerun_now else "by an earlier export"
        rows.append((f"rerun ({when}): accuracy / compression", f"{_summary(model.rerun)}: {verdict}"))
    else:
        rows.append(("model", "kept by the run (--save-model)"))
    rows.append(("model file", str(model.path)))
    rows.append((f"exported {result.fmt}, loaded back", f"{100 * result.correct / result.total:.2f}% "
                 f"({result.correct:,} / {result.total:,} correct), {result.nonzero:,} non-zero weights"))
    storage = ", ".join(f"{name} {layout}" for name, layout in result.layouts.items())
    rows.append(("exported file", f"{result.out} ({result.file_bytes:,} bytes)"))
    rows.append(("exported weights' storage", f"{storage}" + (
        " (--compressed)" if result.compressed else
        " (zeros stored; --format safetensors --compressed stores each layer in its smallest layout)"
        if result.fmt == "safetensors" else "")))
    return rows


def warnings(result: ExportResult) -> list[str]:
    """One line per disagreement between the exported file, the rerun and the stored run."""
    model, notes = result.model, []
    if not model.reproduced:
        notes.append(f"the {'rerun' if model.rerun is not None else 'kept model'} does not reproduce the stored "
                     f"run ({_summary(model.saved.final)} against {_summary(model.final)}): another machine, "
                     "thread count or code version")
    own = "the rerun" if model.rerun is not None else "the stored run"
    if result.correct != result.expected_correct:
        tolerance = (" (ONNX Runtime's float kernels sum in another order than torch's)" if result.fmt == "onnx"
                     else "")
        notes.append(f"the exported file gets {result.correct:,} correct, {own} {result.expected_correct:,} / "
                     f"{result.total:,}{tolerance}")
    if result.nonzero != model.saved.final["weights_nonzero"]:
        notes.append(f"the exported file has {result.nonzero:,} non-zero weights, {own} "
                     f"{model.saved.final['weights_nonzero']:,}")
    return notes
