"""The report page: one self-contained ``index.html`` (inline CSS and JS, images by relative path)."""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from matplotlib.colors import to_hex

from oodseg.report.frames import OOD_COLOURS, FrameGrid
from oodseg.report.tables import RankingTable, format_value

GROUP_TITLES = {"pixel": "Pixel level", "component": "Component level", "calibration": "Calibration"}

STYLE = """
:root{--fg:#1f2933;--muted:#616e7c;--line:#e4e7eb;--head:#f5f7fa;--best:#e3f9e5;--bestfg:#0e5a1b;--accent:#2b6cb0}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:#fbfcfd}
header.top{background:#1f2933;color:#fff;padding:18px 32px}
header.top h1{margin:0;font-size:22px;font-weight:600;letter-spacing:.2px}
header.top p{margin:4px 0 0;color:#cbd2d9;font-size:13px}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;font-size:13px}
nav a{color:var(--accent);text-decoration:none;margin-right:18px}
nav a:hover{text-decoration:underline}
main{max-width:1320px;margin:0 auto;padding:8px 32px 40px}
section.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:18px 22px;margin:22px 0}
h2{margin:0 0 4px;font-size:19px}
h3{margin:22px 0 8px;font-size:15px;color:#323f4b}
p.meta{margin:0 0 12px;color:var(--muted);font-size:13px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;background:var(--head);padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.ranking{width:100%;font-size:13px}
table.ranking th,table.ranking td{padding:5px 10px;border-bottom:1px solid var(--line);white-space:nowrap}
table.ranking thead th{background:var(--head);font-weight:600;text-align:right}
table.ranking thead tr.groups th{text-align:center;color:var(--muted);font-weight:500;font-size:12px;border-bottom:0}
table.ranking thead tr.groups th+th{border-left:2px solid #fff}
table.ranking th.text,table.ranking td.method{text-align:left}
table.ranking td.num{text-align:right}
table.ranking th.sortable{cursor:pointer;user-select:none}
table.ranking th.sortable:hover{background:#e9edf2}
table.ranking th.sortable::after{content:"\\2195";color:#9aa5b1;margin-left:4px;font-size:11px}
table.ranking th[aria-sort=ascending]::after{content:"\\25B2";color:var(--accent)}
table.ranking th[aria-sort=descending]::after{content:"\\25BC";color:var(--accent)}
table.ranking tbody tr:hover{background:#f8fafc}
table.ranking td.best{background:var(--best);color:var(--bestfg);font-weight:700}
table.ranking td.missing{color:#9aa5b1}
span.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:8px;vertical-align:-1px}
p.note{color:var(--muted);font-size:12px;margin:6px 0 0}
figure{margin:10px 0}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:12px;margin-top:4px}
div.scroll{overflow-x:auto;border:1px solid var(--line);border-radius:6px}
table.frames{font-size:12px}
table.frames th,table.frames td{padding:6px;vertical-align:top;text-align:center}
table.frames thead th{background:var(--head);font-weight:600;position:sticky;top:0}
table.frames td img{width:200px;height:auto;display:block;border-radius:3px}
table.frames div.fid{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;color:var(--muted);margin-top:3px;max-width:200px;overflow-wrap:anywhere}
div.cbar{margin-top:4px;font-weight:400;color:var(--muted);font-size:11px}
div.cbar img{width:160px;height:8px;display:block;margin:2px auto 1px;border-radius:2px}
div.cbar span{display:inline-block;width:80px}
div.cbar span.lo{text-align:left}
div.cbar span.hi{text-align:right}
ul.legend{list-style:none;padding:0;margin:6px 0;color:var(--muted);font-size:12px}
ul.legend li{display:inline-block;margin-right:14px}
table.kv td{padding:3px 14px 3px 0;font-size:13px}
table.kv td:first-child{color:var(--muted)}
footer{color:var(--muted);font-size:12px;text-align:center;padding:12px}
footer a{color:var(--accent)}
"""

SORT_SCRIPT = """
(function(){
  function key(cell){var v=cell.getAttribute('data-value');return v===null?null:parseFloat(v);}
  function sortTable(table,th){
    var idx=Array.prototype.indexOf.call(th.parentNode.children,th);
    var text=th.classList.contains('text');
    var current=th.getAttribute('aria-sort');
    var firstDir=text?'ascending':(th.getAttribute('data-higher')==='1'?'descending':'ascending');
    var dir=current?(current==='ascending'?'descending':'ascending'):firstDir;
    var sign=dir==='ascending'?1:-1;
    var body=table.tBodies[0];
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var ca=a.cells[idx],cb=b.cells[idx];
      if(text){return sign*ca.textContent.trim().localeCompare(cb.textContent.trim());}
      var va=key(ca),vb=key(cb);
      if(va===null&&vb===null){return 0;}
      if(va===null){return 1;}
      if(vb===null){return -1;}
      return sign*(va-vb);
    });
    rows.forEach(function(r){body.appendChild(r);});
    th.parentNode.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir);
  }
  document.querySelectorAll('table.ranking').forEach(function(table){
    table.querySelectorAll('th.sortable').forEach(function(th){
      th.addEventListener('click',function(){sortTable(table,th);});
      th.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();sortTable(table,th);}});
    });
  });
})();
"""


@dataclass
class DatasetSection:
    """What the page shows for one dataset: its table, chart paths, frame grid and a caption line."""

    table: RankingTable
    caption: str
    figures: list[tuple[str, str, str]] = field(default_factory=list)  # (title, path, caption)
    frames: FrameGrid | None = None
    frames_after: int = 1  # the example frames follow this many figures (the PR/ROC curves)


@dataclass
class ExtraSection:
    """A meta-classification or training result: heading, key/value facts, charts, notes."""

    anchor: str
    title: str
    facts: list[tuple[str, str]]
    figures: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render_page(title: str, subtitle: str, datasets: list[DatasetSection], extras: list[ExtraSection],
                colours: dict, scales: dict[str, tuple[float, float]], colourbar: str | None,
                downloads: list[str]) -> str:
    """The full HTML of ``index.html``."""
    nav = [f'<a href="#ds-{i}">{escape(s.table.dataset)}</a>' for i, s in enumerate(datasets)]
    nav += [f'<a href="#{escape(x.anchor)}">{escape(x.title)}</a>' for x in extras]
    body = [_dataset_html(i, s, colours, scales, colourbar) for i, s in enumerate(datasets)]
    body += [_extra_html(x) for x in extras]
    links = " · ".join(f'<a href="{escape(name)}">{escape(name)}</a>' for name in downloads)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f'<header class="top"><h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header>',
        f"<nav>{''.join(nav)}</nav>", "<main>", *body, "</main>",
        f"<footer>Tables as {links} · generated by oodseg</footer>",
        f"<script>{SORT_SCRIPT}</script>", "</body>", "</html>", ""])


def _table_html(table: RankingTable, colours: dict) -> str:
    groups: list[list] = []
    for col in table.columns:
        if groups and groups[-1][0] == col.group:
            groups[-1][1] += 1
        else:
            groups.append([col.group, 1])
    group_row = '<tr class="groups"><th></th>' + "".join(
        f'<th colspan="{n}">{GROUP_TITLES[g]}</th>' for g, n in groups) + "</tr>"
    heads = ['<th class="sortable text" tabindex="0" data-key="method">Method</th>']
    for col in table.columns:
        unit = " (%)" if col.percent else ""
        direction = "higher is better" if col.higher_is_better else "lower is better"
        heads.append(f'<th class="sortable" tabindex="0" data-key="{col.key}" '
                     f'data-higher="{int(col.higher_is_better)}" title="{escape(col.label)}{unit}, {direction}">'
                     f"{escape(col.header)}</th>")
    rows = []
    for r, (label, values) in enumerate(zip(table.labels, table.values)):
        cells = [f'<td class="method"><span class="swatch" style="background:{to_hex(colours[label])}"></span>'
                 f"{escape(label)}</td>"]
        for c, (col, value) in enumerate(zip(table.columns, values)):
            if value is None:
                cells.append('<td class="num missing" title="not in the results file">—</td>')
            else:
                best = " best" if r in table.best[c] else ""
                cells.append(f'<td class="num{best}" data-key="{col.key}" data-value="{value!r}" '
                             f'title="{value!r}">{format_value(value, col)}</td>')
        rows.append(f'<tr data-method="{escape(label)}">{"".join(cells)}</tr>')
    return (f'<table class="ranking" data-dataset="{escape(table.dataset)}"><thead>{group_row}'
            f'<tr>{"".join(heads)}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _figures_html(figures: list[tuple[str, str, str]]) -> str:
    return "".join(f'<h3>{escape(title)}</h3><figure><img src="{escape(path)}" alt="{escape(title)}">'
                   f"{f'<figcaption>{escape(caption)}</figcaption>' if caption else ''}</figure>"
                   for title, path, caption in figures)


def _frames_html(grid: FrameGrid, scales: dict[str, tuple[float, float]], colourbar: str | None) -> str:
    heads = ["<th>Image</th>", "<th>Ground truth</th>", "<th>Prediction</th>"]
    for method in grid.methods:
        vmin, vmax = scales[method]
        bar = (f'<div class="cbar"><img src="{escape(colourbar)}" alt="colour scale of {escape(method)}">'
               f'<span class="lo">{vmin:.3g}</span><span class="hi">{vmax:.3g}</span></div>') if colourbar else ""
        heads.append(f"<th>{escape(method)}{bar}</th>")
    rows = []
    for row in grid.rows:
        cells = [f'<td><img src="{escape(row.image)}" alt="{escape(row.fid)} image">'
                 f'<div class="fid">{escape(row.fid)}</div></td>']
        for path, what in ((row.ground_truth, "ground truth"), (row.prediction, "prediction"),
                           *((p, f"{m} score") for p, m in zip(row.heatmaps, grid.methods))):
            cells.append(f'<td><img src="{escape(path)}" alt="{escape(row.fid)} {escape(what)}"></td>'
                         if path else '<td class="missing">—</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    legend = "" if grid.semantic else '<ul class="legend"><li>Ground truth:</li>' + "".join(
        f'<li><span class="swatch" style="background:rgb{colour}"></span>{name}</li>'
        for name, colour in zip(("inlier", "anomaly", "void"), OOD_COLOURS.values())) + "</ul>"
    checkpoint = f" Prediction of <code>{escape(grid.checkpoint)}</code>." if grid.checkpoint else ""
    return (f'<h3>Example frames</h3>{legend}'
            f'<div class="scroll"><table class="frames"><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>'
            f'<p class="note">Heatmaps: one colour scale per method over all frames shown '
            f"(1st–99th percentile of its scores; brighter = more anomalous).{checkpoint}</p>")


def _dataset_html(index: int, section: DatasetSection, colours: dict,
                  scales: dict[str, tuple[float, float]], colourbar: str | None) -> str:
    frames = _frames_html(section.frames, scales, colourbar) if section.frames else ""
    return (f'<section class="card dataset" id="ds-{index}"><h2>{escape(section.table.dataset)}</h2>'
            f'<p class="meta">{escape(section.caption)}</p>{_table_html(section.table, colours)}'
            f'<p class="note">Best value per column highlighted; click a header to sort. '
            f"Values in percent except AuSE; — = not in the results file.</p>"
            f"{_figures_html(section.figures[:section.frames_after])}{frames}"
            f"{_figures_html(section.figures[section.frames_after:])}</section>")


def _extra_html(section: ExtraSection) -> str:
    facts = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in section.facts)
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in section.notes)
    return (f'<section class="card" id="{escape(section.anchor)}"><h2>{escape(section.title)}</h2>'
            f'<table class="kv">{facts}</table>{notes}{_figures_html(section.figures)}</section>')
