"""The README's headline comparison: every method's test accuracy at matched compression on each LeNet, from the
matched-compression tables `prunebench matched` wrote (`leaderboards/<task>-matched.json` names the settings
and the store; the table is rebuilt from that store, `report.matched.read_matched`). Written between the
README's `<!-- matched:start -->` and `<!-- matched:end -->` markers.

    python benchmarks/matched_headline.py [--matched-dir leaderboards] [--readme README.md]

A cell is the test accuracy (%, mean ± half-width of the 95% CI over its seeds) of the method's seeds at the
knob value its search found for the target (from compression alone); **bold** the best of the column, ≈ not
significantly worse than it (Welch, p = 0.05); the full cells (compression reached, loss against dense, rerun
commands) are in `leaderboards/<task>-matched.md`. A task without a matched table is left out.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from prunebench.report import stats
from prunebench.report.leaderboard import shown_name
from prunebench.report.matched import (
    TIED_MARK,
    MatchedCell,
    MatchedTable,
    accuracy_text,
    build_matched,
    read_matched,
)

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}
START, END = "<!-- matched:start -->", "<!-- matched:end -->"


def short_cell(c: MatchedCell) -> str:
    """'**97.87 ± 0.29**', '97.64 ± 0.30 ≈', 'off target (1434.5x)', 'unreached (≤ 57.5x)', 'searching'."""
    if c.status in ("searching", "exhausted"):
        return c.status
    if c.status == "unreached":
        reach = re.search(r"at (most|least) ([0-9.]+x)", c.note)
        return f"unreached ({'≤' if reach and reach[1] == 'most' else '≥'} {reach[2]})" if reach else "unreached"
    if not c.has_accuracy:
        return "training"
    text = accuracy_text(c)
    if c.versus_best == "off target":
        return f"{text} (off target: {stats.mean(c.compression):.0f}x)"
    text = f"**{text}**" if c.versus_best == "best" else text
    seeds = "" if len(c.seeds) == c.planned_seeds else f" ({len(c.seeds)} seeds)"
    return text + {"tied": f" {TIED_MARK}", "n/a": " (n/a)"}.get(c.versus_best, "") + seeds


def task_lines(table: MatchedTable, title: str) -> list[str]:
    settings = table.settings
    targets = settings.targets
    dense = [c.loss[i] + c.accuracy[i] for c in table.cells if c.has_accuracy for i in range(len(c.accuracy))
             if math.isfinite(c.loss[i])]
    lines = [f"**{title}** (dense: {stats.mean(dense):.2f} %; written by `{table.command}`)", "",
             "| method | " + " | ".join(f"{t:g}x" for t in targets) + " |",
             "|---|" + "---:|" * len(targets)]
    for method in settings.methods:
        lines.append(f"| {shown_name(method)} | "
                     + " | ".join(short_cell(table.cell(method, t)) for t in targets) + " |")
    return lines + [""]


def section(matched_dir: Path, default_db: Path) -> str:
    parts: list[str] = []
    for task, title in TASKS.items():
        path = matched_dir / f"{task}-matched.json"
        if not path.is_file():
            continue
        settings, db = read_matched(path, default_db)
        label = str(db.relative_to(ROOT)) if db.is_absolute() and db.is_relative_to(ROOT) else str(db)
        table = build_matched(db, settings, db_label=label)
        parts += task_lines(table, title)
    return "\n".join(parts).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matched-dir", type=Path, default=ROOT / "leaderboards")
    parser.add_argument("--db", type=Path, default=ROOT / "leaderboards" / "foundation" / "matched.sqlite",
                        help="Store for a JSON whose recorded store is absent.")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    text = args.readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme} lacks the {START} / {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    args.readme.write_text(head + START + "\n" + section(args.matched_dir, args.db) + "\n" + END + tail)
    print(f"wrote the matched section of {args.readme}")


if __name__ == "__main__":
    main()
