"""The validation split (issue 29, no selection on the test set): held out of the training set, the same for every
seed, disjoint from what trains; its accuracy stored at every evaluation and in the final row; runs without it keep
their identities; resume stays bit for bit; the selection rule reads validation, never test."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from prunebench.cli import main
from prunebench.data import TensorDataset, hold_out, make_xor, validation_indices
from prunebench.harness import train
from prunebench.metrics import evaluate_batches
from prunebench.observers import Measure, Observers
from prunebench.request import RunRequest, make_spec
from prunebench.selection import NoValidationSplit, Selected, best_on_validation, best_step_of_run
from prunebench.store import ResultStore
from prunebench.tasks import TASKS


def numbered(n: int = 60_000, test: int = 10) -> TensorDataset:
    """A dataset whose training inputs are their own index (so every image a batch holds can be named)."""
    ids = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    labels = torch.zeros(n, dtype=torch.long)
    return TensorDataset(ids, labels, torch.zeros(test, 1), torch.zeros(test, dtype=torch.long))


def test_the_split_is_pinned_and_fixed_per_task_not_per_seed():
    held = validation_indices(60_000, 5_000)
    # torch.randperm(60000) from Generator().manual_seed(0) on the CPU: if these move, every validation run moves
    assert held[:5].tolist() == [1, 3, 47, 49, 80] and int(held.sum()) == 149_911_330
    assert held.unique().numel() == 5_000 and bool((held[1:] > held[:-1]).all())
    sources = [TASKS["lenet300"].make_source("unused", 100, seed, torch.device("cpu"), dataset=numbered(),
                                             validation=5_000) for seed in (0, 1, 7)]
    for source in sources:
        assert source.train_size == 55_000 and source.validation_size == 5_000
        assert torch.equal(source.validation[0].squeeze(1).long(), held)  # the same images whatever the seed
    assert torch.equal(sources[0].data.x_train, sources[2].data.x_train)


def test_training_sees_exactly_the_other_55000_images_in_an_epoch():
    source = TASKS["lenet5"].make_source("unused", 100, 3, torch.device("cpu"), dataset=numbered(), validation=5_000)
    seen = torch.cat([source.next_batch()[0].squeeze(1).long() for _ in range(550)])  # one epoch: 550 batches
    assert seen.numel() == 55_000 and seen.unique().numel() == 55_000
    held = set(validation_indices(60_000, 5_000).tolist())
    assert held.isdisjoint(seen.tolist()) and held | set(seen.tolist()) == set(range(60_000))
    validation_ids = torch.cat([x.squeeze(1).long() for x, _ in source.validation_batches()])
    assert set(validation_ids.tolist()) == held  # evaluated in 3 batches of at most 2,000


def test_hold_out_keeps_the_test_set_and_the_pairs():
    data = make_xor()
    train_part, (x_val, y_val) = hold_out(data, 1_000)
    held = validation_indices(10_000, 1_000)
    assert torch.equal(x_val, data.x_train[held]) and torch.equal(y_val, data.y_train[held])
    assert train_part.x_train.shape[0] == 9_000 and torch.equal(train_part.x_test, data.x_test)
    with pytest.raises(ValueError, match="between 1 and 9999"):
        hold_out(data, 10_000)


def test_mnist_source_holds_5000_out_of_60000(mnist_dir):
    source = TASKS["lenet300"].make_source(mnist_dir, 100, 0, torch.device("cpu"), validation=5_000)
    assert source.train_size == 55_000 and source.validation_size == 5_000
    assert source.data.x_test.shape[0] == 10_000  # the test set is untouched


def test_without_the_flag_identities_stay_and_with_it_they_change():
    plain = make_spec("lenet300", "dynthresh", 0)
    assert plain.run_id == "66c1c7672bfbfc29"  # the committed default run
    assert make_spec("lenet300", "dynthresh", 0, protocol={"validation": 0}).run_id == "66c1c7672bfbfc29"
    held = make_spec("lenet300", "dynthresh", 0, protocol={"validation": 5_000})
    assert held.run_id != plain.run_id and held.identity[1]["protocol"] == {"validation": 5_000}
    request = RunRequest("lenet300", "dynthresh", 0, protocol={"validation": 5_000})
    assert request.argv()[-2:] == ["--validation", "5000"]
    assert "--validation 5000" in request.command(seeds=[0, 1, 2])


@pytest.mark.parametrize("task,validation,message", [
    ("alexnet-imagenet", 50_000, "alexnet-imagenet streams its data and has no validation split yet"),
    ("lenet300", 60_000, "fewer than lenet300's 60,000 training examples"),
    ("xor", -1, "validation must be >= 0 images"),
])
def test_impossible_splits_are_refused_before_training(task, validation, message):
    with pytest.raises(ValueError, match=message):
        RunRequest(task, "dense", 0, protocol={"validation": validation}).identity()


def validation_by_hand(pruner, model, data) -> dict:  # noqa: ARG001
    """The deployed network's accuracy on the held-out XOR examples, measured here without the Evaluator."""
    x_val, y_val = hold_out(make_xor(), 1_000)[1]
    correct = lambda out, y: ((out > 0).float() == y).sum()  # noqa: E731
    return {"by_hand": evaluate_batches(pruner.deployed(model), [(x_val, y_val)], correct)[0]}


def test_validation_accuracy_is_stored_at_every_evaluation_and_in_the_final_row(store, tmp_path):
    spec = make_spec("xor", "dynthresh", 0, iterations=150, eval_every=50, protocol={"validation": 1_000})
    result = train(spec, store, tmp_path, device="cpu", observer=Measure(validation_by_hand), checkpoint_seconds=None)
    points = store.trajectory(spec.run_id)
    assert [p["step"] for p in points] == [50, 100, 150]
    for point in points:
        assert point["validation_accuracy"] == json.loads(point["extra"])["by_hand"]
        assert 0.5 < point["validation_accuracy"] <= 1.0
    final = store.final_row(spec.run_id)
    assert final["validation_accuracy"] == points[-1]["validation_accuracy"] == result.final["validation_accuracy"]
    assert final["accuracy"] == points[-1]["accuracy"]  # the reported number is still the test set's
    again = RunRequest.from_row(store.run_row(spec.run_id))  # the stored run can be run again (reproduce, export)
    assert again.run_id == spec.run_id and dict(again.protocol)["validation"] == 1_000

    plain = make_spec("xor", "dynthresh", 0, iterations=100, eval_every=50)
    train(plain, store, tmp_path, device="cpu", checkpoint_seconds=None)
    assert all(p["validation_accuracy"] is None for p in store.trajectory(plain.run_id))
    assert store.final_row(plain.run_id)["validation_accuracy"] is None
    with pytest.raises(NoValidationSplit, match=f"run {plain.run_id} has no validation accuracy"):
        best_step_of_run(store, plain.run_id)
    assert best_step_of_run(store, spec.run_id).step in (50, 100, 150)


def test_a_run_with_a_validation_split_continues_bit_for_bit(stop_at, timeless, tmp_path):
    spec = make_spec("xor", "dynthresh", 0, iterations=300, eval_every=50, protocol={"validation": 1_000})
    straight = ResultStore(tmp_path / "straight.sqlite")
    train(spec, straight, tmp_path, device="cpu", checkpoint_seconds=None)
    stopped = ResultStore(tmp_path / "stopped.sqlite")
    with pytest.raises(KeyboardInterrupt):
        train(spec, stopped, tmp_path, device="cpu", observer=Observers(stop_at(130)), checkpoint_seconds=0)
    train(spec, stopped, tmp_path, device="cpu", checkpoint_seconds=0)
    expected = timeless(straight.trajectory(spec.run_id))
    assert all(p["validation_accuracy"] is not None for p in expected)
    assert timeless(stopped.trajectory(spec.run_id)) == expected
    straight.close()
    stopped.close()


def point(step: int, validation: float | None, test: float, compression: float) -> dict:
    return {"step": step, "validation_accuracy": validation, "accuracy": test, "compression": compression}


def test_the_best_step_follows_validation_where_test_disagrees():
    trajectory = [point(500, 0.970, 0.981, 20.0),   # best on test
                  point(1000, 0.978, 0.975, 40.0),  # best on validation: the pick
                  point(1500, 0.974, 0.979, 60.0)]
    assert best_on_validation(trajectory) == Selected(step=1000, validation_accuracy=0.978, accuracy=0.975,
                                                      compression=40.0)
    tie = [point(500, 0.97, 0.99, 20.0), point(1000, 0.97, 0.90, 50.0), point(1500, 0.97, 0.95, 50.0)]
    assert best_on_validation(tie).step == 1500  # a tie goes to more compression, then to the later step
    with pytest.raises(NoValidationSplit, match="trained without a validation split"):
        best_on_validation([point(500, None, 0.99, 20.0)])


def test_run_table_shows_validation_accuracy(tmp_path):
    db = tmp_path / "cli.sqlite"
    base = ["run", "--method", "dense", "--task", "xor", "--iterations", "100", "--eval-every", "50", "--db", str(db),
            "--data-dir", str(tmp_path), "--device", "cpu"]
    shown = CliRunner().invoke(main, [*base, "--validation", "1000", "--json"])
    assert shown.exit_code == 0, shown.output
    out = json.loads(shown.stdout.strip().splitlines()[-1])
    assert 0.5 < out["validation_accuracy"] <= 1.0
    assert "accuracy (deployed, validation)" in CliRunner().invoke(main, [*base, "--validation", "1000"]).output
    plain = CliRunner().invoke(main, base)
    assert plain.exit_code == 0 and "validation" not in plain.output
    refused = CliRunner().invoke(main, ["run", "--method", "dense", "--task", "alexnet-imagenet", "--validation", "9",
                                        "--db", str(db), "--data-dir", str(tmp_path)])
    assert refused.exit_code == 2 and "streams its data and has no validation split yet" in refused.output


def test_resident_cifar10_holds_out_uint8_images_evaluated_without_augmentation():
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    data = TensorDataset(images, torch.arange(200) % 10, images[:20], torch.arange(20) % 10)
    task = TASKS["vgg-cifar10"]
    source = task.make_source("unused", 10, 0, torch.device("cpu"), dataset=data, validation=50)
    assert source.train_size == 150 and source.validation_size == 50
    (x_val, y_val), = source.validation_batches()  # one batch: 50 images, under the eval batch of 1,000
    held = validation_indices(200, 50)
    assert torch.equal(x_val, task.augment().normalise(images[held])) and torch.equal(y_val, data.y_train[held])
    x, _ = source.next_batch()
    assert x.dtype == torch.float32 and x.shape == (10, 3, 32, 32)  # training batches still augmented
