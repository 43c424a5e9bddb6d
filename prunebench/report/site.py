"""A static HTML site from the result store (`prunebench site --out DIR`).

DIR gets:

- `index.html`: first, the comparison at matched compression of every task that has one (the table of
  `prunebench matched` and its curve plot, `report.matched`, for each `CurveSettings` handed in: the CLI reads
  them from `leaderboards/<task>-matched.json`); without any, a line saying how to make them; then a link to
  every task page and to the DT-paper report;
- `<task>.html`, one per task with runs in the store: the task's leaderboard (the rows, ranking and cells of
  `prunebench leaderboard --task <task>`, built by `build_leaderboard`) with each row's rerun command, and the
  task's figures. The rows travel as JSON inside the page and a small inline script renders the table: clicking
  a header sorts by that column (again: the other direction), and a URL hash `#sort=<key>:<asc|desc>` (e.g.
  `#sort=accuracy:desc`) is applied on load. Numeric columns sort by the underlying mean, missing values last;
  ties keep the leaderboard's rank order. `<task>.csv` is the leaderboard's CSV;
- `figures/<task>-<kind>.png`: fig1, pareto and time drawn from the store by `prunebench.report.plots`, and
  `figures/<task>-matched.png` with `<task>-matched.csv` for a task with matched results;
- `dt-paper/`: the DT-paper report written from the store by `prunebench reproduce dt-paper --report-only`
  (`README.md` and its figures), and `index.html`, that README rendered by python-markdown (tables extension).

Every page ends with a footer naming the store, the generation time and the command. Nothing is fetched at
page-view time: styles and script (`site_assets/site.css`, `site.js`) are inline, images are local files.
python-markdown is the `site` extra.
"""

from __future__ import annotations

import html
import json
import math
import re
import shlex
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from prunebench import __version__
from prunebench.errors import MissingExtraError
from prunebench.registry import task_names
from prunebench.report.leaderboard import DEFAULT_MAX_LOSS, UNVERIFIED_NOTE, Leaderboard, build_leaderboard
from prunebench.report.matched import ALPHA, TIED_MARK, MatchedTable, build_matched, matched_command
from prunebench.results import load_runs
from prunebench.running.curve import CurveSettings

#: (plot kind, default settings only, caption) of each figure on a task page; as leaderboards/README.md draws them.
FIGURES: tuple[tuple[str, bool, str], ...] = (
    ("fig1", True, "Test accuracy of the deployed network against training iterations (mean over seeds, band: "
                   "min-max), markers where it first reaches 50x / 60x / 70x compression; the task's default "
                   "settings only."),
    ("pareto", False, "Accuracy against compression (log scale), every seed and setting a point; lines: the Pareto "
                      "frontier per method."),
    ("time", True, "Training wall-clock to first reach each compression (thick: mean over seeds, thin: each seed); "
                   "the task's default settings only."),
)
FIGURE_DPI = 110

#: Leaderboard header -> (sort key for `#sort=<key>:<dir>`, numeric column of `Leaderboard.rows` it sorts by;
#: None: sorted by its text). Headers not listed (and "to Nx": key "to-Nx", seconds) are handled by `column_key`.
COLUMN_KEYS: dict[str, tuple[str, str | None]] = {
    "rank": ("rank", "rank"),
    "method": ("method", None),
    "setting": ("setting", None),
    "budget": ("budget", None),
    "seeds": ("seeds", "seeds"),
    "accuracy %": ("accuracy", "accuracy_mean"),
    "loss pp": ("loss", "accuracy_loss_mean"),
    "loss 95% CI": ("loss-ci", "accuracy_loss_ci95"),
    "<= limit": ("within-limit", None),
    "top-5 %": ("top5", "top5_mean"),
    "top-5 loss pp": ("top5-loss", "top5_loss_mean"),
    "compression": ("compression", "compression_mean"),
    "params red.": ("params-reduction", "params_reduction_mean"),
    "FLOPs red. dense / sparse": ("flops-reduction", "flops_reduction_mean"),
    "iterations": ("iterations", "iterations_mean"),
    "train s": ("train-seconds", "train_seconds_mean"),
    "device": ("device", None),
    "published compression": ("published-compression", "published_compression"),
    "published loss pp": ("published-loss", "published_accuracy_loss"),
}

#: The pages' style sheet and the leaderboard script (renders #board from the JSON in #board-data; sorting by
#: header click and `#sort=key:dir`), inlined into every page; package data in site_assets/.
CSS, SCRIPT = ((files("prunebench.report") / "site_assets" / name).read_text(encoding="utf-8")
               for name in ("site.css", "site.js"))


@dataclass
class Site:
    """What `build_site` wrote: the folder, every page, and the seconds each part took."""
    out: Path
    pages: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def require_markdown() -> Any:
    """The python-markdown module; MissingExtraError (naming the install command) when it is not installed."""
    try:
        import markdown
    except ImportError:
        raise MissingExtraError("prunebench site needs python-markdown: pip install 'prunebench[site]'") from None
    return markdown


def store_tasks(db: Path | str) -> list[str]:
    """Tasks with at least one run in the store (any status): registered tasks in their order, then the rest."""
    present = set(load_runs(db, status=None)["task"])
    registered = [t for t in task_names() if t in present]
    return registered + sorted(present - set(registered))


def column_key(header: str) -> tuple[str, str | None]:
    """(sort key, numeric source column or None) of a leaderboard header."""
    if header in COLUMN_KEYS:
        return COLUMN_KEYS[header]
    if header.startswith("to ") and header.endswith("x") and header[3:-1].isdigit():
        return f"to-{header[3:-1]}x", f"seconds_to_{header[3:-1]}x_mean"
    slug = "".join(ch if ch.isalnum() else "-" for ch in header.lower()).strip("-")
    return "-".join(part for part in slug.split("-") if part), None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def board_payload(board: Leaderboard) -> dict[str, Any]:
    """The leaderboard as the page's JSON: columns (key, label, numeric) and rows (display cells in column order,
    sort values per key, rerun command, method, run ids). Cells are `prunebench leaderboard`'s, unchanged."""
    display = board._table_rows()
    headers = list(display[0]) if display else []
    keys = [column_key(h) for h in headers]
    columns = [{"key": key, "label": h, "numeric": source is not None} for h, (key, source) in zip(headers, keys,
                                                                                                  strict=True)]
    rows = []
    for cells, record in zip(display, board.rows.to_dict("records"), strict=True):
        sort = {key: (_number(record.get(source)) if source else cells[h]) for h, (key, source) in zip(headers, keys,
                                                                                                      strict=True)}
        rows.append({"cells": [cells[h] for h in headers], "sort": sort, "command": record["command"],
                     "method": record["method"], "run_ids": record["run_ids"]})
    return {"task": board.task, "max_loss": board.max_loss, "columns": columns, "rows": rows}


def _json_for_script(payload: Any) -> str:
    """JSON safe inside <script type="application/json"> (no '<', so no '</script>')."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


def _page(title: str, body: str, footer: str, root: str = "", script: str = "") -> str:
    nav = (f'<header><a class="brand" href="{root}index.html">prunebench</a>'
           f'<a href="{root}index.html">leaderboards</a><a href="{root}dt-paper/index.html">DT-paper report</a>'
           "</header>")
    tail = f"<script>\n{script}</script>\n" if script else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>\n{CSS}</style></head>\n<body>\n{nav}\n{body}\n"
            f"{footer}\n{tail}</body></html>\n")


def _footer(db_label: str, generated: str, command: str) -> str:
    return (f"<footer>Generated {html.escape(generated)} by prunebench {html.escape(__version__)} from the result "
            f"store <code>{html.escape(db_label)}</code> (finished runs) with "
            f"<code>{html.escape(command)}</code></footer>")


def _figures(db: Path, task: str, out: Path, db_label: str) -> tuple[str, list[str]]:
    """Draw the task's FIGURES into out/figures; (HTML, names of the kinds left out with why)."""
    from prunebench.report.plots import make_plot

    parts, skipped = [], []
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for kind, default_only, caption in FIGURES:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="constrained_layout not applied")
                fig = make_plot(db, task, kind, default_only=default_only)
                name = f"{task}-{kind}.png"
                fig.savefig(out / "figures" / name, dpi=FIGURE_DPI, bbox_inches="tight")
        except ValueError as exc:  # e.g. no pruning run at the default setting
            skipped.append(f"{kind}: {exc}")
            continue
        args = ["prunebench", "plot", "--task", task, "--kind", kind] + (["--default-only"] if default_only else [])
        command = " ".join(shlex.quote(a) for a in [*args, "--db", db_label])
        parts.append(f'<figure id="{kind}"><img src="figures/{html.escape(name)}" alt="{html.escape(task)} {kind}" '
                     f'loading="lazy"><figcaption>{html.escape(caption)} SVG and PNG: <code>{html.escape(command)}'
                     "</code></figcaption></figure>")
    if skipped:
        parts.append("<p class=\"note\">Not drawn: " + "; ".join(html.escape(s) for s in skipped) + "</p>")
    return "\n".join(parts), skipped


def task_page(board: Leaderboard, figures_html: str, footer: str) -> str:
    """The task's page: the leaderboard (rendered by SCRIPT from the embedded JSON), notes, figures."""
    task = html.escape(board.task)
    payload = board_payload(board)
    limit = f"{board.max_loss:g}"
    body = [f"<h1>Leaderboard: {task}</h1>",
            f"<p class=\"note\">Ranked by compression among rows with mean accuracy loss &lt;= {limit} pp, then rows "
            "over the limit, then rows without a dense reference. One row per method and setting, over seeds. Click "
            "a header to sort (again: the other direction); the URL hash keeps the order, e.g. "
            f"<code>#sort=accuracy:desc</code>. Download: <a href=\"{task}.csv\">{task}.csv</a>.</p>"]
    if payload["rows"]:
        body.append("<div class=\"scroll\"><table id=\"board\" class=\"board\"><tbody><tr><td>The table needs "
                    "JavaScript; the same rows are in the CSV.</td></tr></tbody></table></div>")
    else:
        body.append(f"<p>No finished runs of task <code>{task}</code> in the store.</p>")
    body.append(f"<p class=\"note\">{html.escape(board._caption())}</p>")
    if board.has_unverified and UNVERIFIED_NOTE not in board._caption():
        body.append(f"<p class=\"note\">{html.escape(UNVERIFIED_NOTE)}</p>")
    missing = [r for r in board.rows.to_dict("records") if str(r.get("dense_missing_seeds", ""))]
    if missing:
        body.append("<ul class=\"note\">" + "".join(
            f"<li>{html.escape(r['method'])} ({html.escape(r['setting'])}, budget {html.escape(r['budget'])}): no "
            f"finished dense run with the same protocol for seed(s) {html.escape(r['dense_missing_seeds'])}; their "
            "accuracy loss is not reported.</li>" for r in missing) + "</ul>")
    sources = [r for r in board.rows.drop_duplicates("method").to_dict("records") if r.get("published_source")] \
        if len(board.rows) else []
    if sources:
        body.append("<p class=\"note\">Published figures (not measured here): " + "; ".join(
            f"{html.escape(r['method'])}: {html.escape(r['published_source'])}"
            + (f" ({html.escape(r['published_note'])})" if r["published_note"] else "") for r in sources) + "</p>")
    if figures_html:
        body += ["<h2>Figures</h2>", figures_html]
    body.append(f"<script type=\"application/json\" id=\"board-data\">{_json_for_script(payload)}</script>")
    return _page(f"prunebench leaderboard: {board.task}", "\n".join(body), footer,
                 script=SCRIPT if payload["rows"] else "")


def report_page(markdown_module: Any, readme: Path, footer: str) -> str:
    """The DT-paper report's README.md as a page in the same folder (its images are relative to it)."""
    rendered = markdown_module.markdown(readme.read_text(), extensions=["tables", "fenced_code"])
    return _page("prunebench: DT-paper report", f"<div class=\"md\">\n{rendered}\n</div>", footer, root="../")


#: The first page's line when no task has matched results.
NO_MATCHED = ("No task in this store has results at matched compression yet. Make them with `prunebench curve "
              "--task T --methods A,B --targets 10,25,50,100 --seeds 0-2`, then write the table with `prunebench "
              "matched` and the same options (it writes leaderboards/T-matched.json, which `prunebench site` reads).")


def _markdown_bold(text: str) -> str:
    """A matched cell's text as HTML: escaped, its **bold** as <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def matched_section(table: MatchedTable, figure: str | None) -> str:
    """One task's matched-compression table (static HTML, `id="matched-<task>"`) and its curve plot."""
    task = html.escape(table.task)
    rows = table.grid()
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_markdown_bold(v)}</td>" for v in row.values()) + "</tr>\n"
                   for row in rows)
    parts = [f"<h2>{task}: accuracy at matched compression</h2>",
             f"<div class=\"scroll\"><table id=\"matched-{task}\" class=\"board matched\"><thead><tr>{head}"
             f"</tr></thead><tbody>\n{body}</tbody></table></div>",
             "<p class=\"note\">Each cell: test accuracy (%, mean ± 95% CI over seeds), compression reached, loss "
             f"against dense of the same seeds (pp), seeds. <strong>Bold</strong>: best of the column; {TIED_MARK}: "
             f"not significantly worse than it (Welch's t-test, two-sided, p = {ALPHA:g}); n/a: fewer than 2 seeds; "
             "off target: the seeds' mean compression misses the target by more than the search's tolerance (in no "
             "comparison). "
             "The knob values were searched on compression alone. Table: <code>"
             f"{html.escape(table.command)}</code>; every cell's rerun command: <a href=\"{task}-matched.csv\">"
             f"{task}-matched.csv</a>.</p>"]
    if figure:
        parts.append(f'<figure id="matched-{task}-plot"><img src="figures/{html.escape(figure)}" alt="{task} at '
                     'matched compression"><figcaption>Accuracy loss against dense at each matched compression (band '
                     'and bars: 95% CI), the published figures as hollow stars; right: training time to each '
                     'target.</figcaption></figure>')
    return "\n".join(parts)


def index_page(boards: list[Leaderboard], report_title: str, footer: str, matched: Sequence[str] = ()) -> str:
    """The first page: the matched-compression sections (HTML from `matched_section`), or the line saying how to
    make them; then the leaderboards and reports."""
    items = []
    for board in boards:
        task = html.escape(board.task)
        n = len(board.rows)
        text = f"{n} row{'' if n == 1 else 's'}, {len(board.runs)} finished run{'' if len(board.runs) == 1 else 's'}"
        if n:
            top = board._table_rows()[0]
            text += (f"; rank 1: {html.escape(top['method'])} ({html.escape(top['setting'])}), compression "
                     f"{html.escape(top['compression'])}, accuracy loss (pp) {html.escape(top['loss pp'])}")
        items.append(f"<li><a href=\"{task}.html\">{task}</a>: {text}</li>")
    comparison = ("\n".join(matched) if matched
                  else f"<p class=\"note\" id=\"no-matched\">{html.escape(NO_MATCHED)}</p>")
    body = ("<h1>prunebench results</h1>\n<p class=\"note\">Every number comes from a run in the result store named "
            "below; accuracy is the deployed network's on the test set, loss is against dense of the same seed "
            "(pp, positive = worse), compression is dense weights / non-zero weights.</p>\n"
            f"{comparison}\n"
            "<h2>Leaderboards</h2>\n<ul class=\"tasks\">" + "".join(items) + "</ul>\n"
            f"<h2>Reports</h2>\n<ul class=\"tasks\"><li><a href=\"dt-paper/index.html\">{html.escape(report_title)}"
            "</a></li></ul>")
    return _page("prunebench results", body, footer)


def _matched(db: Path, settings: CurveSettings, out: Path, db_label: str) -> str | None:
    """The task's matched section, its CSV and plot written into `out`; None without matched results."""
    from prunebench.report.plots import matched_plot

    table = build_matched(db, settings, db_label, matched_command(settings, db_label, "leaderboards"))
    if not table.has_results:
        return None
    table.frame().to_csv(out / f"{settings.task}-matched.csv", index=False, float_format="%.6g")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    name = f"{settings.task}-matched.png"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="constrained_layout not applied")
        matched_plot(table).savefig(out / "figures" / name, dpi=FIGURE_DPI, bbox_inches="tight")
    return matched_section(table, name)


def site_command(out: Path | str, db_label: str, tasks: list[str] | None, max_loss: float) -> str:
    """The `prunebench site` command that writes this site again."""
    args = ["prunebench", "site", "--out", str(out), "--db", db_label]
    if tasks:
        args += ["--tasks", ",".join(tasks)]
    if max_loss != DEFAULT_MAX_LOSS:
        args += ["--max-loss", f"{max_loss:g}"]
    return " ".join(shlex.quote(a) for a in args)


def build_site(db: Path | str, out: Path | str, tasks: list[str] | None = None, max_loss: float = DEFAULT_MAX_LOSS,
               data_dir: Path | None = None, command: str | None = None,
               paper_report: Callable[[Path, Path, Path, str], Path] | None = None,
               matched: Sequence[CurveSettings | tuple[CurveSettings, Path]] = ()) -> Site:
    """Write the site for `tasks` (default: every task with runs in the store) into `out`. The store path is
    shown (and used in the rerun commands) as given. `paper_report(report_dir, db, data_dir, command)` writes
    the DT-paper report from the store and returns its markdown (the CLI passes the suite's; None: no report
    page). `matched`: the curves whose matched-compression tables open the first page (those of the chosen
    tasks), each with the store of its runs (`(settings, store)`; bare settings: this site's store).
    ValueError for a task without runs; FileNotFoundError without a store; MissingExtraError without
    python-markdown."""
    markdown_module = require_markdown()
    db_label = str(db)
    db, out = Path(db), Path(out)
    if not db.is_file():
        raise FileNotFoundError(f"no result store at {db}")
    site = Site(out)
    t0 = time.perf_counter()
    present = store_tasks(db)
    if tasks:
        absent = [t for t in tasks if t not in present]
        if absent:
            raise ValueError(f"no runs of task(s) {', '.join(absent)} in {db} (tasks with runs: "
                             f"{', '.join(present) or 'none'})")
    chosen = list(dict.fromkeys(tasks)) if tasks else present
    command = command or site_command(out, db_label, list(tasks) if tasks else None, max_loss)
    footer = _footer(db_label, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), command)
    out.mkdir(parents=True, exist_ok=True)

    boards = []
    for task in chosen:
        t = time.perf_counter()
        board = build_leaderboard(db, task, max_loss, db_label=db_label)
        board.to_csv(out / f"{task}.csv")
        site.seconds[f"{task} leaderboard"] = time.perf_counter() - t
        t = time.perf_counter()
        figures_html = _figures(db, task, out, db_label)[0] if len(board.rows) else ""
        site.seconds[f"{task} figures"] = time.perf_counter() - t
        path = out / f"{task}.html"
        path.write_text(task_page(board, figures_html, footer))
        site.pages.append(path)
        boards.append(board)

    title = "DT-paper report"
    if paper_report is not None:
        t = time.perf_counter()
        from prunebench.data import default_data_dir

        report_dir = out / "dt-paper"
        report_command = " ".join(shlex.quote(a) for a in ["prunebench", "reproduce", "dt-paper", "--out",
                                                           str(report_dir), "--db", db_label, "--report-only"])
        readme = paper_report(report_dir, db, data_dir if data_dir is not None else default_data_dir(), report_command)
        title = readme.read_text().splitlines()[0].lstrip("# ").strip() or "DT-paper report"
        path = report_dir / "index.html"
        path.write_text(report_page(markdown_module, readme, footer))
        site.pages.append(path)
        site.seconds["dt-paper report"] = time.perf_counter() - t

    t = time.perf_counter()
    sources = [entry if isinstance(entry, tuple) else (entry, db) for entry in matched]
    sections = [_matched(Path(store), settings, out, db_label if Path(store) == db else str(store))
                for settings, store in sources if settings.task in chosen]
    site.seconds["matched"] = time.perf_counter() - t
    path = out / "index.html"
    path.write_text(index_page(boards, title, footer, [s for s in sections if s]))
    site.pages.insert(0, path)
    site.seconds["total"] = time.perf_counter() - t0
    return site
