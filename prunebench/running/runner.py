"""The one runner: trains a list of `RunRequest`s, in this process (each task's resident data read once for
all its runs) or through an executor (`prunebench.running.executors`), whose workers send back records that the
executor's `Tracker` stores. `prunebench run`, `sweep`, `reproduce`, `check` and `export`'s reruns go through
`train_requests`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prunebench import harness
from prunebench.data import TensorDataset
from prunebench.errors import DataUnavailableError
from prunebench.harness import RunResult, TrainOptions
from prunebench.observers import Observer, Observers
from prunebench.records import RecordingStore
from prunebench.request import RunRequest, RunSpec
from prunebench.running.executors import Executor, Tracker
from prunebench.running.worker import RunJob
from prunebench.store import ResultStore
from prunebench.tensorboard import TensorBoardObserver


def train_requests(requests: Sequence[RunRequest], store: ResultStore | RecordingStore, data_dir: Path,
                   options: TrainOptions | None = None, *,
                   observer_for: Callable[[RunRequest], Observer | None] | None = None,
                   tensorboard: Path | None = None, specs: Mapping[str, RunSpec] | None = None,
                   datasets: dict[str, TensorDataset | None] | None = None,
                   on_result: Callable[[RunRequest, RunResult, float], None] | None = None,
                   on_error: Callable[[RunRequest, BaseException, float], None] | None = None,
                   executor: Executor | None = None, tracker: Tracker | None = None,
                   label_for: Callable[[RunRequest], str] | None = None) -> list[RunResult]:
    """Train `requests` one after another into `store` with `options`; return their results (each also to
    `on_result(request, result, wall seconds)`). A task's resident data is read once into `datasets` (default:
    a cache of this call when it trains several requests; a lone request reads its own, so a finished run is
    skipped without it). `specs` (run_id -> RunSpec) spares resolving a request again. `tensorboard`: every
    run streams to its own directory under it. A run that raises goes to `on_error(request, exception, wall
    seconds)`, or propagates when there is none; missing data propagates, and Ctrl-C too after `on_error`.

    With `executor`, the runs go to its workers instead (`RunJob`: the request with the options' placement;
    `options.checkpoints` must be a directory they see) and `tracker` receives their records; SIGTERM stops
    them as Ctrl-C does. Nothing is returned then."""
    options = options or TrainOptions()
    data_dir = Path(data_dir)
    if executor is not None:
        label_for = label_for or (lambda r: f"{r.method} on {r.task} seed {r.seed}")
        jobs = [RunJob(r.run_id, label_for(r), r, str(data_dir), str(options.checkpoints),
                       str(options.device) if options.device is not None else None, options.allow_unverified_data,
                       options.checkpoint_seconds, tensorboard=str(tensorboard) if tensorboard else None)
                for r in requests]
        with harness.SigtermToInterrupt():
            executor.run(jobs, tracker or Tracker())
        return []
    if datasets is None and len(requests) > 1:
        datasets = {}
    results = []
    for request in requests:
        start = time.perf_counter()
        try:
            spec = specs[request.run_id] if specs is not None else request.resolve()
            if datasets is not None and spec.task.name not in datasets:
                datasets[spec.task.name] = spec.task.resident_data(data_dir, options.allow_unverified_data)
            observer = Observers(observer_for(request) if observer_for else None,
                                 TensorBoardObserver(tensorboard) if tensorboard else None)
            result = harness.train(spec, store, data_dir, options=options, observer=observer,
                                   dataset=datasets.get(spec.task.name) if datasets is not None else None)
        except KeyboardInterrupt as exc:
            if on_error is not None:
                on_error(request, exc, time.perf_counter() - start)
            raise
        except DataUnavailableError:
            raise  # every run of this task would fail alike: stop and say why
        except Exception as exc:
            if on_error is None:
                raise
            on_error(request, exc, time.perf_counter() - start)
        else:
            results.append(result)
            if on_result is not None:
                on_result(request, result, time.perf_counter() - start)
    return results
