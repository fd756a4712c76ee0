"""``DiffResult.to_html``: one self-contained HTML page of a comparison.

The page carries its data as JSON and draws itself with a short script (no network, no files
besides itself): the verdict, the first divergence, a chart of each compared call's max relative
difference along the base model's call order (log scale, the tolerance drawn, the first divergence
marked), and the model tree with base and raw paths side by side, the first divergence marked.
A training comparison adds the step and stage of the first difference, both models' loss per step, and a
layer x step grid of max relative differences with the first divergence outlined.
"""
from __future__ import annotations

import html
import json
import math
import os


def _num(x):
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def page_data(result) -> dict:
    """What the page shows, as plain JSON-ready data."""
    first = result.first_diff
    calls = [dict(order=ld.order, base=ld.base_path, raw=ld.raw_path, base_class=ld.base_class,
                  raw_class=ld.raw_class, call=ld.call, output=ld.output, max_abs=_num(ld.max_abs_diff),
                  max_rel=_num(ld.max_rel_diff), mismatched=ld.mismatched, total=ld.total, ok=ld.ok,
                  note=ld.note, status="ok" if ld.ok else "diff") for ld in result.layers]
    calls += [dict(order=nc.order, base=nc.base_path, raw=nc.raw_path, base_class=nc.base_class,
                   raw_class=nc.raw_class, call=nc.call, status="not comparable", reason=nc.reason)
              for nc in result.not_comparable]
    calls.sort(key=lambda c: c["order"])
    return dict(
        title=f"auto_diff {result.base} -> {result.raw}",
        ok=result.ok, base=result.base, raw=result.raw, phase=result.phase, atol=result.atol, rtol=result.rtol,
        final=dict(max_abs=_num(result.max_abs_diff), max_rel=_num(result.max_rel_diff),
                   mismatched=result.mismatched, total=result.total, base_structure=result.output_structure,
                   raw_structure=result.raw_output_structure),
        first=None if first is None else dict(
            base=first.base_path, raw=first.raw_path, base_class=first.base_class, raw_class=first.raw_class,
            order=first.order, call=first.call, output=first.output, raw_output=first.raw_output or first.output,
            base_shape=list(first.base_shape), raw_shape=list(first.raw_shape), max_abs=_num(first.max_abs_diff),
            max_rel=_num(first.max_rel_diff), mismatched=first.mismatched, total=first.total,
            inputs_agree=first.inputs_agree, note=first.note),
        first_grad=None if result.first_grad_diff is None else str(result.first_grad_diff),
        calls=calls,
        tree=[dict(depth=ln.depth, base=ln.base_path, raw=ln.raw_path, base_class=ln.base_class,
                   raw_class=ln.raw_class, status=ln.status) for ln in result.tree],
        notes=list(result.notes),
        text=str(result),
        training=bool(getattr(result, "training", False)),
        step=getattr(result, "step", None),
        stage=getattr(result, "stage", None),
        stage_text=next((ln for ln in str(result).splitlines() if ln.startswith("first difference: step")), ""),
        steps=_steps(result),
    )


def _steps(result) -> dict:
    """Per step: both losses, the stage, and each compared layer's max relative difference (the layer x step grid;
    rows in the first step's base call order, keyed by base path and call number)."""
    records = list(getattr(result, "steps", []) or [])
    rows, index = [], {}
    for rec in records:
        for ld in rec.layers:
            key = (ld.base_path, ld.call, ld.output)
            if key not in index:
                index[key] = len(rows)
                rows.append(dict(base=ld.base_path, raw=ld.raw_path, call=ld.call, output=ld.output,
                                 base_class=ld.base_class))
    cells = [[None] * len(records) for _ in rows]
    for j, rec in enumerate(records):
        for ld in rec.layers:
            cells[index[(ld.base_path, ld.call, ld.output)]][j] = dict(rel=_num(ld.max_rel_diff), ok=ld.ok)
    first_row = None
    if result.stage == "forward" and result.first_diff is not None:
        f = result.first_diff
        first_row = index.get((f.base_path, f.call, f.output))
    return dict(
        records=[dict(step=rec.step, stage=rec.stage,
                      loss=None if rec.loss is None else [_num(rec.loss[0]), _num(rec.loss[1])],
                      grads_bad=sum(not g.ok for g in rec.grads), weights_bad=sum(not w.ok for w in rec.weights))
                 for rec in records],
        rows=rows, cells=cells, first_row=first_row)


def write_html(result, path) -> str:
    data = json.dumps(page_data(result)).replace("</", "<\\/")  # no "</script>" inside the script
    title = html.escape(f"auto_diff {result.base} -> {result.raw}: {'OK' if result.ok else 'MISMATCH'}")
    page = _PAGE.replace("__TITLE__", title).replace("__DATA__", data)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
h3 { font-size: 1em; margin: 1em 0 .3em; }
.verdict { font-weight: bold; padding: .1em .5em; border-radius: 4px; color: #fff; }
.verdict.ok { background: #2a7d2e; } .verdict.bad { background: #b3261e; }
#first-divergence { border-left: 4px solid #b3261e; background: #fdf1f0; padding: .5em 1em; }
#first-divergence.none { border-color: #2a7d2e; background: #eef7ee; }
code, td { font-family: ui-monospace, monospace; font-size: 12.5px; }
table { border-collapse: collapse; }
td, th { padding: 1px 8px; text-align: left; white-space: nowrap; }
th { border-bottom: 1px solid #999; }
tr.diff td.status { color: #b3261e; } tr.ok td.status { color: #2a7d2e; }
tr.nc td.status, tr.other td.status { color: #777; }
tr.first { background: #ffd9d6; font-weight: bold; }
svg { border: 1px solid #ddd; background: #fff; }
.dot-ok { fill: #2a7d2e; } .dot-diff { fill: #b3261e; } .dot-nc { fill: #999; }
.muted { color: #777; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div id="summary"></div>
<h2>First divergence</h2>
<div id="first-divergence"></div>
<h2>Max relative difference per call (base call order, log scale)</h2>
<div id="chart"></div>
<div class="muted">green: within atol + rtol&middot;max|base| (the tolerance is scaled by each tensor); red: outside; grey, at the bottom: not comparable
(outputs that cannot be aligned). Hover a dot for the layer.</div>
<section id="steps-section" hidden>
<h2>Training steps</h2>
<div id="first-stage"></div>
<h3>Loss per step</h3>
<div id="loss-chart"></div>
<h3>Max relative difference per layer and step</h3>
<div id="grid"></div>
<div class="muted">one column per step, one row per compared layer call (base call order); colour: log10 of the max
relative difference, green within tolerance, red outside; the first divergence is outlined. Hover a cell.</div>
</section>
<h2>Model tree (base &rarr; raw)</h2>
<table id="tree"><thead><tr><th></th><th>base</th><th>raw</th><th class="status">status</th></tr></thead>
<tbody></tbody></table>
<h2>Notes</h2>
<ul id="notes"></ul>
<details><summary>Text report</summary><pre id="text"></pre></details>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const el = (tag, attrs, text) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const P = p => p === "" ? "<root>" : p;
const fmt = x => typeof x === "number" ? x.toPrecision(3) : String(x);
const num = x => x === "inf" ? Infinity : x === "nan" ? NaN : x;

document.getElementById("title").append(D.title + " ",
  el("span", {class: "verdict " + (D.ok ? "ok" : "bad")}, D.ok ? "OK" : "MISMATCH"));
document.getElementById("summary").append(
  el("div", {}, `${D.phase}, atol=${D.atol}, rtol=${D.rtol}`),
  el("div", {}, `final outputs: max abs diff ${fmt(D.final.max_abs)}, max rel diff ${fmt(D.final.max_rel)}, ` +
                `${D.final.mismatched} of ${D.final.total} values outside tolerance`),
  el("div", {class: "muted"}, `base ${D.final.base_structure}; raw ${D.final.raw_structure}`));

const fd = document.getElementById("first-divergence");
if (D.first) {
  const f = D.first;
  fd.append(el("div", {}, `call ${f.order + 1} in the base model's call order` + (f.call ? ` (call ${f.call + 1} of this module)` : "")),
    el("div", {id: "first-base"}, `base ${P(f.base)} (${f.base_class})  ${f.output} [${f.base_shape.join(", ")}]`),
    el("div", {id: "first-raw"}, `raw  ${P(f.raw)} (${f.raw_class})  ${f.raw_output} [${f.raw_shape.join(", ")}]`),
    el("div", {}, `max abs diff ${fmt(f.max_abs)}, max rel diff ${fmt(f.max_rel)}, ${f.mismatched} of ${f.total} values outside tolerance`));
  if (f.note) fd.append(el("div", {class: "muted"}, f.note));
  if (f.inputs_agree === true) fd.append(el("div", {id: "first-inputs"}, "its inputs agree: the difference is made inside this layer"));
  else if (f.inputs_agree === false) fd.append(el("div", {id: "first-inputs"}, "its inputs already differ: the difference comes from code no paired layer covers, run before it"));
} else if (D.stage_text) {
  fd.textContent = "every compared call agrees; " + D.stage_text;
} else {
  fd.className = "none";
  fd.textContent = D.calls.length ? "none: every compared call agrees" : "no call compared";
}
if (D.first_grad) fd.append(el("div", {}, "first gradient difference: " + D.first_grad));

// chart: one dot per call, y = log10(max rel diff), the tolerance line, the first divergence marked
(function chart() {
  const W = 900, H = 260, L = 50, R = 10, T = 10, B = 30, SVG = "http://www.w3.org/2000/svg";
  const s = document.createElementNS(SVG, "svg");
  s.setAttribute("width", W); s.setAttribute("height", H); s.setAttribute("id", "chart-svg");
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    s.appendChild(e); return e;
  };
  const lo = -12, hi = 1, n = Math.max(1, D.calls.length);
  const X = i => L + (W - L - R) * (n === 1 ? 0.5 : i / (n - 1));
  const Y = v => { const l = Math.min(hi, Math.max(lo, Math.log10(Math.max(v, 1e-12)))); return T + (H - T - B) * (hi - l) / (hi - lo); };
  for (let e = lo; e <= hi; e += 2) {
    add("line", {x1: L, x2: W - R, y1: Y(10 ** e), y2: Y(10 ** e), stroke: "#eee"});
    add("text", {x: 4, y: Y(10 ** e) + 4, "font-size": 10}, "1e" + e);
  }
  add("line", {x1: L, x2: W - R, y1: Y(D.rtol), y2: Y(D.rtol), stroke: "#e0a000", "stroke-dasharray": "4 3"});
  add("text", {x: W - R - 70, y: Y(D.rtol) - 3, "font-size": 10, fill: "#a07000"}, "rtol " + D.rtol);
  add("text", {x: L, y: H - 8, "font-size": 10}, "call order (base) \\u2192");
  D.calls.forEach((c, i) => {
    if (D.first && c.order === D.first.order) {
      add("line", {x1: X(i), x2: X(i), y1: T, y2: H - B, stroke: "#b3261e", id: "first-marker"});
      add("text", {x: Math.min(X(i) + 4, W - 250), y: T + 12, "font-size": 11, fill: "#b3261e", id: "first-label"},
          "first divergence: " + P(c.base));
    }
    const v = c.status === "not comparable" ? 1e-12 : num(c.max_rel);
    const dot = add("circle", {cx: X(i), cy: c.status === "not comparable" ? H - B : Y(isNaN(v) ? 10 : v), r: 3,
                               class: c.status === "ok" ? "dot-ok" : c.status === "diff" ? "dot-diff" : "dot-nc"});
    const t = document.createElementNS(SVG, "title");
    t.textContent = `${c.order + 1}: ${P(c.base)} -> ${P(c.raw)}: ` +
      (c.status === "not comparable" ? "not comparable: " + c.reason : `max rel diff ${fmt(c.max_rel)}, max abs diff ${fmt(c.max_abs)}`);
    dot.appendChild(t);
  });
  document.getElementById("chart").appendChild(s);
})();

// training: the loss of both models per step, and the layer x step grid of relative differences
(function steps() {
  if (!D.training) return;
  const S = D.steps, SVG = "http://www.w3.org/2000/svg";
  document.getElementById("steps-section").hidden = false;
  document.getElementById("first-stage").textContent = D.stage_text || "every step agrees";
  const mk = (parent, tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e); return e;
  };
  const n = S.records.length;
  const losses = S.records.filter(r => r.loss).flatMap(r => r.loss.map(num)).filter(v => isFinite(v));
  if (losses.length) {
    const W = 600, H = 200, L = 60, R = 90, T = 10, B = 30;
    const s = mk(document.getElementById("loss-chart"), "svg", {width: W, height: H, id: "loss-svg"});
    let lo = Math.min(...losses), hi = Math.max(...losses);
    if (hi - lo < 1e-12) { lo -= 1; hi += 1; }
    const X = i => L + (W - L - R) * (n === 1 ? 0.5 : i / (n - 1));
    const Y = v => T + (H - T - B) * (hi - v) / (hi - lo);
    mk(s, "text", {x: 4, y: Y(hi) + 4, "font-size": 10}, fmt(hi));
    mk(s, "text", {x: 4, y: Y(lo) + 4, "font-size": 10}, fmt(lo));
    mk(s, "text", {x: L, y: H - 8, "font-size": 10}, "step \u2192");
    [["base", 0, "#1f5fa8"], ["raw", 1, "#d9822b"]].forEach(([name, k, colour]) => {
      const pts = S.records.map((r, i) => r.loss ? `${X(i)},${Y(num(r.loss[k]))}` : null).filter(Boolean);
      mk(s, "polyline", {points: pts.join(" "), fill: "none", stroke: colour, "stroke-width": 2, id: "loss-" + name,
                         "stroke-dasharray": k ? "5 3" : ""});
      S.records.forEach((r, i) => {
        if (!r.loss) return;
        const c = mk(s, "circle", {cx: X(i), cy: Y(num(r.loss[k])), r: 3, fill: colour, class: "loss-dot-" + name});
        mk(c, "title", {}, `step ${r.step}: ${name} loss ${r.loss[k]}`);
      });
      mk(s, "text", {x: W - R + 8, y: T + 14 + 14 * k, "font-size": 11, fill: colour}, name + " " + D[name].split(":")[0]);
    });
    if (D.step !== null) mk(s, "line", {x1: X(D.step), x2: X(D.step), y1: T, y2: H - B, stroke: "#b3261e",
                                        "stroke-dasharray": "3 3", id: "loss-first-step"});
  }
  const rows = S.rows, cw = Math.max(14, Math.min(60, 500 / Math.max(1, n))), ch = 12, left = 200, top = 24;
  const g = mk(document.getElementById("grid"), "svg",
               {width: left + cw * n + 20, height: top + ch * rows.length + 10, id: "grid-svg"});
  S.records.forEach((r, j) => mk(g, "text", {x: left + cw * j + 2, y: 14, "font-size": 10,
                                             fill: r.stage ? "#b3261e" : "#222"}, String(r.step)));
  const colour = c => {
    if (!c) return "#eee";
    const v = num(c.rel), l = Math.min(0, Math.max(-12, Math.log10(Math.max(isNaN(v) ? 1 : v, 1e-12))));
    const t = (l + 12) / 12;  // 0 (1e-12) .. 1 (1)
    return c.ok ? `hsl(130, 45%, ${85 - 45 * t}%)` : `hsl(4, 75%, ${60 - 20 * t}%)`;
  };
  rows.forEach((row, i) => {
    mk(g, "text", {x: 2, y: top + ch * i + 9, "font-size": 9}, `${P(row.base)}${row.call ? " #" + (row.call + 1) : ""}`);
    S.cells[i].forEach((c, j) => {
      const rect = mk(g, "rect", {x: left + cw * j, y: top + ch * i, width: cw - 1, height: ch - 1, fill: colour(c),
                                  class: !c ? "cell-none" : c.ok ? "cell-ok" : "cell-diff"});
      mk(rect, "title", {}, `step ${j}, ${P(row.base)} (${row.base_class}) ${row.output}: ` +
                            (c ? `max rel diff ${fmt(c.rel)}` : "not compared"));
    });
  });
  if (S.first_row !== null && D.step !== null) {
    mk(g, "rect", {x: left + cw * D.step - 1, y: top + ch * S.first_row - 1, width: cw + 1, height: ch + 1,
                   fill: "none", stroke: "#000", "stroke-width": 2, id: "grid-first"});
  } else if (D.step !== null) {
    mk(g, "rect", {x: left + cw * D.step - 1, y: top - 2, width: cw + 1, height: ch * rows.length + 2,
                   fill: "none", stroke: "#000", "stroke-width": 2, id: "grid-first"});
  }
})();

// tree: base and raw side by side, the first divergence marked
const body = document.querySelector("#tree tbody");
for (const ln of D.tree) {
  const isFirst = D.first && ln.base === D.first.base && ln.raw === D.first.raw;
  const cls = isFirst ? "first" : ln.status.startsWith("DIFF") ? "diff" : ln.status === "ok" ? "ok" :
              ln.status === "not comparable" ? "nc" : "other";
  const tr = el("tr", {class: cls + (isFirst ? " diff" : "")});
  if (isFirst) tr.id = "first-divergence-row";
  const pad = "\\u00a0\\u00a0".repeat(ln.depth);
  const name = p => p === "" ? "<root>" : p.split(".").pop();
  tr.append(el("td", {}, isFirst ? ">>" : ""),
    el("td", {title: P(ln.base)}, `${pad}${name(ln.base)} (${ln.base_class})`),
    el("td", {title: P(ln.raw)}, `${pad}${name(ln.raw)} (${ln.raw_class})`),
    el("td", {class: "status"}, ln.status));
  body.appendChild(tr);
}
const notes = document.getElementById("notes");
for (const n of D.notes) notes.appendChild(el("li", {}, n));
if (!D.notes.length) notes.appendChild(el("li", {class: "muted"}, "none"));
document.getElementById("text").textContent = D.text;
document.body.setAttribute("data-rendered", "yes");
</script>
</body>
</html>
"""
