"""``autofhe dashboard`` in real headless Chromium: what a user sees tells the truth.

On a study with feasible and infeasible trials (some infeasible ones would dominate the
feasible front), the rendered pages must badge only the feasible front "Best Trial", draw the
Pareto plot over the real values, show the front's plot and the note with the measured front
table. A screenshot of the study page is saved (``build/e2e/dashboard-study.png``, or
``$AUTOFHE_SCREENSHOT_DIR``).

Skips when Chromium, chromedriver or selenium are missing; fails instead when
``AUTOFHE_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from dashboard_study import FEASIBLE_FRONT, TRIALS, get_json

from autofhe.search.front.notes import FRONT_PLOT_ID

#: a dashboard server and a headless browser (make check leaves them out)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: flags that work in containers: no sandbox, no GPU, and nothing that phones home
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,2400",
)
WAIT_S = 60


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for exe in ("chromium", "chromedriver"):
        if shutil.which(exe) is None:
            return f"{exe} is not on PATH (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = _missing()
    if missing:
        if os.environ.get("AUTOFHE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"AUTOFHE_REQUIRE_SERVICES=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _study_url(dashboard, name: str) -> str:
    base, _ = dashboard
    summaries = get_json(f"{base}/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
    return f"{base}/dashboard/studies/{study_id}"


@pytest.fixture(scope="module")
def study_url(dashboard):
    return _study_url(dashboard, dashboard[1])


def _screenshot(browser, name: str) -> None:
    """Kept for people (CI keeps build/e2e/ as artifacts): ``name``.png of the page's top."""
    out = Path(os.environ.get("AUTOFHE_SCREENSHOT_DIR", ROOT / "build" / "e2e"))
    out.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    shot = out / f"{name}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def _wait_for(driver, script: str):
    """The value of ``script`` once it is truthy (the page renders asynchronously)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(
        lambda d: d.execute_script(script), message=f"page never satisfied: {script}"
    )


def _plot(driver, dom_id: str) -> dict:
    """A rendered plotly graph: its traces and the axis ranges plotly settled on."""
    return _wait_for(
        driver,
        f"""const g = document.getElementById({dom_id!r});
        if (!g || !g._fullLayout || !g.data) return null;
        return {{traces: g.data.map(t => ({{x: t.x, y: t.y, text: t.text, name: t.name,
                                             color: t.marker && t.marker.color}})),
                 x: g._fullLayout.xaxis.range, y: g._fullLayout.yaxis.range,
                 notes: (g._fullLayout.annotations || []).map(a => a.text)}};""",
    )


def _spans(axis: list[float], values: list[float]) -> None:
    """The axis covers every value, and not much more (a sentinel would stretch it)."""
    lo, hi = min(values), max(values)
    assert axis[0] <= lo and axis[1] >= hi, (axis, lo, hi)
    assert axis[1] - axis[0] < 1.5 * (hi - lo), f"axis {axis} stretched beyond {lo}..{hi}"


def test_study_page_plots_span_the_real_values(browser, study_url):
    browser.get(study_url)
    pareto = _plot(browser, "graph-pareto-front")
    _spans(pareto["x"], [v[0] for v in TRIALS.values()])  # accuracy
    _spans(pareto["y"], [v[1] for v in TRIALS.values()])  # predicted latency
    # infeasible trials are drawn apart from the feasible ones, in grey
    infeasible = {n for n, v in TRIALS.items() if v[2]}
    for trace in pareto["traces"]:
        numbers = {int(t.split('"number": ')[1].split(",")[0]) for t in trace["text"] or []}
        if numbers & infeasible:
            assert numbers <= infeasible and trace["color"] == "#cccccc", trace

    front = _plot(browser, f"user-defined-plot:{FRONT_PLOT_ID}")
    names = [t["name"] for t in front["traces"]]
    assert names == ["front (predicted latency)", "measured latency"]
    latencies = [TRIALS[n][1] for n in FEASIBLE_FRONT] + [TRIALS[n][3] for n in FEASIBLE_FRONT]
    # a log axis (plotly's range in decades): 0.12 s and 0.91 s both readable
    low, high = front["x"]
    assert low <= math.log10(min(latencies)) and high >= math.log10(max(latencies))
    assert high - low <= math.log10(max(latencies) / min(latencies)) + 1.5
    _spans(front["y"], [TRIALS[n][0] for n in FEASIBLE_FRONT])
    # the window is tall enough for the Pareto plot (top) and the front plot (below)
    _screenshot(browser, "dashboard-study")


def test_an_all_infeasible_study_shows_why_on_sane_axes(browser, dashboard):
    browser.get(_study_url(dashboard, "none-accuracy"))
    front = _plot(browser, f"user-defined-plot:{FRONT_PLOT_ID}")
    assert front["x"] == pytest.approx([-3, 1]) and front["y"] == pytest.approx([0, 1])
    assert (
        front["notes"][0]
        .replace("<br>", " ")
        .startswith("no feasible model: the cheapest configuration was priced at 0.004 s")
    )
    _screenshot(browser, "dashboard-no-front")


def test_a_one_point_front_is_drawn_around_its_point(browser, dashboard):
    browser.get(_study_url(dashboard, "one-accuracy"))
    front = _plot(browser, f"user-defined-plot:{FRONT_PLOT_ID}")
    low, high = front["y"]  # before: plotly's default range, 0 to 1.95
    assert 0.85 <= low < 0.9 < high <= 0.95
    _screenshot(browser, "dashboard-one-point")


def test_only_the_feasible_front_is_badged_best(browser, study_url):
    browser.get(f"{study_url}/trials")
    items = _wait_for(
        browser,
        """const items = Array.from(document.querySelectorAll('li'))
            .map(e => e.innerText).filter(t => /^Trial \\d+\\n/.test(t));
        return items.length >= 6 ? items : null;""",
    )
    best = {int(t.split()[1]) for t in items if "Best Trial" in t}
    assert best == FEASIBLE_FRONT, items


def test_note_shows_the_measured_front_table(browser, study_url):
    browser.get(f"{study_url}/note")
    rows = _wait_for(
        browser,
        """const t = document.querySelector('table');
        return t ? Array.from(t.querySelectorAll('tr')).map(
            r => Array.from(r.querySelectorAll('th,td')).map(c => c.innerText.trim())) : null;""",
    )
    header, *body = rows
    assert header[:4] == ["trial", "accuracy", "predicted s", "measured s"]
    expected = sorted(FEASIBLE_FRONT, key=lambda n: -TRIALS[n][0])
    assert [int(r[0]) for r in body] == expected
    for row, number in zip(body, expected):
        assert float(row[3]) == TRIALS[number][3]
        assert row[4].startswith("load ") and row[4].endswith(" cores")


@pytest.mark.parametrize("number", sorted(n for n, v in TRIALS.items() if v[2]))
def test_every_infeasible_trial_says_why_before_its_attributes(browser, study_url, number):
    """optuna-dashboard's own state chip says Complete (it has no other word for it): the
    trial's note, the first thing on its page, says Infeasible and why; none is badged Best."""
    browser.get(f"{study_url}/trials?numbers={number}")
    text = _wait_for(
        browser,
        f"""const t = document.body.innerText;
        return t.includes('Trial {number} (trial_id=') && t.includes('User Attributes') ?
            t : null;""",
    )
    head = text.index(f"Trial {number} (trial_id=")
    why = text.index("Infeasible: ", head)
    assert why < text.index("User Attributes")
    assert "Best Trial" not in text[head:why]


def test_excluding_infeasible_trials_leaves_the_feasible_ones(browser, study_url):
    from selenium.webdriver.common.by import By

    browser.get(f"{study_url}/smartSelection")
    script = """const g = document.getElementById('plot-parallel-coordinate');
        return g && g.data && g.data.length ? g.data[0].dimensions[0].values : null;"""
    assert sorted(_wait_for(browser, script)) == sorted(v[0] for v in TRIALS.values())
    browser.find_element(By.XPATH, "//label[contains(., 'Include Infeasible trials')]").click()
    feasible = sorted(v[0] for v in TRIALS.values() if not v[2])
    shown = _wait_for(
        browser,
        f"""const values = (() => {{ {script} }})();
        return values && values.length === {len(feasible)} ? values : null;""",
    )
    assert sorted(shown) == feasible
