"""`prunebench site` on a store filled by hand (tests/test_report.py's rows plus a reconstruction), the task page
rendered by headless Chromium: the table the page's script draws is read back from the DOM and checked against
the store (hand-computed means), against `prunebench leaderboard` (same rows, ranking and rerun commands), and
sorted by a URL hash. Without `chromium` on PATH the browser tests skip, unless PRUNEBENCH_REQUIRE_BROWSER=1
(as in .ci/run), which makes them fail."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunebench.cli import main
from prunebench.store import ResultStore

#: Display rows in leaderboard rank order: (method as shown, setting, accuracy %, loss pp, compression). By hand
#: from `fill` (+ ltp): dynthresh 97.6/98.0/97.5 % at 80/90/100x (losses 0.4/0.2/0.3 pp); dense 98.0/98.2/97.8;
#: the 2,000-iteration dense of seed 5 is its own reference; ltp 97.5 % at 40x (0.5 pp, over the 0.4 pp limit);
#: magnitude 97.0/97.2 % at 12/13x (1.0 pp); dns (seed 5) has no dense of its protocol: last.
EXPECTED = [
    ("dynthresh", "default", "97.70 ± 0.26", "+0.30 ± 0.10", "90.0x ± 10.0"),
    ("dense", "default", "98.00 ± 0.20", "+0.00 ± 0.00", "1.0x ± 0.0"),
    ("dense", "iterations=2000", "99.00", "+0.00", "1.0x"),
    ("ltp (reconstruction)", "default", "97.50", "+0.50", "40.0x"),
    ("magnitude", "rounds=3", "97.10 ± 0.14", "+1.00 ± 0.00", "12.5x ± 0.7"),
    ("dns", "default", "98.10", "no dense run", "60.0x"),
]


class BoardParser(HTMLParser):
    """Headers (label, data-key) and rows (cells, rerun command) of <table id="board"> in a rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[tuple[str, str]] = []
        self.aria_sort: dict[str, str] = {}
        self.rows: list[dict] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self._key = ""
        self._kind = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == "board":
            self._in_table = True
        if not self._in_table:
            return
        if tag == "tr":
            self._kind = a.get("class") or ""
            if self._kind == "row":
                self.rows.append({"cells": [], "command": None})
        elif tag == "th":
            self._cell, self._key = [], a.get("data-key") or ""
            if a.get("aria-sort"):
                self.aria_sort[self._key] = a["aria-sort"]
        elif (tag, self._kind) in (("td", "row"), ("code", "cmd")):
            self._cell = []
        elif tag == "span" and self._cell is not None:
            self._cell.append("\0")  # the sort arrow: cut off below

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        if self._cell is None:
            return
        text = "".join(self._cell).split("\0")[0]
        if tag == "th":
            self.headers.append((text, self._key))
            self._cell = None
        elif tag == "td" and self._kind == "row":
            self.rows[-1]["cells"].append(text)
            self._cell = None
        elif tag == "code" and self._kind == "cmd":
            self.rows[-1]["command"] = text
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def built(tmp_path_factory, fill_board, add_board_run) -> dict:
    root = tmp_path_factory.mktemp("site")
    db = root / "runs.sqlite"
    store = ResultStore(db)
    fill_board(store)
    add_board_run(store, "ltp", 0, 0.975, 40.0, 25.0, [(200, 12.0, 0.970, 20.0), (400, 25.0, 0.975, 40.0)])
    store.close()
    out = root / "site"
    (root / "no-curves").mkdir()  # not the repository's leaderboards/, whose committed curves would open the page
    result = CliRunner().invoke(main, ["site", "--out", str(out), "--db", str(db), "--matched-dir",
                                       str(root / "no-curves")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    board_dir = root / "board"
    lb = CliRunner().invoke(main, ["leaderboard", "--task", "lenet300", "--db", str(db), "--out", str(board_dir)],
                            catch_exceptions=False)
    assert lb.exit_code == 0, lb.output
    with open(board_dir / "lenet300.csv", newline="") as f:
        leaderboard_rows = list(csv.DictReader(f))
    return {"db": db, "out": out, "output": result.output, "leaderboard": leaderboard_rows}


def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    if os.environ.get("PRUNEBENCH_REQUIRE_BROWSER") == "1":
        pytest.fail("PRUNEBENCH_REQUIRE_BROWSER=1 but `chromium` is not on PATH: install it "
                    "(Debian: apt-get install -y chromium) or unset PRUNEBENCH_REQUIRE_BROWSER")
    pytest.skip("`chromium` is not on PATH (set PRUNEBENCH_REQUIRE_BROWSER=1 to fail instead)")


def rendered(page: Path, profile: Path, hash_: str = "") -> BoardParser:
    """The page's DOM after its script ran, in headless Chromium, parsed."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--dump-dom", page.resolve().as_uri() + hash_]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    parser = BoardParser()
    parser.feed(done.stdout)
    assert parser.headers and parser.rows, done.stdout[:2000]
    return parser


def column(parser: BoardParser, label: str) -> list[str]:
    i = [h for h, _ in parser.headers].index(label)
    return [r["cells"][i] for r in parser.rows]


def test_site_files_index_figures_report_and_footer(built):
    out = built["out"]
    for name in ("index.html", "lenet300.html", "lenet300.csv", "dt-paper/index.html", "dt-paper/README.md"):
        assert (out / name).is_file(), name
    assert "wrote " + str(out / "lenet300.html") in built["output"]
    index = (out / "index.html").read_text()
    assert 'href="lenet300.html"' in index and 'href="dt-paper/index.html"' in index
    # 6 rows from 13 finished runs (the interrupted one left out); rank 1 is dynthresh at 90x
    assert "6 rows, 11 finished runs; rank 1: dynthresh (default), compression 90.0x ± 10.0" in index
    page = (out / "lenet300.html").read_text()
    for kind in ("fig1", "pareto", "time"):
        png = out / "figures" / f"lenet300-{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind
        assert f'src="figures/lenet300-{kind}.png"' in page
    assert "left out (not finished): 1 interrupted" in page
    # the DT-paper report rendered from markdown: headings, tables, its figure beside it
    report = (out / "dt-paper" / "index.html").read_text()
    assert "<h2>Table 1: LeNet-300-100, threshold scales</h2>" in report
    assert report.count("<table>") >= 3 and "<th>published CR</th>" in report
    assert '<img alt="Fig. 1" src="fig1.png"' in report and (out / "dt-paper" / "fig1.png").is_file()
    assert f"--db {built['db']} --report-only" in report
    for html_page in (index, page, report):
        footer = html_page[html_page.index("<footer>"):]
        assert f"<code>{built['db']}</code>" in footer
        assert f"<code>prunebench site --out {built['out']} --db {built['db']}</code>" in footer
        assert re.search(r"Generated 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC", footer)
        assert not re.search(r'(src|href)="(https?:)?//|<link', html_page)  # nothing fetched at view time


def test_embedded_rows_are_the_leaderboards(built):
    page = (built["out"] / "lenet300.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="board-data">(.*?)</script>', page, re.S)[1])
    lb = built["leaderboard"]
    assert [r["method"] for r in data["rows"]] == [r["method"] for r in lb]
    assert [r["command"] for r in data["rows"]] == [r["command"] for r in lb]
    keys = [c["key"] for c in data["columns"]]
    assert [r["sort"]["accuracy"] for r in data["rows"]] == pytest.approx([float(r["accuracy_mean"]) for r in lb])
    assert [r["sort"]["compression"] for r in data["rows"]] == pytest.approx([90.0, 1.0, 1.0, 40.0, 12.5, 60.0])
    assert data["rows"][-1]["sort"]["loss"] is None  # dns: no dense reference (NaN is not JSON)
    assert {"rank", "method", "accuracy", "loss", "compression", "to-50x"} <= set(keys)


def test_browser_renders_the_leaderboard_rows(built, tmp_path):
    dom = rendered(built["out"] / "lenet300.html", tmp_path / "profile")
    labels = [h for h, _ in dom.headers]
    assert labels[:9] == ["rank", "method", "setting", "budget", "seeds", "accuracy %", "loss pp", "loss 95% CI",
                          "<= limit"]
    got = list(zip(column(dom, "method"), column(dom, "setting"), column(dom, "accuracy %"), column(dom, "loss pp"),
                   column(dom, "compression"), strict=True))
    assert got == EXPECTED
    assert column(dom, "rank") == ["1", "2", "3", "4", "5", "6"]
    assert column(dom, "seeds")[0] == "3 (0-2)" and column(dom, "loss 95% CI")[0] == "[+0.05, +0.55]"
    # rerun commands: the leaderboard's, row for row, and by hand for two rows
    commands = [r["command"] for r in dom.rows]
    assert commands == [r["command"] for r in built["leaderboard"]]
    db = shlex.quote(str(built["db"]))
    assert commands[0] == f"prunebench sweep --methods dynthresh --tasks lenet300 --seeds 0-2 --db {db}"
    assert commands[4] == f"prunebench sweep --methods magnitude --tasks lenet300 --seeds 0-1 --grid rounds=3 --db {db}"
    assert commands[2].startswith("prunebench sweep --methods dense --tasks lenet300 --seeds 5 --iterations 2000 ")


@pytest.mark.parametrize(("hash_", "order"), [
    # by mean accuracy, highest first: 99.0 / 98.1 / 98.0 / 97.7 / 97.5 / 97.1
    ("#sort=accuracy:desc", [2, 5, 1, 0, 3, 4]),
    # by compression, lowest first; the two 1.0x dense rows keep their rank order
    ("#sort=compression:asc", [1, 2, 4, 3, 5, 0]),
    # by loss, highest first; dns (no dense reference) stays last either way
    ("#sort=loss:desc", [4, 3, 0, 1, 2, 5]),
])
def test_browser_applies_the_sort_hash(built, tmp_path, hash_, order):
    dom = rendered(built["out"] / "lenet300.html", tmp_path / "profile", hash_)
    got = list(zip(column(dom, "method"), column(dom, "setting"), column(dom, "accuracy %"), column(dom, "loss pp"),
                   column(dom, "compression"), strict=True))
    assert got == [EXPECTED[i] for i in order]
    assert column(dom, "rank") == [str(i + 1) for i in order]
    key, direction = hash_.split("=")[1].split(":")
    assert dom.aria_sort == {key: "descending" if direction == "desc" else "ascending"}
    # each command row stays with its row
    assert [r["command"] for r in dom.rows] == [built["leaderboard"][i]["command"] for i in order]


def test_site_without_markdown_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "markdown", None)  # import markdown -> ImportError
    db = tmp_path / "runs.sqlite"
    ResultStore(db).close()
    result = CliRunner().invoke(main, ["site", "--out", str(tmp_path / "site"), "--db", str(db)])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: prunebench site needs python-markdown: pip install 'prunebench[site]'")
    assert not (tmp_path / "site").exists()


def test_site_rejects_a_task_without_runs(built, tmp_path):
    result = CliRunner().invoke(main, ["site", "--out", str(tmp_path / "s"), "--db", str(built["db"]),
                                       "--tasks", "lenet5"])
    assert result.exit_code == 2
    assert "no runs of task(s) lenet5" in result.output and "tasks with runs: lenet300" in result.output


class MatchedParser(HTMLParser):
    """The cells of <table id="matched-<task>"> in a page, row by row (the method first); text in <strong> is
    kept between '**' as in the Markdown table."""

    def __init__(self, task: str) -> None:
        super().__init__()
        self.table_id, self.rows, self._in, self._cell = f"matched-{task}", [], False, None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self._in = True
        elif self._in and tag == "tr":
            self.rows.append([])
        elif self._in and tag in ("td", "th"):
            self._cell = []
        elif self._cell is not None and tag == "strong":
            self._cell.append("**")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in = False
        elif self._cell is not None and tag == "strong":
            self._cell.append("**")
        elif self._cell is not None and tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_the_first_page_says_how_to_make_matched_results_when_there_are_none(built):
    index = (built["out"] / "index.html").read_text()
    assert 'id="no-matched"' in index and "prunebench curve --task T" in index and 'id="matched-' not in index
    assert index.index('id="no-matched"') < index.index("<h2>Leaderboards</h2>")


def test_the_first_page_opens_on_the_matched_table_and_plot(tmp_path, fill_matched):
    db = tmp_path / "runs.sqlite"
    store = ResultStore(db)
    settings = fill_matched(store)
    store.close()
    boards = tmp_path / "boards"
    options = ["--task", "lenet300", "--methods", ",".join(settings.methods), "--targets", "10,50", "--seeds", "0-2",
               "--db", str(db)]
    made = CliRunner().invoke(main, ["matched", *options, "--out", str(boards)], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    out = tmp_path / "site"
    result = CliRunner().invoke(main, ["site", "--out", str(out), "--db", str(db), "--matched-dir", str(boards)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "figures" / "lenet300-matched.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "lenet300-matched.csv").read_text() == (boards / "lenet300-matched.csv").read_text()
    index = (out / "index.html").read_text()
    assert 'id="no-matched"' not in index and 'src="figures/lenet300-matched.png"' in index
    assert index.index('id="matched-lenet300"') < index.index("<h2>Leaderboards</h2>")
    # in the browser: the first page's table is the Markdown table's, cell for cell
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom", (out / "index.html").resolve().as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = MatchedParser("lenet300")
    dom.feed(done.stdout)
    md = [[c.strip().replace("\\|", "|") for c in line.strip("| ").split(" | ")]
          for line in (boards / "lenet300-matched.md").read_text().splitlines() if line.startswith("| ")]
    assert dom.rows == [md[0], *md[1:]] and len(dom.rows) == 4
    assert dom.rows[1][1].startswith("**98.10 ± 0.25** %") and "≈" in dom.rows[2][1]
    assert dom.rows[2][2].startswith("unreached: at most 31.0x")
