(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("board-data").textContent);
  var table = document.getElementById("board");
  var state = {key: "rank", dir: "asc"};
  var WRAP = ["setting", "published-compression"];  // text that may be long: wrapped, other cells on one line

  function missing(v) { return v === null || v === undefined; }
  function compare(a, b) {
    var x = a.sort[state.key], y = b.sort[state.key];
    if (missing(x) || missing(y)) {
      if (missing(x) !== missing(y)) { return missing(x) ? 1 : -1; }  // missing values last, either direction
    } else {
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      if (c !== 0) { return state.dir === "desc" ? -c : c; }
    }
    return a.sort.rank - b.sort.rank;
  }
  function fromHash() {
    var m = /(?:^#|&)sort=([A-Za-z0-9_.-]+)(?::(asc|desc))?/.exec(window.location.hash);
    if (!m) { return false; }
    var known = data.columns.some(function (c) { return c.key === m[1]; });
    if (!known) { return false; }
    state = {key: m[1], dir: m[2] || "asc"};
    return true;
  }
  function cell(tag, text, cls) {
    var el = document.createElement(tag);
    el.textContent = text;
    if (cls) { el.className = cls; }
    return el;
  }
  function copy(text, button) {
    function done() { button.textContent = "copied"; setTimeout(function () { button.textContent = "copy"; }, 1200); }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { select(button); });
    } else { select(button); }
  }
  function select(button) {
    var range = document.createRange();
    range.selectNodeContents(button.previousSibling);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    try { if (document.execCommand("copy")) { button.textContent = "copied"; } } catch (e) { /* selected */ }
  }
  function render() {
    table.textContent = "";
    var head = document.createElement("thead"), tr = document.createElement("tr");
    data.columns.forEach(function (c) {
      var th = cell("th", c.label, c.numeric ? "" : "text");
      th.dataset.key = c.key;
      th.title = "sort by " + c.label + " (#sort=" + c.key + ":asc or :desc)";
      if (c.key === state.key) {
        th.setAttribute("aria-sort", state.dir === "asc" ? "ascending" : "descending");
        th.appendChild(cell("span", state.dir === "asc" ? "\u25b2" : "\u25bc", "arrow"));
      }
      th.addEventListener("click", function () {
        var dir = (state.key === c.key && state.dir === "asc") ? "desc" : (state.key === c.key ? "asc"
          : (c.numeric && c.key !== "rank" ? "desc" : "asc"));
        state = {key: c.key, dir: dir};
        history.replaceState(null, "", "#sort=" + c.key + ":" + dir);
        render();
      });
      tr.appendChild(th);
    });
    head.appendChild(tr);
    table.appendChild(head);
    var body = document.createElement("tbody");
    data.rows.slice().sort(compare).forEach(function (r) {
      var row = document.createElement("tr");
      row.className = "row";
      row.dataset.rank = r.sort.rank;
      r.cells.forEach(function (v, i) {
        var c = data.columns[i];
        row.appendChild(cell("td", v, c.numeric ? "" : (WRAP.indexOf(c.key) >= 0 ? "text wrap" : "text")));
      });
      body.appendChild(row);
      var cmd = document.createElement("tr");
      cmd.className = "cmd";
      cmd.dataset.rank = r.sort.rank;
      var td = document.createElement("td");
      td.colSpan = data.columns.length;
      td.appendChild(document.createTextNode("rerun: "));
      td.appendChild(cell("code", r.command));
      var button = cell("button", "copy", "copy");
      button.type = "button";
      button.addEventListener("click", function () { copy(r.command, button); });
      td.appendChild(button);
      cmd.appendChild(td);
      body.appendChild(cmd);
    });
    table.appendChild(body);
  }
  fromHash();
  render();
  window.addEventListener("hashchange", function () { if (fromHash()) { render(); } });
})();
