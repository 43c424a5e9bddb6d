"""Pandas views of the result store: one DataFrame of runs with their final rows, one of trajectories."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd


def load_runs(db: Path | str, status: str | None = "finished") -> pd.DataFrame:
    """One row per run: identity columns, hyperparameters (as `hp.<name>`), final metrics."""
    with sqlite3.connect(str(db)) as conn:
        runs = pd.read_sql_query(
            "SELECT r.*, f.iterations, f.train_seconds, f.eval_seconds, f.accuracy, f.compression,"
            " f.weights_nonzero, f.weights_total, f.compression_all, f.per_layer AS final_per_layer, f.extra"
            " FROM runs r LEFT JOIN final f USING (run_id)", conn)
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
