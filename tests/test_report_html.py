"""report.html, the trade-off explorer, on the smoke golden run in a real headless chromium.

One browser and one page per module (playwright, chromium at $ERMGAP_CHROMIUM or
/usr/bin/chromium, which .ci/run installs). Without chromium these tests fail and say how to
install it: a skipped browser test would pass a broken page. Expectations come from the run's
rows through the library (final_rows, deploy.choose_operating_point), never from the page.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ermgap_ray.deploy import choose_operating_point
from ermgap_ray.pareto import aggregate_seeds, final_rows, reference_mask, select_operating_point
from ermgap_ray.registry import FAMILY_LABELS
from ermgap_ray.report import (
    MAX_GAPS,
    ablation_frame,
    explorer_data,
    load_run,
    with_null_columns,
    write_explorer,
)
from ermgap_ray.report_html import CHROMIUM_ARGS, explorer_figure

GOLDEN = Path(__file__).parent / "golden_run"
CHROMIUM = Path(
    os.environ.get("ERMGAP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the smoke run (choose_operating_point writes operating_point.json into it)."""
    dest = tmp_path_factory.mktemp("report-html") / "smoke"
    shutil.copytree(GOLDEN / "smoke", dest)
    write_explorer(dest)
    return dest


@pytest.fixture(scope="module")
def data(run: Path) -> dict[str, Any]:
    return explorer_data(with_null_columns(load_run(run)[0], "test", MAX_GAPS, run), run)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"chromium not found at {CHROMIUM}: install it (`apt-get install -y chromium`, as "
            ".ci/run does) or point ERMGAP_CHROMIUM at a chromium binary"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        yield browser
        browser.close()


class Page:
    """The loaded report and everything it logged or requested since it opened."""

    def __init__(self, page: Any) -> None:
        self.page, self.errors, self.requests = page, [], []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))

    def js(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def set_bound(self, bound: float) -> str:
        """Move the slider as a user does (an input event); returns the value it settled on."""
        return self.js(
            "b => { const s = document.getElementById('bound'); s.value = String(b);"
            " s.dispatchEvent(new Event('input'));"
            " return document.getElementById('bound-value').value; }",
            bound,
        )

    def toggle_legend(self, label: str) -> None:
        """Click a legend entry and wait for plotly's toggle (it waits out a double click)."""
        visible = "n => String(document.getElementById('explorer').data.find(t => t.name === n)"
        visible += ".visible)"
        before = self.js(f"({visible})", label)
        entry = self.page.locator("g.legend g.traces", has_text=label).first
        entry.locator("rect.legendtoggle").click()
        self.page.wait_for_function(f"n => ({visible})(n) !== {before!r}", arg=label)

    def set_split(self, split: str) -> None:
        self.page.check(f"input[name=split][value={split}]")

    def selection(self) -> dict[str, Any]:
        return self.js(
            "() => ({op: {...document.getElementById('op').dataset}, rows: Array.from("
            "document.querySelectorAll('#op-table tbody tr')).map(r => [r.cells[0].textContent,"
            " r.dataset.groupHash])})"
        )

    def traces(self, kind: str) -> list[dict[str, Any]]:
        return self.js(
            "k => document.getElementById('explorer').data.filter(t => t.meta.kind === k)"
            ".map(t => ({x: Array.from(t.x), y: Array.from(t.y), group: t.legendgroup,"
            " name: t.name, visible: t.visible === undefined ? true : t.visible,"
            " panel: t.meta.panel}))",
            kind,
        )


@pytest.fixture(scope="module")
def page(browser: Any, run: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    loaded = Page(context.new_page())
    loaded.page.goto((run / "report.html").as_uri())
    loaded.page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    yield loaded
    context.close()


@pytest.fixture
def clean(page: Page) -> Iterator[Page]:
    """The page at its starting split; asserts that the test's actions logged no error."""
    page.set_split("dev")
    yield page
    assert page.errors == [], page.errors


def test_page_loads_offline_without_errors(page: Page, data: dict[str, Any]) -> None:
    assert page.errors == [], page.errors
    offsite = [u for u in page.requests if not u.startswith(("file:", "data:"))]
    assert offsite == [], "the report must open with no network"
    assert page.js("() => typeof Plotly") == "object"
    start = data["selection"]["bound"]
    assert float(page.js("() => document.getElementById('bound-value').value")) == start == 2.0


def test_every_final_trial_is_drawn_once_per_split(clean: Page, run: Path) -> None:
    df = load_run(run)[0]
    final = final_rows(df)
    for split in ("dev", "test"):
        clean.set_split(split)
        trials = clean.traces("trial")
        assert sum(len(t["x"]) for t in trials) == len(final), split
        configs = clean.traces("config")
        assert sum(len(t["x"]) for t in configs) == final["group_hash"].nunique()
        drawn = sorted(x for t in trials for x in t["x"])
        np.testing.assert_allclose(drawn, sorted(100 * final[f"{split}/max_gap_wf1"]))
    labels = {t["name"] for t in clean.traces("config")}
    assert labels == {FAMILY_LABELS[f] for f in final["family"].unique()}


def test_legend_toggles_a_family_across_splits(clean: Page) -> None:
    def erm_visible() -> set[Any]:
        return {
            t["visible"]
            for t in clean.traces("trial") + clean.traces("config")
            if t["group"] == "erm"
        }

    assert erm_visible() == {True}
    clean.toggle_legend(FAMILY_LABELS["erm"])
    assert erm_visible() == {"legendonly"}
    clean.set_split("test")
    assert erm_visible() == {"legendonly"}, "switching split keeps the legend's choice"
    clean.toggle_legend(FAMILY_LABELS["erm"])
    assert erm_visible() == {True}


def _slider_bounds(run: Path) -> list[float]:
    """0 (nothing qualifies) and each trained configuration's checked gap end (pts) rounded up
    and down to the slider's 0.1 step, up to its 100: every selection change is crossed."""
    final = final_rows(load_run(run)[0])
    ends = aggregate_seeds(final[~reference_mask(final)], ["dev/max_gap_wf1"])
    out = {0.0}
    for t in 100 * ends["dev/max_gap_wf1_hi"]:
        out |= {round(math.floor(t * 10) / 10, 1), round(math.ceil(t * 10) / 10, 1)}
    return sorted(b for b in out if b <= 100)


def test_slider_selects_what_the_operating_point_cli_selects(clean: Page, run: Path) -> None:
    seen = set()
    for bound in _slider_bounds(run):
        value = clean.set_bound(bound)
        point, _ = choose_operating_point(run, max_gap=float(value), reevaluate=False)
        shown = clean.selection()
        assert shown["op"]["groupHash"] == (point.group_hash or ""), value
        assert shown["op"]["feasible"] == str(point.feasible).lower(), value
        roles = [role for role, _ in shown["rows"]]
        hashes = [gh for _, gh in shown["rows"]]
        if point.feasible:
            assert roles[0] == "chosen"
            assert hashes == [point.group_hash, *(r["group_hash"] for r in point.runners_up)]
            star = [t for t in clean.traces("op") if t["x"]]
            assert len(star) == 1, "one star, in the chosen configuration's panel"
        else:
            assert set(roles) == {"nearest"}
            assert hashes == [n["group_hash"] for n in point.nearest]
            assert not any(t["x"] for t in clean.traces("op"))
        seen.add(point.group_hash)
    assert None in seen and len(seen - {None}) >= 2, "bounds cross several selections"


def test_selection_states_match_select_operating_point_between_them(
    run: Path, data: dict[str, Any]
) -> None:
    """The page's lookup (last state with t <= bound) is select_operating_point at any bound,
    checked at each state's end, just below it and between states."""
    df = load_run(run)[0]
    sel = data["selection"]
    ts = [s["t"] for s in sel["states"]]
    probes = {0.0, *ts, *(np.nextafter(t, -1.0) for t in ts), *(np.add(ts[:-1], ts[1:]) / 2)}
    for b in sorted(float(p) for p in probes):
        expected = select_operating_point(df, f"max_gap_wf1<={b!r}")
        state = next((s for s in reversed(sel["states"]) if s["t"] <= b), sel["none"])
        assert state["group_hash"] == expected.group_hash, b
        runners = expected.runners_up if expected.feasible else []
        assert state["runners_up"] == [r["group_hash"] for r in runners], b


def test_hover_shows_config_languages_and_cis(clean: Page, data: dict[str, Any]) -> None:
    fig = explorer_figure(data)
    erm = next(t for t in fig.data if t.meta["kind"] == "config" and t.legendgroup == "erm")
    text = erm.text[0]
    assert text.startswith("<b>ERM</b>") and "objective=erm" in text and "lr=" in text
    assert "95% t-CI over seeds" in text and "W-F1 by language: EN" in text
    assert "W-F1 gap by language: EN" in text
    box = clean.js(
        "() => { const gd = document.getElementById('explorer');"
        " const i = gd.data.findIndex(t => t.meta.kind === 'config' && t.legendgroup === 'erm');"
        " const t = gd._fullData[i], L = gd._fullLayout, r = gd.getBoundingClientRect();"
        " const xa = L['xaxis' + t.xaxis.slice(1)], ya = L['yaxis' + t.yaxis.slice(1)];"
        " return [r.left + xa._offset + xa.l2p(t.x[0]), r.top + ya._offset + ya.l2p(t.y[0])]; }"
    )
    clean.page.mouse.move(*box)
    hover = clean.page.locator("g.hovertext").first
    hover.wait_for(timeout=5_000)
    assert "ERM" in hover.text_content() and "by language" in hover.text_content()


def test_ablation_table_sorts_by_any_column(clean: Page, run: Path) -> None:
    n_rows = len(ablation_frame(load_run(run)[0], run_dir=run))

    def column(name: str) -> list[str]:
        return clean.js(
            "n => { const t = document.getElementById('ablation-table');"
            " const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent === n);"
            " return Array.from(t.tBodies[0].rows).map(r => r.cells[i].dataset.sort); }",
            name,
        )

    header = clean.page.locator("#ablation-table th", has_text="W-F1 All")
    header.click()
    values = column("W-F1 All")
    numbers = [float(v) for v in values if v]
    assert len(values) == n_rows and numbers == sorted(numbers)
    assert values[len(numbers) :] == [""] * (len(values) - len(numbers)), "blanks sort last"
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    numbers = [float(v) for v in column("W-F1 All") if v]
    assert numbers == sorted(numbers, reverse=True)
    clean.page.locator("#ablation-table th", has_text="Method").first.click()
    methods = column("Method")
    assert methods == sorted(methods, key=str.casefold)


def test_screenshot(clean: Page, tmp_path: Path) -> None:
    clean.set_bound(50)
    clean.page.wait_for_timeout(300)
    path = tmp_path / "report_html.png"
    clean.page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 50_000
