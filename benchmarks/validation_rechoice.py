"""The re-choice of the task defaults that had been chosen on test accuracy, on a validation split instead
(issue 29, part 3; docs/validation.md lists the defaults, the sweeps and the rule of each). Reads the store
the sweeps wrote and prints, per task and method, one row per setting (mean over its seeds): compression,
validation accuracy and validation loss against `dense` of the same seed and protocol, and the test loss
beside them for the record (the rules read validation only).

    python benchmarks/validation_rechoice.py [--db leaderboards/foundation/validation.sqlite]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def settings_table(db: Path) -> pd.DataFrame:
    """One row per (task, method, setting): seeds, compression, validation accuracy, validation and test loss
    (pp against dense of the same seed and protocol; positive = worse), means over the seeds."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        runs = pd.read_sql("SELECT r.run_id, r.task, r.method, r.seed, r.budget, r.hparams, r.protocol, "
                           "f.accuracy, f.compression, f.validation_accuracy FROM runs r JOIN final f USING (run_id) "
                           "WHERE r.status = 'finished'", conn)
    # A setting is named by the hyperparameters that vary among the runs of its task and method (all values
    # are stored), e.g. "lam=0.001, tau=0.01".
    values = [json.loads(h) for h in runs["hparams"]]
    runs["setting"] = ""
    for _, group in runs.groupby(["task", "method"]):
        varying = sorted({k for i in group.index for k, v in values[i].items()
                          if any(values[j].get(k) != v for j in group.index)})
        for i in group.index:
            runs.loc[i, "setting"] = ", ".join(f"{k}={values[i][k]}" for k in varying) or "the default"
    dense = runs[runs["method"] == "dense"].set_index(["task", "seed", "protocol"])
    rows = []
    for _, r in runs[runs["method"] != "dense"].iterrows():
        ref = dense.loc[(r["task"], r["seed"], r["protocol"])] if (r["task"], r["seed"], r["protocol"]) in \
            dense.index else None
        if isinstance(ref, pd.DataFrame):
            ref = ref.iloc[0]
        rows.append({"task": r["task"], "method": r["method"], "budget": r["budget"], "setting": r["setting"],
                     "seed": r["seed"], "compression": r["compression"],
                     "validation": 100 * r["validation_accuracy"],
                     "validation_loss": 100 * (ref["validation_accuracy"] - r["validation_accuracy"])
                     if ref is not None else float("nan"),
                     "test_loss": 100 * (ref["accuracy"] - r["accuracy"]) if ref is not None else float("nan")})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return (frame.groupby(["task", "method", "budget", "setting"], sort=True)
            .agg(seeds=("seed", "count"), compression=("compression", "mean"), validation=("validation", "mean"),
                 validation_loss=("validation_loss", "mean"), test_loss=("test_loss", "mean"))
            .reset_index())


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table, floats to 2 decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=ROOT / "leaderboards" / "foundation" / "validation.sqlite")
    args = parser.parse_args()
    table = settings_table(args.db)
    for (task, method), group in table.groupby(["task", "method"], sort=False):
        print(f"\n### {task} / {method}\n")
        print(markdown(group.drop(columns=["task", "method"])))


if __name__ == "__main__":
    main()
