"""Side-by-side leaderboards aggregated from the result store.

One row per (task, method, setting, budget): every finished run whose identity differs only in the
seed. Units: accuracy in % (deployed network, test set); accuracy loss in percentage points (pp),
`dense accuracy of the same seed, task and protocol - accuracy`, positive = worse than dense. A run
without such a dense run gets loss NaN and is counted in `dense_missing_seeds`; it is never compared
with a dense run of another seed or protocol.

Time to a compression: the first evaluation in a run's trajectory whose deployed network has at
least that compression *and* an accuracy loss (against the same dense run's final accuracy) of at
most `max_loss` pp; its training seconds (evaluation excluded) and step. Averaged over the seeds that
reached it (`reached_<X>x` counts them).

Ranking: rows whose mean accuracy loss is within `max_loss` first, by mean compression (highest
first); then rows over the limit, by compression; then rows without any dense reference; last, rows
built from a run trained on data that failed checksum verification (`"unverified_data": true` in its
environment, `--allow-unverified-data`; the run itself or its dense reference), marked "†": they are
not results of the task.

Top-5 accuracy (tasks with 1,000 classes: the runs' final `top5`) gets its own columns when any run of
the task stored it; its loss is against the same dense run as top-1."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from prunebench.registry import get_method
from prunebench.report import stats
from prunebench.report.published import published
from prunebench.request import format_seeds
from prunebench.results import load_runs, load_trajectories
from prunebench.setting import rerun_command, setting_items, setting_string
from prunebench.store import _canonical

THRESHOLDS: tuple[int, ...] = (50, 60, 70)
DEFAULT_MAX_LOSS = 0.4
#: Mark and footnote of rows built from runs on unverified data.
UNVERIFIED_MARK = "†"
UNVERIFIED_NOTE = (f"{UNVERIFIED_MARK} trained on data that failed checksum verification (--allow-unverified-data): "
                   "not a result of this task")
#: Floating-point slack when comparing a loss with the limit (0.98 - 0.976 is 0.4000000000000004 pp).
LOSS_TOLERANCE = 1e-9

CSV_COLUMNS_REQUIRED = ("task", "method", "setting", "budget", "seeds", "accuracy_mean", "accuracy_loss_mean",
                        "accuracy_loss_std", "compression_mean", "compression_std", "train_seconds_mean",
                        "published_compression", "published_accuracy_loss")


def _group_key(identity: dict[str, Any]) -> str:
    rest = {k: v for k, v in identity.items() if k != "seed"}
    return json.dumps(_canonical(rest), sort_keys=True, separators=(",", ":"))


def _protocol_key(identity: dict[str, Any]) -> str:
    return json.dumps(_canonical(identity.get("protocol") or {}), sort_keys=True, separators=(",", ":"))


def _device(environment: Any) -> str:
    try:
        return json.loads(environment).get("device") or "?"
    except (TypeError, ValueError, AttributeError):
        return "?"


def _unverified(environment: Any) -> bool:
    """True when the run's environment says it trained on data that failed checksum verification."""
    try:
        return bool(json.loads(environment).get("unverified_data", False))
    except (TypeError, ValueError, AttributeError):
        return False


def time_to_compression(points: pd.DataFrame, target: float, dense_accuracy: float | None,
                        max_loss: float | None) -> tuple[float, float]:
    """(training seconds, step) of the first trajectory point with compression >= `target` and, when
    `max_loss` is given, accuracy loss <= `max_loss` pp against `dense_accuracy` (a fraction).
    (NaN, NaN) if never reached, or if a loss limit is asked for and there is no dense accuracy."""
    if max_loss is not None and (dense_accuracy is None or not math.isfinite(dense_accuracy)):
        return math.nan, math.nan
    steps = points["step"].to_numpy(dtype=float)
    order = np.argsort(steps, kind="stable")
    with np.errstate(invalid="ignore"):  # a point without compression or accuracy (NaN) never qualifies
        ok = points["compression"].to_numpy(dtype=float)[order] >= target
        if max_loss is not None:
            accuracy = points["accuracy"].to_numpy(dtype=float)[order]
            ok &= 100.0 * (dense_accuracy - accuracy) <= max_loss + LOSS_TOLERANCE
    hits = np.flatnonzero(ok)
    if not len(hits):
        return math.nan, math.nan
    first = order[hits[0]]
    return float(points["train_seconds"].to_numpy(dtype=float)[first]), float(steps[first])


def run_table(db: Path | str, task: str, max_loss: float | None = DEFAULT_MAX_LOSS,
              thresholds: tuple[int, ...] = THRESHOLDS) -> pd.DataFrame:
    """One row per finished run of `task`, with its matched dense run and time-to-compression values."""
    runs = load_runs(db, status="finished")
    runs = runs[runs["task"] == task].reset_index(drop=True)
    columns = ["run_id", "task", "method", "seed", "budget", "group", "setting", "hp_items", "protocol_items",
               "hparams",
               "accuracy", "compression", "iterations", "train_seconds", "device", "eval_every", "dense_run_id",
               "dense_accuracy", "accuracy_loss", "params_reduction", "flops_reduction", "flops_reduction_sparse",
               "top5", "dense_top5", "top5_loss", "unverified_data"]
    for x in thresholds:
        columns += [f"seconds_to_{x}x", f"iterations_to_{x}x"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    identities = runs["identity"].map(json.loads)
    runs["group"] = identities.map(_group_key)
    runs["protocol_key"] = identities.map(_protocol_key)
    items = [setting_items(t, m, ident) for t, m, ident in zip(runs["task"], runs["method"], identities, strict=True)]
    runs["hp_items"] = [hp for hp, _ in items]
    runs["protocol_items"] = [proto for _, proto in items]
    runs["setting"] = [setting_string(hp, proto) for hp, proto in items]
    runs["device"] = runs["environment"].map(_device)
    runs["unverified_data"] = runs["environment"].map(_unverified)
    runs["eval_every"] = runs["protocol"].map(lambda text: json.loads(text).get("eval_every"))

    # The dense reference: same task, seed and protocol; budget preferably the same, else "equal".
    dense = runs[runs["method"] == "dense"]
    dense_by_key: dict[tuple, dict[str, pd.Series]] = {}
    for _, d in dense.iterrows():
        dense_by_key.setdefault((d["seed"], d["protocol_key"]), {})[d["budget"]] = d
    trajectories = load_trajectories(db, runs["run_id"].tolist())
    by_run = dict(tuple(trajectories.groupby("run_id"))) if len(trajectories) else {}

    out = []
    for _, r in runs.iterrows():
        candidates = dense_by_key.get((r["seed"], r["protocol_key"]), {})
        ref = candidates.get(r["budget"]) if r["budget"] in candidates else candidates.get("equal")
        if ref is None and candidates:
            ref = next(iter(candidates.values()))
        dense_acc = float(ref["accuracy"]) if ref is not None else math.nan
        row = {k: r[k] for k in ("run_id", "task", "method", "seed", "budget", "group", "setting", "hp_items",
                                 "protocol_items", "compression", "iterations", "train_seconds", "device",
                                 "eval_every")}
        row["hparams"] = r.get("hparams") or "{}"
        row["seed"] = int(row["seed"])
        row["accuracy"] = 100.0 * float(r["accuracy"])
        row["dense_run_id"] = ref["run_id"] if ref is not None else None
        row["dense_accuracy"] = 100.0 * dense_acc
        row["accuracy_loss"] = 100.0 * (dense_acc - float(r["accuracy"]))
        row["params_reduction"] = float(r["compression_all"]) if _ok(r.get("compression_all")) else math.nan
        # FLOPs columns: NaN for runs stored before FLOPs were measured.
        row["flops_reduction"] = _ratio(r.get("flops_reference"), r.get("flops"))
        row["flops_reduction_sparse"] = _ratio(r.get("flops_reference"), r.get("flops_nonzero"))
        # top-5: tasks with 1,000 classes only (NULL otherwise, and in stores written before the column)
        row["top5"] = 100.0 * float(r["top5"]) if _ok(r.get("top5")) else math.nan
        row["dense_top5"] = 100.0 * float(ref["top5"]) if ref is not None and _ok(ref.get("top5")) else math.nan
        row["top5_loss"] = row["dense_top5"] - row["top5"]
        row["unverified_data"] = bool(r["unverified_data"] or (ref is not None and ref["unverified_data"]))
        points = by_run.get(r["run_id"], pd.DataFrame(columns=["step", "train_seconds", "accuracy", "compression"]))
        for x in thresholds:
            row[f"seconds_to_{x}x"], row[f"iterations_to_{x}x"] = time_to_compression(
                points, x, dense_acc if ref is not None else None, max_loss)
        out.append(row)
    return pd.DataFrame(out, columns=columns)


@dataclass
class Leaderboard:
    task: str
    max_loss: float
    thresholds: tuple[int, ...]
    rows: pd.DataFrame
    runs: pd.DataFrame
    db: str
    #: runs of this task in the store that are not finished (running / interrupted / failed): left out
    unfinished: dict[str, int] = field(default_factory=dict)

    # -- writers -----------------------------------------------------------------------------------
    def to_csv(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows.to_csv(path, index=False, float_format="%.6g")
        return path

    def _display_rows(self) -> list[dict[str, str]]:
        out = []
        for r in self.rows.to_dict("records"):
            d = {
                "rank": str(r["rank"]),
                "method": shown_name(r["method"]) + (f" {UNVERIFIED_MARK}" if r.get("unverified_data") else ""),
                "setting": r["setting"], "budget": r["budget"],
                "seeds": f"{r['seeds']} ({r['seed_list']})",
                "accuracy %": _pm(r["accuracy_mean"], r["accuracy_std"], 2),
                "loss pp": _loss_cell(r),
                "loss 95% CI": (f"[{r['accuracy_loss_ci_low']:+.2f}, {r['accuracy_loss_ci_high']:+.2f}]"
                                if _ok(r["accuracy_loss_ci95"]) else "-"),
                "<= limit": "yes" if r["within_loss_limit"] else ("no" if _ok(r["accuracy_loss_mean"]) else "n/a"),
            }
            if self.has_top5:
                d["top-5 %"] = _pm(r["top5_mean"], r["top5_std"], 2)
                d["top-5 loss pp"] = f"{r['top5_loss_mean']:+.2f}" if _ok(r["top5_loss_mean"]) else "-"
            d |= {
                "compression": _pm(r["compression_mean"], r["compression_std"], 1, suffix="x"),
                "params red.": f"{r['params_reduction_mean']:.1f}x" if _ok(r["params_reduction_mean"]) else "-",
                "FLOPs red. dense / sparse": (
                    f"{r['flops_reduction_mean']:.1f}x / {r['flops_reduction_sparse_mean']:.1f}x"
                    if _ok(r["flops_reduction_mean"]) else "-"),
                "iterations": f"{r['iterations_mean']:,.0f}",
                "train s": _pm(r["train_seconds_mean"], r["train_seconds_std"], 1),
            }
            for x in self.thresholds:
                d[f"to {x}x"] = _time_cell(r, x)
            d["device"] = r["device"]
            d["published compression"], d["published loss pp"] = _published_cells(r)
            out.append(d)
        return out

    @property
    def has_top5(self) -> bool:
        """True when any run of the task stored a top-5 accuracy (tasks with 1,000 classes)."""
        return "top5_mean" in self.rows and bool(self.rows["top5_mean"].notna().any())

    @property
    def has_unverified(self) -> bool:
        """True when any row is built from a run on data that failed checksum verification."""
        return "unverified_data" in self.rows and bool(self.rows["unverified_data"].astype(bool).any())

    def _devices(self) -> list[str]:
        return sorted({d for text in self.rows.get("device", []) for d in str(text).split(", ") if d})

    def _table_rows(self) -> list[dict[str, str]]:
        """Display rows; the device column only when the rows ran on more than one device."""
        rows = self._display_rows()
        if len(self._devices()) <= 1:
            for d in rows:
                d.pop("device", None)
        return rows

    def rich_table(self) -> Table:
        table = Table(title=f"{self.task}: ranked by compression at accuracy loss <= {self.max_loss:g} pp",
                      caption=self._caption(), caption_justify="left")
        rows = self._table_rows()
        headers = list(rows[0]) if rows else ["rank", "method", "setting", "seeds"]
        text_columns = ("method", "setting", "budget", "device", "published compression")
        for h in headers:
            table.add_column(h, justify="left" if h in text_columns else "right",
                             no_wrap=h not in text_columns and h != "loss pp" and not h.startswith("to "),
                             overflow="fold")
        for d in rows:
            table.add_row(*(d[h] for h in headers))
        return table

    def _caption(self) -> str:
        parts = [f"accuracy: deployed network, test set, %; loss: dense of the same seed minus it, pp "
                 f"(positive = worse); to Nx: mean training seconds / iterations to the first evaluation with "
                 f"compression >= N and loss <= {self.max_loss:g} pp, over the seeds that reached it; params red.: all "
                 f"parameters of the dense network / non-zero parameters deployed; FLOPs red.: multiply-accumulates "
                 f"per example of the dense network / of the deployed network as built (dense kernels) / of its "
                 f"non-zero weights only (ideal sparse kernels); '-' for runs stored before FLOPs were measured"]
        devices = self._devices()
        if len(devices) == 1:
            parts.append(f"device: {devices[0]}")
        if self.has_top5:
            parts.append("top-5: accuracy with the label among the 5 highest outputs, %; its loss against the same "
                         "dense run, pp")
        if self.unfinished:
            left = ", ".join(f"{n} {s}" for s, n in sorted(self.unfinished.items()))
            parts.append(f"left out (not finished): {left}")
        if self.has_unverified:
            parts.append(UNVERIFIED_NOTE)
        return "; ".join(parts)

    def to_markdown(self, command: str) -> str:
        rows = self._table_rows()
        devices = self._devices()
        device_note = f" All runs on: {devices[0]}." if len(devices) == 1 else ""
        lines = [f"# Leaderboard: {self.task}", "",
                 "Regenerate with:", "", "```", command, "```", "",
                 f"Generated from the result store `{self.db}` (finished runs only). One row per method and "
                 "setting (the hyperparameters that differ from the task's calibrated defaults), aggregated over "
                 "seeds. **accuracy %**: the deployed network on the test set, mean ± standard deviation. "
                 "**loss pp**: accuracy of `dense` with the same seed, task and protocol minus the method's, in "
                 "percentage points (positive = worse than dense); mean ± standard deviation, and the 95% "
                 "confidence interval of the mean (Student t). **compression**: dense weights / non-zero weights "
                 "(conv + fc weights), mean ± standard deviation. **train s**: training wall-clock, evaluation "
                 "excluded. **to Nx**: mean training seconds and iterations to the first evaluation whose deployed "
                 f"network has compression >= N at a loss <= {self.max_loss:g} pp, over the seeds that reached it "
                 "(count in brackets). **published**: the figure from the literature for this method and network "
                 "(source in the CSV column `published_source`): not measured here, and baselines differ."
                 + device_note, "",
                 f"Ranked by compression among rows with mean loss <= {self.max_loss:g} pp, then rows over the "
                 "limit, then rows without a dense reference.", ""]
        if rows:
            headers = list(rows[0])
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            for d in rows:
                lines.append("| " + " | ".join(_md_escape(d[h]) for h in headers) + " |")
            if self.has_unverified:
                lines += ["", UNVERIFIED_NOTE]
        else:
            lines.append(f"_No finished runs of task `{self.task}` in the store._")
        lines.append("")
        missing = self.rows[self.rows["dense_missing_seeds"].astype(str) != ""] if len(self.rows) else self.rows
        for r in missing.to_dict("records"):
            lines.append(f"- **{r['method']}** ({r['setting']}, budget {r['budget']}): no finished `dense` run "
                         f"with the same protocol for seed(s) {r['dense_missing_seeds']}; their accuracy loss is "
                         "not reported.")
        if self.unfinished:
            lines.append("- Left out, not finished: " + ", ".join(
                f"{n} {s}" for s, n in sorted(self.unfinished.items())) + " run(s).")
        sources = self.rows.drop_duplicates("method") if len(self.rows) else self.rows
        sources = [r for r in sources.to_dict("records") if r["published_source"]]
        if sources:
            lines += ["", "Published figures (not measured here):", ""]
            for r in sources:
                figure = "none"
                if _ok(r["published_compression"]):
                    figure = f"{r['published_compression']:g}x at {r['published_accuracy_loss']:+.2f} pp"
                note = f" ({r['published_note']})" if r["published_note"] else ""
                lines.append(f"- {r['method']}: {figure}, {r['published_source']}{note}")
        if len(self.rows):
            lines += ["", "## Rerun a row", "", "Each command reruns the row's runs (and their `dense` references); "
                      "identities already finished in the store are skipped.", ""]
            for r in self.rows.to_dict("records"):
                lines.append(f"{r['rank']}. {r['method']} ({r['setting']}): `{r['command']}`")
        return "\n".join(lines).rstrip() + "\n"

    def to_html(self, command: str) -> str:
        rows = self._table_rows()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in (rows[0] if rows else []))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in d.values()) + "</tr>\n" for d in rows)
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>prunebench leaderboard: {html.escape(self.task)}</title>"
                "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
                "td,th{border:1px solid #999;padding:3px 6px;text-align:right}"
                "td:nth-child(2),td:nth-child(3){text-align:left}</style></head><body>\n"
                f"<h1>Leaderboard: {html.escape(self.task)}</h1>\n"
                f"<p>Regenerate with: <code>{html.escape(command)}</code></p>\n"
                f"<p>{html.escape(self._caption())}</p>\n"
                f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n</body></html>\n")

    def write(self, out_dir: Path | str, command: str, formats: tuple[str, ...] = ("md", "csv")) -> list[Path]:
        """Write `<out_dir>/<task>.<ext>` for each format; returns the paths written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt in formats:
            path = out / f"{self.task}.{fmt}"
            if fmt == "csv":
                self.to_csv(path)
            elif fmt == "md":
                path.write_text(self.to_markdown(command))
            elif fmt == "html":
                path.write_text(self.to_html(command))
            else:
                raise ValueError(f"unknown format {fmt!r}; use md, csv or html")
            written.append(path)
        return written


def _eval_every(values: pd.Series) -> int | None:
    """The group's evaluation interval when all its runs share one, else None."""
    known = {int(v) for v in values if _ok(v)}
    return known.pop() if len(known) == 1 else None


def _provenance(method: str) -> str:
    """"paper" or "reconstruction" (parts rebuilt where the paper's text was unavailable); "" if unknown."""
    try:
        return get_method(method).provenance
    except KeyError:
        return ""


def shown_name(method: str) -> str:
    """A method's name in a table or legend, "(reconstruction)" added for a method rebuilt without its paper's
    text (`Pruner.provenance`)."""
    return method + (" (reconstruction)" if _provenance(method) == "reconstruction" else "")


def _ratio(numerator: Any, denominator: Any) -> float:
    """numerator / denominator as a float, NaN when either is missing or the denominator is 0."""
    if not (_ok(numerator) and _ok(denominator)) or float(denominator) == 0:
        return math.nan
    return float(numerator) / float(denominator)


def _ok(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _pm(mean: float, std: float, digits: int, suffix: str = "") -> str:
    if not _ok(mean):
        return "-"
    text = f"{mean:,.{digits}f}{suffix}"
    return f"{text} ± {std:,.{digits}f}" if _ok(std) else text


def _loss_cell(r: dict[str, Any]) -> str:
    if not _ok(r["accuracy_loss_mean"]):
        return "no dense run"
    text = f"{r['accuracy_loss_mean']:+.2f}"
    if _ok(r["accuracy_loss_std"]):
        text += f" ± {r['accuracy_loss_std']:.2f}"
    if r["loss_seeds"] < r["seeds"]:
        text += f" ({r['loss_seeds']}/{r['seeds']} seeds)"
    return text


def _time_cell(r: dict[str, Any], x: int) -> str:
    reached = r[f"reached_{x}x"]
    if not reached:
        return "-"
    return f"{r[f'seconds_to_{x}x_mean']:,.1f} s / {r[f'iterations_to_{x}x_mean']:,.0f} it ({reached}/{r['seeds']})"


def _published_cells(r: dict[str, Any]) -> tuple[str, str]:
    if _ok(r["published_compression"]):
        loss = f"{r['published_accuracy_loss']:+.2f}" if _ok(r["published_accuracy_loss"]) else "?"
        return f"{r['published_compression']:g}x", loss
    return (r["published_note"] or "-"), "-"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def aggregate(runs: pd.DataFrame, max_loss: float = DEFAULT_MAX_LOSS,
              thresholds: tuple[int, ...] = THRESHOLDS, db: str | None = None) -> pd.DataFrame:
    """Group the per-run table (from `run_table`) by identity minus seed; rank; add published columns."""
    rows = []
    for _, g in runs.groupby("group", sort=False):
        first = g.iloc[0]
        losses = g["accuracy_loss"].tolist()
        seeds = sorted(g["seed"].astype(int).tolist())
        missing = sorted(int(s) for s, dr in zip(g["seed"], g["dense_run_id"], strict=True) if dr is None or dr != dr)
        loss_mean, loss_ci = stats.mean(losses), stats.ci95_halfwidth(losses)
        row: dict[str, Any] = {
            "task": first["task"], "method": first["method"], "provenance": _provenance(first["method"]),
            "setting": first["setting"], "budget": first["budget"],
            "seeds": len(g), "seed_list": format_seeds(seeds),
            "accuracy_mean": stats.mean(g["accuracy"]), "accuracy_std": stats.std(g["accuracy"]),
            "dense_accuracy_mean": stats.mean(g["dense_accuracy"]),
            "loss_seeds": len(stats.finite(losses)), "dense_missing_seeds": format_seeds(missing) if missing else "",
            "accuracy_loss_mean": loss_mean, "accuracy_loss_std": stats.std(losses),
            "accuracy_loss_ci95": loss_ci,
            "accuracy_loss_ci_low": loss_mean - loss_ci if _ok(loss_ci) else math.nan,
            "accuracy_loss_ci_high": loss_mean + loss_ci if _ok(loss_ci) else math.nan,
            "within_loss_limit": bool(_ok(loss_mean) and loss_mean <= max_loss + LOSS_TOLERANCE),
            "compression_mean": stats.mean(g["compression"]), "compression_std": stats.std(g["compression"]),
            "compression_min": float(g["compression"].min()), "compression_max": float(g["compression"].max()),
            "iterations_mean": stats.mean(g["iterations"]),
            "train_seconds_mean": stats.mean(g["train_seconds"]), "train_seconds_std": stats.std(g["train_seconds"]),
            "params_reduction_mean": stats.mean(g["params_reduction"]),
            "flops_reduction_mean": stats.mean(stats.finite(g["flops_reduction"])),
            "flops_reduction_sparse_mean": stats.mean(stats.finite(g["flops_reduction_sparse"])),
            "top5_mean": stats.mean(stats.finite(g["top5"])), "top5_std": stats.std(stats.finite(g["top5"])),
            "top5_loss_mean": stats.mean(stats.finite(g["top5_loss"])),
            "unverified_data": bool(g["unverified_data"].astype(bool).any()),
        }
        for x in thresholds:
            secs = stats.finite(g[f"seconds_to_{x}x"])
            row[f"reached_{x}x"] = len(secs)
            row[f"seconds_to_{x}x_mean"] = stats.mean(secs)
            row[f"iterations_to_{x}x_mean"] = stats.mean(g[f"iterations_to_{x}x"])
        row["device"] = ", ".join(sorted(set(g["device"])))
        pub = published(first["method"], first["task"], json.loads(first["hparams"]))
        row["published_compression"] = pub.compression if pub and pub.compression is not None else math.nan
        row["published_accuracy_loss"] = pub.accuracy_loss if pub and pub.accuracy_loss is not None else math.nan
        row["published_source"] = pub.source if pub else ""
        row["published_note"] = pub.note if pub else ""
        row["command"] = rerun_command(first["task"], first["method"], seeds, first["budget"], first["hp_items"],
                                       first["protocol_items"], db, _eval_every(g["eval_every"]))
        row["run_ids"] = " ".join(g.sort_values("seed")["run_id"])
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["rank", *CSV_COLUMNS_REQUIRED])
    df["_tier"] = [3 if unverified else (0 if within else (1 if _ok(loss) else 2))
                   for within, loss, unverified in zip(df["within_loss_limit"], df["accuracy_loss_mean"],
                                                      df["unverified_data"], strict=True)]
    df = df.sort_values(["_tier", "compression_mean", "method", "setting"], ascending=[True, False, True, True])
    df = df.drop(columns="_tier").reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def build_leaderboard(db: Path | str, task: str, max_loss: float = DEFAULT_MAX_LOSS,
                      thresholds: tuple[int, ...] = THRESHOLDS, db_label: str | None = None) -> Leaderboard:
    """Aggregate every finished run of `task` in the store at `db` into a ranked leaderboard."""
    if max_loss < 0 or not math.isfinite(max_loss):
        raise ValueError(f"max_loss must be a finite number >= 0 (pp), got {max_loss}")
    if not Path(db).is_file():
        raise FileNotFoundError(f"no result store at {db}")
    label = db_label if db_label is not None else str(db)
    runs = run_table(db, task, max_loss, thresholds)
    rows = aggregate(runs, max_loss, thresholds, label)
    everything = load_runs(db, status=None)
    everything = everything[(everything["task"] == task) & (everything["status"] != "finished")]
    unfinished = everything["status"].value_counts().to_dict() if len(everything) else {}
    return Leaderboard(task, max_loss, thresholds, rows, runs, label, {str(k): int(v) for k, v in unfinished.items()})
