"""The CIFAR-10 and ImageNet tasks end to end through the CLI, on small GENERATED datasets written in
the real on-disk formats (a CIFAR-10 python-pickle set, an ImageFolder tree of JPEGs). Generated data
checks the code paths only: its runs are marked unverified and are never a task's result.

Every method on every new task runs a few steps (or refuses with a one-line reason); a streamed run
continues from its checkpoint at the right batch; data that fails its checksums is refused unless
--allow-unverified-data is given, and then the run records it."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from click.testing import CliRunner
from fakedata import write_fake_cifar10, write_fake_imagefolder

from prunebench.cli import main
from prunebench.registry import method_names

pytestmark = pytest.mark.slow  # large networks: seconds per step on a CPU

WEIGHTS = {"vgg-cifar10": 14_977_728, "resnet56-cifar10": 848_944, "alexnet-imagenet": 60_954_656}
#: Small batches keep a step cheap on a CPU; the protocol's own batch (128) is exercised once below.
BATCH = {"vgg-cifar10": 8, "resnet56-cifar10": 8, "alexnet-imagenet": 4}
#: Steps per run: magnitude's half dense and 5 retraining rounds need 10 on CIFAR; AlexNet's 61M weights
#: make every step and evaluation slow on a CPU, so it runs 2 steps (magnitude with one round).
ITERATIONS = {"vgg-cifar10": 10, "resnet56-cifar10": 10, "alexnet-imagenet": 2}
EXTRA = {("magnitude", "alexnet-imagenet"): ("--rounds", "1"),
         # the output sensitivity takes a backward pass per class (tests/test_methods_large.py covers it on
         # these networks); here the loss-gradient reading keeps the CPU steps short
         ("sensitivity", "vgg-cifar10"): ("--sensitivity", "loss"),
         ("sensitivity", "resnet56-cifar10"): ("--sensitivity", "loss")}
#: (method, task) pairs that refuse, and a phrase of their one-line reason.
REFUSALS: dict[tuple[str, str], str] = {}
#: On AlexNet (61M weights: a CPU step and evaluation take seconds) the CLI runs the methods whose deployed
#: network or schedule differs in kind: dense, magnitude (rounds), l0 (units removed across links), autoprune
#: (a physically smaller network). Every method's attach, steps and deployment on AlexNet's structure (LRN,
#: grouped convs; fc layers narrowed) are covered in process by tests/test_methods_large.py::
#: test_every_method_deploys_the_plain_network (CI time: the other seven CLI runs took about 150 s and add no
#: code path of their own).
ALEXNET_CLI_METHODS = ("dense", "magnitude", "l0", "autoprune")
#: VGG-like (15M weights): those, and dynthresh (the issue's command); ResNet-56 (0.85M, CIFAR-10 too) runs
#: every method through the CLI, so each method's CLI path on a CIFAR-10 task is still covered (CI time: the
#: other six VGG runs took about 45 s).
VGG_CLI_METHODS = (*ALEXNET_CLI_METHODS, "dynthresh")


def _task_methods() -> list[tuple[str, str]]:
    subsets = {"alexnet-imagenet": ALEXNET_CLI_METHODS, "vgg-cifar10": VGG_CLI_METHODS}
    return [(method, task) for task in WEIGHTS for method in method_names()
            if task not in subsets or method in subsets[task]]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    write_fake_cifar10(root, n_train=64, n_test=40, seed=0)
    write_fake_imagefolder(root, n_classes=4, train_per_class=4, val_per_class=2, seed=0)
    return root


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("PRUNEBENCH_COMPILE", "0")  # compiling every layer shape would dominate a few steps


def _run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _cli_run(method: str, task: str, data_dir, db):
    steps = str(ITERATIONS[task])
    return _run(["run", "--method", method, "--task", task, "--data-dir", str(data_dir), "--db", str(db),
                 "--allow-unverified-data", "--iterations", steps, "--eval-every", steps,
                 "--batch-size", str(BATCH[task]), "--json", *EXTRA.get((method, task), ())])


@pytest.mark.parametrize("method,task", _task_methods())
def test_every_method_runs_a_few_steps_on_every_new_task(method, task, data_dir, tmp_path):
    db = tmp_path / "runs.sqlite"
    result = _cli_run(method, task, data_dir, db)
    if (method, task) in REFUSALS:
        assert result.exit_code == 2
        message = result.output.strip().splitlines()[-1]
        assert REFUSALS[(method, task)] in message
        return
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["status"] == "finished" and out["iterations"] == ITERATIONS[task]
    assert out["weights_total"] == WEIGHTS[task]
    per_layer = out["per_layer"]
    assert sum(total for _, total in per_layer.values()) == WEIGHTS[task]
    assert sum(nz for nz, _ in per_layer.values()) == out["nonzero"] <= WEIGHTS[task]
    assert 0.0 <= out["accuracy"] <= 1.0
    with sqlite3.connect(db) as conn:
        env, protocol = conn.execute("SELECT environment, protocol FROM runs").fetchone()
        top5 = conn.execute("SELECT top5 FROM final").fetchone()[0]
    assert json.loads(env)["unverified_data"] is True  # generated data: marked, never a result
    assert json.loads(protocol)["batch_size"] == BATCH[task]
    if task == "alexnet-imagenet":
        assert top5 is not None and top5 >= out["accuracy"]
    else:
        assert top5 is None


def test_unverified_data_is_refused_without_the_flag(data_dir, tmp_path):
    for task in ("vgg-cifar10", "alexnet-imagenet"):
        result = _run(["run", "--method", "dense", "--task", task, "--data-dir", str(data_dir),
                       "--db", str(tmp_path / "r.sqlite"), "--iterations", "1"])
        assert result.exit_code == 2
        assert "--allow-unverified-data" in result.output
    missing = _run(["run", "--method", "dense", "--task", "vgg-cifar10", "--data-dir", str(tmp_path / "none"),
                    "--db", str(tmp_path / "r.sqlite"), "--iterations", "1"])
    assert missing.exit_code == 2 and "cifar-10-batches-py" in missing.output


def test_protocol_batch_on_generated_cifar(tmp_path):
    """The issue's check: `prunebench run --method dynthresh --task vgg-cifar10 --data-dir D
    --allow-unverified-data --iterations 3` at the protocol's own batch of 128."""
    write_fake_cifar10(tmp_path, n_train=256, n_test=20, seed=1)
    result = _run(["run", "--method", "dynthresh", "--task", "vgg-cifar10", "--data-dir", str(tmp_path),
                   "--db", str(tmp_path / "r.sqlite"), "--allow-unverified-data", "--iterations", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["status"] == "finished" and out["iterations"] == 3 and out["weights_total"] == WEIGHTS["vgg-cifar10"]


def test_streamed_run_resumes_at_the_right_batch(data_dir, stop_at, tmp_path, monkeypatch):
    """An AlexNet run on the ImageFolder tree interrupted after step 4 and continued ends exactly where
    the uninterrupted run ends (same batches, same crops, the same final weights bit for bit). AlexNet with
    fc6/fc7 of 512 units (the same conv part, groups and LRN) keeps the three runs cheap; the data path is
    the task's."""
    from prunebench import tasks
    from prunebench.deploy import load_saved
    from prunebench.harness import train
    from prunebench.models import AlexNetCaffe
    from prunebench.observers import Observer
    from prunebench.request import make_spec
    from prunebench.store import ResultStore

    alexnet = tasks.TASKS["alexnet-imagenet"]
    monkeypatch.setitem(tasks.TASKS, "alexnet-imagenet",
                        tasks.Task(**{**alexnet.__dict__, "architecture": lambda: AlexNetCaffe(fc_units=512)}))

    spec = make_spec("alexnet-imagenet", "dynthresh", seed=0, iterations=6, eval_every=2,
                     protocol={"batch_size": 4})
    whole = ResultStore(tmp_path / "whole.sqlite")
    expected = train(spec, whole, data_dir, allow_unverified_data=True, checkpoint_seconds=None,
                     save_model=tmp_path / "whole.pt")
    whole.close()

    store = ResultStore(tmp_path / "split.sqlite")
    with pytest.raises(KeyboardInterrupt):
        train(spec, store, data_dir, allow_unverified_data=True, checkpoint_seconds=0, observer=stop_at(5))
    assert store.status(spec.run_id) == "interrupted"
    resumed_at = []

    class Resumed(Observer):
        def resumed(self, step: int) -> None:
            resumed_at.append(step)

    result = train(spec, store, data_dir, allow_unverified_data=True, checkpoint_seconds=0, observer=Resumed(),
                   save_model=tmp_path / "split.pt")
    store.close()
    assert resumed_at == [4]  # the checkpoint of the evaluation at step 4
    assert result.final["weights_nonzero"] == expected.final["weights_nonzero"]
    assert result.final["accuracy"] == expected.final["accuracy"]
    assert result.final["top5"] == expected.final["top5"]
    whole_weights, split_weights = (load_saved(tmp_path / f"{name}.pt").state_dict for name in ("whole", "split"))
    assert list(whole_weights) == list(split_weights)
    assert all(torch.equal(whole_weights[k], split_weights[k]) for k in whole_weights)
