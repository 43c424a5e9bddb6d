"""Pandas views of the result store: one DataFrame of runs with their final rows, one of trajectories."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd

#: The final-row columns `load_runs` joins onto each run.
FINAL_COLUMNS = ("iterations", "train_seconds", "eval_seconds", "accuracy", "compression", "weights_nonzero",
                 "weights_total", "compression_all", "params_nonzero", "params_total", "flops", "flops_nonzero",
                 "flops_reference", "final_per_layer", "extra", "top5", "validation_accuracy")


def load_runs(db: Path | str, status: str | None = "finished") -> pd.DataFrame:
    """One row per run: identity columns, hyperparameters (as `hp.<name>`), final metrics."""
    with sqlite3.connect(str(db)) as conn:
        runs = pd.read_sql_query("SELECT * FROM runs", conn)
        final = pd.read_sql_query("SELECT * FROM final", conn).rename(columns={"per_layer": "final_per_layer"})
    for column in FINAL_COLUMNS:  # a store written before a column existed reads as missing values
        if column not in final.columns:
            final[column] = pd.Series(dtype="float64")
    runs = runs.merge(final[["run_id", *FINAL_COLUMNS]], on="run_id", how="left")
    if status is not None:
        runs = runs[runs["status"] == status].reset_index(drop=True)
    hparams = pd.json_normalize(runs["hparams"].map(json.loads).tolist()).add_prefix("hp.") if len(runs) else None
    if hparams is not None:
        runs = pd.concat([runs, hparams], axis=1)
    return runs


def load_trajectories(db: Path | str, run_ids: list[str] | None = None) -> pd.DataFrame:
    """All trajectory rows (step, seconds, accuracy, compression, ...) joined with run identity columns."""
    query = ("SELECT t.*, r.task, r.method, r.seed, r.budget, r.status FROM trajectory t"
             " JOIN runs r USING (run_id)")
    with sqlite3.connect(str(db)) as conn:
        df = pd.read_sql_query(query, conn)
    if run_ids is not None:
        df = df[df["run_id"].isin(run_ids)]
    return df.sort_values(["run_id", "step"]).reset_index(drop=True)
