"""HTML building blocks of the reports: one page skeleton, tables, and the small inline script.

Pages are self-contained apart from their figures, which they link relative to ``output_dir`` (PNG files
beside the pages), so the folder can be moved, shared or opened offline from a cluster's file system:
no fonts, scripts or styles are fetched from anywhere. The inline script (no library) sorts tables by
a click on a column header and keeps the per-image QC ratings (pass / fail / uncertain) in the
browser's ``localStorage``, keyed by the derivatives folder and the image, with an export to TSV.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1280px;
     padding:0 1em;color:#1b1b1b;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.3em}
table.t{border-collapse:collapse;font-size:12px;margin:.4em 0}
table.t td,table.t th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:middle}
table.t th{background:#f3f3f3}th.sortable{cursor:pointer}th.sortable:after{content:" \\2195";color:#999}
.flag{color:#a30000;font-weight:600}.ok{color:#116611}.muted{color:#666;font-size:12px}
.warn{background:#fff6d6;border-left:4px solid #e0a800;padding:.3em .6em;margin:.3em 0;font-size:13px}
figure{margin:.5em 0}figure img{max-width:100%;background:#000}figcaption{font-size:12px;color:#444}
img.thumb{width:112px;height:112px;object-fit:contain;background:#000}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
nav a{margin-right:1em}code{font-size:12px}
"""

SCRIPT = """
(function(){
  var store = 'neuroseg-qc:' + (document.body.dataset.dataset || '');
  function load(){ try { return JSON.parse(localStorage.getItem(store) || '{}'); } catch (e) { return {}; } }
  function save(r){ try { localStorage.setItem(store, JSON.stringify(r)); } catch (e) {} }
  var ratings = load();
  document.querySelectorAll('select.rating').forEach(function(sel){
    if (ratings[sel.dataset.key]) { sel.value = ratings[sel.dataset.key].rating; }
    sel.addEventListener('change', function(){
      var r = load();
      if (sel.value) { r[sel.dataset.key] = {rating: sel.value, task: sel.dataset.task,
                                             participant: sel.dataset.participant}; }
      else { delete r[sel.dataset.key]; }
      save(r);
    });
  });
  var button = document.getElementById('export-ratings');
  if (button) { button.addEventListener('click', function(){
    var r = load(), lines = ['image\\ttask\\tparticipant_id\\trating'];
    document.querySelectorAll('select.rating').forEach(function(sel){
      var v = r[sel.dataset.key];
      lines.push([sel.dataset.key, sel.dataset.task, sel.dataset.participant, v ? v.rating : 'n/a'].join('\\t'));
    });
    var blob = new Blob([lines.join('\\n') + '\\n'], {type: 'text/tab-separated-values'});
    var a = document.createElement('a');
    a.href = URL.createObjectURL(blob); a.download = 'qc_ratings.tsv';
    document.body.appendChild(a); a.click(); a.remove();
  }); }
  document.querySelectorAll('th.sortable').forEach(function(th){
    th.addEventListener('click', function(){
      var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
      var asc = th.dataset.order !== 'asc'; th.dataset.order = asc ? 'asc' : 'desc';
      var rows = Array.prototype.slice.call(body.rows);
      function value(row){ var c = row.cells[col]; var s = c.dataset.sort !== undefined ? c.dataset.sort : c.textContent;
                           var n = parseFloat(s); return isNaN(n) ? s.toLowerCase() : n; }
      rows.sort(function(a, b){ var x = value(a), y = value(b);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
      rows.forEach(function(row){ body.appendChild(row); });
    });
  });
})();
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def number(value: object, digits: int = 2) -> str:
    """A table cell's text: numbers rounded, missing values ``n/a``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):  # counts read back from a TSV are floats: 3.0 lesions reads "3"
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.{digits}f}"
    return esc(value)


def page(title: str, body: str, dataset: str) -> str:
    """A whole HTML page; ``dataset`` (the derivatives folder) keys the stored QC ratings."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<style>{STYLE}</style></head>"
            f"<body data-dataset=\"{esc(dataset)}\">{body}<script>{SCRIPT}</script></body></html>\n")


def table(frame: pd.DataFrame, digits: int = 2, sortable: bool = False, max_rows: int | None = None) -> str:
    """A DataFrame as an HTML table (numbers rounded to ``digits``); ``max_rows`` cuts long tables
    with a note (the TSV holds them all)."""
    shown = frame if max_rows is None else frame.head(max_rows)
    th = '<th class="sortable">' if sortable else "<th>"
    head = "".join(f"{th}{esc(c)}</th>" for c in shown.columns)
    rows = "".join("<tr>" + "".join(f"<td>{number(v, digits)}</td>" for v in row) + "</tr>"
                   for row in shown.itertuples(index=False))
    note = (f"<p class=\"muted\">{len(frame) - len(shown)} more rows in the TSV file.</p>"
            if max_rows is not None and len(frame) > max_rows else "")
    return f"<table class=\"t\"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{note}"


def key_values(pairs: Iterable[tuple[str, object]], digits: int = 2) -> str:
    """A two-column table of named values."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{number(v, digits)}</td></tr>" for k, v in pairs)
    return f"<table class=\"t\"><tbody>{rows}</tbody></table>"


def figure(src: str, caption: str, alt: str | None = None) -> str:
    return (f"<figure><img src=\"{esc(src)}\" alt=\"{esc(alt or caption)}\" loading=\"lazy\">"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def rating(key: str, task: str, participant: str) -> str:
    """The pass / fail / uncertain control of one image (stored in the browser)."""
    options = "".join(f"<option value=\"{v}\">{v or '–'}</option>" for v in ("", "pass", "fail", "uncertain"))
    return (f"<select class=\"rating\" aria-label=\"QC rating of {esc(key)}\" data-key=\"{esc(key)}\" "
            f"data-task=\"{esc(task)}\" data-participant=\"{esc(participant)}\">{options}</select>")


def warnings_list(messages: Sequence[str]) -> str:
    return "".join(f"<div class=\"warn\">{esc(m)}</div>" for m in messages)
