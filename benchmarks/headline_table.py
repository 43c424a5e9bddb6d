"""The README's headline table: every method on both LeNets, mean compression and accuracy loss over its
seeds at the method's default setting, beside the figure the DT paper publishes. Generated from the store
and written between the README's `<!-- headline:start -->` and `<!-- headline:end -->` markers.

    python benchmarks/headline_table.py [--db leaderboards/foundation/runs.sqlite] [--readme README.md]

A row is the leaderboard's default-setting row (`prunebench leaderboard --task T`): the task's calibrated
defaults, the default protocol, budget "equal", except for the methods with a published schedule of their
own (magnitude, dns, sparse-vd: budget "paper"), as in the DT-paper report's Table 2. Accuracy loss is
against `dense` of the same seeds and protocol, in percentage points (positive: worse than dense).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from prunebench.report.leaderboard import aggregate, run_table, shown_name
from prunebench.suites.reproduce import PAPER_BUDGET

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}
START, END = "<!-- headline:start -->", "<!-- headline:end -->"


def _cell(cr: float, loss: float, seeds: int) -> str:
    if not math.isfinite(cr):
        return "not run"
    shown_loss = f"{loss:+.2f}" if math.isfinite(loss) else "?"
    return f"{cr:.1f}x, {shown_loss}" + ("" if seeds == 3 else f" ({seeds} seeds)")


def _published(cr: float, loss: float) -> str:
    if not math.isfinite(cr):
        return "-"
    return f"{cr:g}x, {loss:+.2f}" if math.isfinite(loss) else f"{cr:g}x"


def table(db: Path) -> str:
    rows: dict[str, dict[str, str]] = {}
    for task in TASKS:
        frame = aggregate(run_table(db, task))
        for r in frame.to_dict("records"):
            budget = "paper" if r["method"] in PAPER_BUDGET else "equal"
            if r["method"] == "dense" or r["setting"] != "default" or r["budget"] != budget:
                continue
            row = rows.setdefault(r["method"], {"budget": budget})
            row[task] = _cell(r["compression_mean"], r["accuracy_loss_mean"], int(r["seeds"]))
            row[task + "_pub"] = _published(r["published_compression"], r["published_accuracy_loss"])
    head = ("| method | budget | " + " | ".join(f"{name}: measured | {name}: published" for name in TASKS.values())
            + " |\n|---|---|" + "---|---|" * len(TASKS))
    lines = [head]
    order = sorted(rows, key=lambda m: (m != "dynthresh", m))
    for method in order:
        row = rows[method]
        cells = " | ".join(f"{row.get(t, 'not run')} | {row.get(t + '_pub', '-')}" for t in TASKS)
        lines.append(f"| {shown_name(method)} | {row['budget']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=ROOT / "leaderboards/foundation/runs.sqlite")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    text = args.readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{args.readme} has no {START} ... {END} markers")
    text = pattern.sub(lambda _: f"{START}\n{table(args.db)}\n{END}", text)
    args.readme.write_text(text)
    print(f"wrote the headline table into {args.readme}")


if __name__ == "__main__":
    main()
