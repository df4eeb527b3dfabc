"""report.html: the self-contained trade-off explorer, `report.explorer_data` drawn with plotly.

Thin like report.plot_*: every number (fronts, CIs, the operating point under each gap bound)
is computed in Python by `explorer_data` and embedded as JSON; the page's script only switches
the split, looks the slider's bound up in the precomputed selections, and sorts the table.
plotly.js is inlined, so the one file opens from disk with no network. Needs the [html] extra.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from ermgap_ray.config import GAP_PENALTY_OBJECTIVES
from ermgap_ray.data.schema import MODALITIES
from ermgap_ray.registry import FAMILIES, family_style

SPLITS = ("dev", "test")
# matplotlib marker (registry.FAMILY_STYLE) -> plotly symbol: one style table serves both.
_SYMBOLS = {
    "o": "circle",
    "s": "square",
    "D": "diamond",
    "^": "triangle-up",
    "v": "triangle-down",
    "X": "x",
    "P": "cross",
    "h": "hexagon",
}
_KNOB_NAMES = {
    "objective": "objective",
    "p": "p",
    "lambda_mode": "λ mode",
    "lam": "λ",
    "eta": "η",
    "epsilon": "ε",
    "lam_max": "λ_max",
    "dev_gap_metric": "dev gap",
    "groupdro_eta": "η (DRO)",
    "lr": "lr",
    "lora_r": "LoRA r",
    "epochs": "epochs",
}
# How tests and docs/make_report_html_png.py open the page: headless, offline, no sandbox
# (containers), and no background requests (the network is closed; chromium would retry).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _symbol(family: str, hollow: bool) -> str:
    symbol = _SYMBOLS.get(family_style(family)[1], "circle")
    return f"{symbol}-open" if hollow else symbol


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _with_ci(mean: float | None, lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None or lo == hi:
        return _num(mean)
    return f"{_num(mean)} [{_num(lo)}, {_num(hi)}]"


def _knobs(config: Mapping[str, Any]) -> str:
    """The knobs that act in this configuration (an ERM row's p and η do nothing)."""
    objective = config.get("objective")
    names = ["objective"]
    if objective in GAP_PENALTY_OBJECTIVES:
        names += ["p", "lambda_mode", "lam"]
        if config.get("lambda_mode") == "adaptive":
            names += ["eta", "epsilon", "lam_max", "dev_gap_metric"]
    elif objective == "groupdro":
        names.append("groupdro_eta")
    names += ["lr", "lora_r", "epochs"]
    shown = []
    for name in names:
        value = config.get(name)
        if value is not None:
            text = f"{value:g}" if isinstance(value, float) else str(value)
            shown.append(f"{_KNOB_NAMES[name]}={html.escape(text)}")
    return ", ".join(shown)


def _hover(p: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """A point's tooltip: what it is, its knobs, its numbers with CIs, per language."""
    head = f"<b>{html.escape(p['label'])}</b>"
    if p["variant"]:
        head += f" ({html.escape(p['variant'])})"
    head += f" · {html.escape(p['modality'])}"
    if p["kind"] == "trial":
        head += f" · seed {p.get('seed')} · trial {html.escape(p['trial_id'])}"
        ci = "bootstrap 95% CI" if p["utility_lo"] is not None else ""
    else:
        head += f" · {p['n']} seed{'s' * (p['n'] != 1)} (mean)"
        ci = "95% t-CI over seeds" if p["n"] > 1 else "1 seed, no CI"
    if p["reference"]:
        head += " · reference, never selected"
    u, g = labels["utility"], labels["gap"]
    lines = [head, _knobs(p["config"])]
    lines.append(
        f"{p['split']} {u} {_with_ci(p['utility'], p['utility_lo'], p['utility_hi'])} · "
        f"worst-language {g} gap {_with_ci(p['gap'], p['gap_lo'], p['gap_hi'])} pts"
        + (f" ({ci})" if ci else "")
    )
    for name, what in (("utility", u), ("gap", f"{g} gap")):
        cells = [
            f"{lang.upper()} {_with_ci(*v[name])}"
            for lang, v in p["languages"].items()
            if v[name] is not None
        ]
        if cells:
            lines.append(f"{what} by language: " + " · ".join(cells))
    lines.append(f"config {p['group_hash']}")
    return "<br>".join(line for line in lines if line)


def _by_split(
    points: Sequence[Mapping[str, Any]], **match: Any
) -> dict[str, list[Mapping[str, Any]]]:
    """The points of each split matching `match`, in one order (so the splits line up)."""
    return {
        s: sorted(
            (p for p in points if p["split"] == s and all(p[k] == v for k, v in match.items())),
            key=lambda p: (p["group_hash"], p["trial_id"]),
        )
        for s in SPLITS
    }


def _errors(ps: Sequence[Mapping[str, Any]], key: str, color: str) -> dict[str, Any]:
    def span(p: Mapping[str, Any], end: str) -> float | None:
        if p[key] is None or p[f"{key}_{end}"] is None:
            return None
        return abs(p[f"{key}_{end}"] - p[key])

    return {
        "type": "data",
        "symmetric": False,
        "array": [span(p, "hi") for p in ps],
        "arrayminus": [span(p, "lo") for p in ps],
        "color": color,
        "thickness": 1,
        "width": 2,
    }


def _marker_values(
    ps: Sequence[Mapping[str, Any]], labels: Mapping[str, str], color: str, whiskers: bool
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "x": [p["gap"] for p in ps],
        "y": [p["utility"] for p in ps],
        "text": [_hover(p, labels) for p in ps],
        "customdata": [p["group_hash"] for p in ps],
    }
    if whiskers:
        values["error_x"] = _errors(ps, "gap", color)
        values["error_y"] = _errors(ps, "utility", color)
    return values


def _families(points: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {p["family"] for p in points}
    return [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))


def explorer_figure(data: Mapping[str, Any]) -> go.Figure:
    """The plot as plotly draws it first (dev split). Each trace's `meta.splits` holds its
    values per split, which the page swaps in; `meta.kind` is trial | config | front | op."""
    panels, points, labels = data["panels"], data["points"], data["labels"]
    fig = make_subplots(
        rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=panels, horizontal_spacing=0.05
    )
    in_legend: set[str] = set()
    for col, panel in enumerate(panels, start=1):
        here = [p for p in points if p["panel"] == panel]
        hollow = panel in MODALITIES[1:]
        for family in _families(here):
            color = family_style(family)[0]
            label = next(p["label"] for p in here if p["family"] == family)
            for kind in ("trial", "config"):
                splits = {
                    s: _marker_values(ps, labels, color, kind == "config")
                    for s, ps in _by_split(here, family=family, kind=kind).items()
                }
                trial = kind == "trial"
                fig.add_trace(
                    go.Scatter(
                        mode="markers",
                        name=label,
                        legendgroup=family,
                        showlegend=not trial and family not in in_legend,
                        marker={
                            "color": color,
                            "symbol": _symbol(family, hollow and not trial),
                            "size": 6 if trial else 10,
                            "opacity": 0.35 if trial else 1.0,
                            "line": {"width": 0 if trial else 1.5, "color": color},
                        },
                        hoverinfo="text",
                        hoverlabel={"bordercolor": color},
                        meta={"kind": kind, "panel": panel, "splits": splits},
                        **splits["dev"],
                    ),
                    row=1,
                    col=col,
                )
                if not trial:
                    in_legend.add(family)
        fronts = {}
        for s, ps in _by_split(here, kind="config", on_front=True).items():
            ps = sorted(ps, key=lambda p: (p["gap"], p["utility"]))
            fronts[s] = {"x": [p["gap"] for p in ps], "y": [p["utility"] for p in ps]}
        fig.add_trace(
            go.Scatter(
                mode="lines",
                name="Pareto front",
                legendgroup="front",
                showlegend=col == 1,
                line={
                    "color": data["styles"]["front"]["color"],
                    "width": 1.2,
                    "dash": "dash",
                    "shape": "hv",
                },
                hoverinfo="skip",
                meta={"kind": "front", "panel": panel, "splits": fronts},
                **fronts["dev"],
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                mode="markers",
                name="operating point",
                legendgroup="op",
                showlegend=True,  # only the chosen panel's trace has a point, so one entry
                x=[],
                y=[],
                marker={
                    "symbol": "star",
                    "size": 18,
                    "color": "gold",
                    "line": {"color": "black", "width": 1},
                },
                hoverinfo="text",
                meta={"kind": "op", "panel": panel},
            ),
            row=1,
            col=col,
        )
    fig.update_layout(
        template="plotly_white",
        height=560,
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
        hovermode="closest",
        hoverlabel={"align": "left", "bgcolor": "white", "font": {"size": 12, "color": "#222"}},
        legend={
            "orientation": "h",
            "x": 0.5,
            "xanchor": "center",
            "y": -0.16,
            "yanchor": "top",
            "font": {"size": 12},
        },
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13},
    )
    return fig


def _view(data: Mapping[str, Any], fig: go.Figure) -> dict[str, Any]:
    """Per split: axis ranges and titles, the null bands and off-scale notes (layout parts the
    page composes with the bound's shading)."""
    axes = [
        {"x": f"x{i if i > 1 else ''}", "y": f"y{i if i > 1 else ''}", "panel": panel}
        for i, panel in enumerate(data["panels"], start=1)
    ]
    null = data["styles"]["null"]
    splits = {}
    for s in SPLITS:
        info = data["splits"][s]
        ps = [p for p in data["points"] if p["split"] == s]
        ends = [v for p in ps for v in (p["gap"], p["gap_hi"]) if v is not None]
        ends += [n["gap_hi"] for n in info["nulls"]]
        xmax = 1.05 * max(ends, default=1.0) or 1.0
        shapes, notes = [], []
        for ax in axes:
            for n in (n for n in info["nulls"] if n["panel"] == ax["panel"]):
                box = {"xref": ax["x"], "yref": f"{ax['y']} domain", "layer": "below"}
                shapes.append(
                    box
                    | {"type": "rect", "x0": 0, "x1": n["gap_hi"], "y0": 0, "y1": 1}
                    | {"fillcolor": null["color"], "opacity": null["alpha"], "line": {"width": 0}}
                )
                shapes.append(
                    box
                    | {"type": "line", "x0": n["gap"], "x1": n["gap"], "y0": 0, "y1": 1}
                    | {"line": {"color": "#8c8c8c", "width": 1, "dash": "dot"}}
                )
            off = [o for o in info["off_scale"] if o["panel"] == ax["panel"]]
            if off:
                values = "; ".join(f"{o['utility']:.1f} / {o['gap']:.1f}" for o in off)
                notes.append(
                    {
                        "xref": f"{ax['x']} domain",
                        "yref": f"{ax['y']} domain",
                        "x": 0.98,
                        "y": 0.03,
                        "xanchor": "right",
                        "yanchor": "bottom",
                        "showarrow": False,
                        "align": "right",
                        "font": {"size": 11, "color": "#555"},
                        "text": f"zero-shot, off scale:<br>{values}<br>(double-click: show all)",
                    }
                )
        y_range = {"autorange": True} if info["y_range"] is None else _fixed(info["y_range"])
        layout_axes = {"yaxis": {"title": {"text": info["y_title"]}} | y_range}
        for ax in axes:
            name = "xaxis" + ax["x"][1:]
            layout_axes[name] = {"title": {"text": info["x_title"]}} | _fixed([0, xmax])
        splits[s] = {"xmax": xmax, "shapes": shapes, "annotations": notes, "axes": layout_axes}
    base = [a.to_plotly_json() for a in fig.layout.annotations]
    infeasible = data["styles"]["infeasible"]
    return {"axes": axes, "splits": splits, "annotations": base, "infeasible": infeasible}


def _fixed(bounds: Sequence[float]) -> dict[str, Any]:
    return {"range": list(bounds), "autorange": False}


def _script_json(value: Any) -> str:
    """JSON safe inside <script>: no `</` can close the tag early."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False).replace("</", "<\\/")


def _ablation_table(ablation: Mapping[str, Any]) -> str:
    head = "".join(
        f'<th scope="col" title="click to sort">{html.escape(c)}</th>' for c in ablation["columns"]
    )
    body = []
    for row in ablation["rows"]:
        cells = []
        for cell in row["cells"]:
            key = "" if cell["sort"] is None else html.escape(str(cell["sort"]), quote=True)
            text = html.escape(cell["text"])
            cells.append(f'<td data-sort="{key}">{f"<b>{text}</b>" if cell["bold"] else text}</td>')
        cls = ' class="reference"' if row["reference"] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<table id="ablation-table" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def render_report_html(data: Mapping[str, Any]) -> str:
    """The whole page: plotly.js, the figure, `data`'s selection and table, the page script."""
    fig = explorer_figure(data)
    sel = data["selection"]
    page = {
        "selection": sel,
        "configs": data["configs"],
        "labels": data["labels"],
        "view": _view(data, fig),
    }
    config = {"responsive": True, "displaylogo": False}
    figure = json.loads(pio.to_json(fig, validate=False)) | {"config": config}
    ends = [c["checked"] for c in data["configs"].values() if c["checked"] is not None]
    slider_max = min(100.0, float(int(max([sel["bound"], *ends])) + 1))
    others = sel["other_constraints"]
    title = html.escape(data["title"])
    return _PAGE.format(
        title=title,
        run_dir=html.escape(data["run_dir"]),
        n_final=data["n_final"],
        n_candidates=sel["n_candidates"],
        u=html.escape(data["labels"]["utility"]),
        objective=html.escape(sel["objective"]),
        gap_metric=html.escape(sel["gap_metric"]),
        rule=html.escape(sel["rule"]),
        source=html.escape(sel["source"]),
        others=(
            f" The sweep's other constraints ({html.escape(', '.join(others))}) are not applied"
            " here, as with <code>--max-gap</code>."
            if others
            else ""
        ),
        bound=f"{sel['bound']:g}",
        slider_max=f"{slider_max:g}",
        css=_CSS,
        plotlyjs=get_plotlyjs(),
        ablation=_ablation_table(data["ablation"]),
        ablation_note=html.escape(data["ablation"]["note"]),
        data_json=_script_json(page),
        figure_json=_script_json(figure),
        app=_APP_JS,
    )


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  margin: 0 auto; max-width: 1320px; padding: 12px 20px 40px; }
h1 { font-size: 20px; margin: 6px 0 2px; } h2 { font-size: 16px; margin: 22px 0 6px; }
.sub, .caption, .note, .rule { color: #555; font-size: 13px; }
.controls { display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: center;
  background: #f6f6f6; border-radius: 6px; padding: 8px 14px; margin: 10px 0 4px; }
.controls fieldset { border: 0; margin: 0; padding: 0; }
.controls input[type=range] { width: 340px; vertical-align: middle; }
.controls input[type=number] { width: 64px; }
#op { margin: 6px 0; padding: 8px 12px; border-left: 4px solid gold; background: #fffbea; }
#op[data-feasible="false"] { border-left-color: #d62728; background: #fdf0f0; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 3px 7px; border-bottom: 1px solid #e4e4e4; text-align: right;
  white-space: nowrap; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
thead th { background: #f3f3f3; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
tr.reference td { color: #888; font-style: italic; }
.scroll { overflow-x: auto; }
code { font-size: 12px; }
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}: fairness / utility trade-off</title>
<link rel="icon" href="data:,">
<style>{css}</style>
<script>{plotlyjs}</script>
</head>
<body>
<header>
<h1>{title}: worst-language gender gap vs {u}</h1>
<p class="sub">{run_dir} · {n_final} finished trials · {n_candidates} trained configurations</p>
</header>
<div class="controls">
<fieldset id="split"><legend class="sub">split shown</legend>
<label><input type="radio" name="split" value="dev" checked> dev</label>
<label><input type="radio" name="split" value="test"> test</label></fieldset>
<label>gap bound ({gap_metric}, pts)
<input type="range" id="bound" min="0" max="{slider_max}" step="0.1" value="{bound}">
<input type="number" id="bound-value" min="0" max="100" step="any" value="{bound}"></label>
<span class="sub">starts at {bound} pts: {source}</span>
</div>
<div id="explorer"></div>
<p class="caption">Faint markers: single trials; large markers: configuration means over seeds
with 95% Student-t CI whiskers (hollow: audio+text). Dashed: the Pareto front of the trained
configurations' means (max {u}, min gap). Grey band: the gender-shuffled null, 0 to its 95th
percentile (dotted: its mean), the gap a gender-blind model shows. Red shading: gap above the
bound. Click a legend entry to hide or show a family; hover a point for its configuration,
per-language numbers and CIs.</p>
<section id="operating-point">
<h2>Operating point</h2>
<p class="rule">Chosen on dev, never on test: the best mean {objective} among trained
configurations (zero-shot and 0-epoch ones are references) whose {gap_metric} is at most the
bound; ties go to the smaller checked gap end, then the configuration hash. Seeds: {rule}.
The same selection as <code>python analysis/operating_point.py RUN --max-gap B</code>.{others}
</p>
<div id="op"></div>
<div class="scroll"><table id="op-table"></table></div>
</section>
<section id="ablation">
<h2>Ablation (test split; click a column to sort)</h2>
<div class="scroll">{ablation}</div>
<p class="note">{ablation_note}</p>
</section>
<script type="application/json" id="explorer-data">{data_json}</script>
<script type="application/json" id="explorer-figure">{figure_json}</script>
<script>{app}</script>
</body>
</html>
"""

_APP_JS = r"""
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("explorer-data").textContent);
  const F = JSON.parse(document.getElementById("explorer-figure").textContent);
  const gd = document.getElementById("explorer");
  const slider = document.getElementById("bound");
  const box = document.getElementById("bound-value");
  const opBox = document.getElementById("op");
  const opTable = document.getElementById("op-table");
  const L = D.labels;
  let split = "dev";

  const esc = (s) => String(s).replace(/[&<>"]/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const num = (v) => (v === null || v === undefined ? "–" : v.toFixed(1));
  const ci = (m, lo, hi) => (lo === null || hi === null || lo === hi
    ? num(m) : `${num(m)} [${num(lo)}, ${num(hi)}]`);
  const name = (c) => esc(c.label) + (c.variant ? ` (${esc(c.variant)})` : "");

  // The bound as analysis/operating_point.py --max-gap B passes it on: B / 100, 6 digits (:g).
  function stateAt(bound) {
    const b = parseFloat((bound / 100).toPrecision(6));
    let found = D.selection.none;
    for (const s of D.selection.states) {
      if (s.t <= b) found = s; else break;
    }
    return found;
  }

  function boundLayout(bound) {
    const v = D.view.splits[split];
    const shapes = v.shapes.slice();
    const notes = D.view.annotations.concat(v.annotations);
    const fill = D.view.infeasible;
    for (const ax of D.view.axes) {
      shapes.push({ type: "rect", xref: ax.x, yref: ax.y + " domain", layer: "below",
        x0: bound, x1: Math.max(v.xmax, bound), y0: 0, y1: 1,
        fillcolor: fill.color, opacity: fill.alpha, line: { width: 0 } });
      if (bound < v.xmax) {
        notes.push({ xref: ax.x, yref: ax.y + " domain", x: bound, y: 1, xanchor: "left",
          yanchor: "top", showarrow: false, font: { size: 11, color: fill.color },
          text: split === "dev" ? `infeasible: gap > ${bound} pts`
            : `gap > ${bound} pts (the bound is checked on dev)` });
      }
    }
    return { shapes: shapes, annotations: notes };
  }

  function row(role, gh) {
    const c = D.configs[gh];
    const d = c.dev, t = c.test || {};
    return `<tr data-group-hash="${esc(gh)}"><td>${role}</td><td>${name(c)}</td>` +
      `<td>${esc(c.modality)}</td><td>${c.n}</td>` +
      `<td>${ci(d.utility, d.utility_lo, d.utility_hi)}</td>` +
      `<td>${ci(d.gap, d.gap_lo, d.gap_hi)}</td><td>${num(c.checked)}</td>` +
      `<td>${ci(t.utility, t.utility_lo, t.utility_hi)}</td>` +
      `<td>${ci(t.gap, t.gap_lo, t.gap_hi)}</td><td><code>${esc(gh)}</code></td></tr>`;
  }

  function showSelection(state, bound) {
    const total = D.selection.n_candidates;
    const gh = state.group_hash;
    opBox.dataset.bound = String(bound);
    opBox.dataset.feasible = gh ? "true" : "false";
    opBox.dataset.groupHash = gh || "";
    const head = "<thead><tr><th></th><th>method</th><th>modality</th><th>seeds</th>" +
      `<th>dev ${esc(L.utility)}</th><th>dev gap</th><th>checked gap end</th>` +
      `<th>test ${esc(L.utility)}</th><th>test gap</th><th>config</th></tr></thead>`;
    let rows;
    if (gh) {
      const c = D.configs[gh];
      opBox.innerHTML = `At gap ≤ ${bound} pts: <b>${name(c)}</b>, ${esc(c.modality)}, ` +
        `${c.n} seed${c.n === 1 ? "" : "s"}. dev ${esc(L.utility)} ` +
        `<b>${ci(c.dev.utility, c.dev.utility_lo, c.dev.utility_hi)}</b>, dev worst-language ` +
        `gap <b>${ci(c.dev.gap, c.dev.gap_lo, c.dev.gap_hi)}</b> pts (checked: ` +
        `${c.n === 1 ? "its single value" : "CI upper end"} ${num(c.checked)} ≤ ${bound}). ` +
        `${state.n_ok} of ${total} trained configurations meet the bound.`;
      rows = [row("chosen", gh)].concat(state.runners_up.map((r, i) => row(`#${i + 2}`, r)));
    } else {
      opBox.innerHTML = `No trained configuration of ${total} has a dev worst-language gap ` +
        `≤ ${bound} pts on its checked end; nothing would be deployed. Nearest:`;
      rows = state.nearest.map((r) => row("nearest", r));
    }
    opTable.innerHTML = rows.length ? head + "<tbody>" + rows.join("") + "</tbody>" : "";
  }

  // The number box holds the bound: the range input would snap a bound like 2.25 to its step.
  function render(newSplit) {
    const bound = parseFloat(box.value);
    const state = stateAt(bound);
    const chosen = state.group_hash ? D.configs[state.group_hash] : null;
    const data = gd.data.map((t) => {
      const m = t.meta || {};
      const out = Object.assign({}, t, m.splits ? m.splits[split] : {});
      if (m.kind === "op") {
        const here = chosen !== null && chosen.panel === m.panel && chosen[split];
        out.x = here ? [chosen[split].gap] : [];
        out.y = here ? [chosen[split].utility] : [];
        out.text = here ? [`<b>operating point</b> at gap ≤ ${bound} pts<br>${name(chosen)}`] : [];
      }
      return out;
    });
    const layout = Object.assign({}, gd.layout, boundLayout(bound));
    if (newSplit) {
      for (const [key, value] of Object.entries(D.view.splits[split].axes)) {
        layout[key] = Object.assign({}, gd.layout[key], value);
      }
    }
    showSelection(state, bound);
    return Plotly.react(gd, data, layout).then(() => {
      gd.dataset.renders = String(Number(gd.dataset.renders || 0) + 1);
    });
  }

  function sortable(table) {
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach((th, col) => th.addEventListener("click", () => {
      const asc = th.getAttribute("aria-sort") !== "ascending";
      heads.forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      const key = (r) => r.cells[col].dataset.sort;
      const numeric = rows.every((r) => key(r) === "" || !isNaN(Number(key(r))));
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === "" || y === "") return (x === "") - (y === "");
        const d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return asc ? d : -d;
      });
      rows.forEach((r) => body.appendChild(r));
    }));
  }

  sortable(document.getElementById("ablation-table"));
  Plotly.newPlot(gd, F.data, F.layout, F.config).then(() => render(true)).then(() => {
    slider.addEventListener("input", () => { box.value = slider.value; render(false); });
    box.addEventListener("change", () => { slider.value = box.value; render(false); });
    document.querySelectorAll('input[name="split"]').forEach((r) =>
      r.addEventListener("change", () => { split = r.value; render(true); }));
    document.body.dataset.ready = "true";
  });
})();
"""
