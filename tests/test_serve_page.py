"""The live session page (hardware/serve/static/live.*) in headless Chromium against the real server.

The server runs as a child process (``python -m hardware.serve``) on a free loopback port; the test
drives a session over HTTP, opens ``/sessions/{id}?token=...`` and checks that the page draws the
queried points and follows a new tell through server-sent events, without reloading.

Chromium and chromedriver are required (CI installs Debian's ``chromium`` and ``chromium-driver``):
without them the test fails, it does not skip.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from hardware.serve.process import ServerProcess

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
N_FIRST = 5


def _browser_paths() -> tuple[str, str]:
    chromium = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    driver = CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else shutil.which("chromedriver")
    if not chromium or not driver:
        missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p]
        pytest.fail(
            f"the live-page test needs {' and '.join(missing)} ({CHROMIUM}, {CHROMEDRIVER}): "
            f"apt-get install chromium chromium-driver (.ci/run does)",
            pytrace=False,
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("the live-page test needs selenium: pip install selenium", pytrace=False)
    return chromium, driver


@pytest.fixture
def server(tmp_path):
    """``python -m hardware.serve`` on a free loopback port: yields (url, token)."""
    with ServerProcess(tmp_path / "serve") as srv:
        yield srv.url, srv.token


def _online() -> dict:
    with open(REPO / "conf/online/example_rat.yaml") as fh:
        online = yaml.safe_load(fh)
    online.update(
        mode="autonomous",
        n_queries=12,
        save_windows=False,
        algorithm={"name": "gpbo", "kappa": 3.0, "n_random": 1, "fit_steps": 2},
    )
    return online


def _respond(coords: dict) -> float:
    """A smooth bump over the array, peaking at electrode (6, 3)."""
    return 1.0 / (1.0 + (coords["x"] - 6) ** 2 / 4 + (coords["y"] - 3) ** 2 / 2)


def _round(client, sid: str) -> None:
    q = client.ask(sid)
    client.tell(sid, q["query_id"], _respond(q["coords"]), readback=q["params"])


def test_live_page_follows_the_session(server, tmp_path):
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from hardware.serve.client import SessionClient

    url, token = server
    client = SessionClient(url, token)
    sid = client.create(_online())
    for _ in range(N_FIRST):
        _round(client, sid)

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get(f"{url}/sessions/{sid}?token={token}")

        def attr(name: str, element: str = "map") -> str | None:
            return driver.execute_script(
                "const e = arguments[0] === 'body' ? document.body : document.getElementById(arguments[0]);"
                "return e ? e.getAttribute(arguments[1]) : null;",
                element,
                name,
            )

        WebDriverWait(driver, 60).until(lambda d: attr("data-n-queried") == str(N_FIRST))
        assert attr("data-n-done", "body") == str(N_FIRST)
        driver.execute_script("window.__notReloaded = true;")

        _round(client, sid)  # the page must follow through the SSE stream, without a reload
        t0 = time.time()
        WebDriverWait(driver, 10).until(lambda d: attr("data-n-queried") == str(N_FIRST + 1))
        took = time.time() - t0
        assert driver.execute_script("return window.__notReloaded === true;"), "the page reloaded"
        assert attr("data-n-done", "body") == str(N_FIRST + 1)
        assert driver.execute_script("return document.getElementById('status').textContent.trim();") == "active"

        traces = driver.execute_script(
            "return document.getElementById('map').data.map(t => ({type: t.type, name: t.name || '', z: t.z || null,"
            " x: t.x || null, symbol: (t.marker && t.marker.symbol) || null}));"
        )
        heat = [t for t in traces if t["type"] == "heatmap"]
        assert heat, f"no heat map trace on #map: {traces}"
        values = [v for row in heat[0]["z"] for v in row if v is not None]
        assert values, "the heat map of the posterior mean is all null"
        stars = [t for t in traces if t["symbol"] == "star"]
        assert stars and len(stars[0]["x"]) == 1, f"no best-so-far marker on #map: {traces}"
        errors = [
            e
            for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "favicon" not in e["message"] and "/events" not in e["message"]
        ]
        assert not errors, f"browser console errors: {errors}"

        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(1400, max(1000, int(height) + 120))
        time.sleep(0.5)  # the plots relayout to the new size
        shot = tmp_path / "live.png"
        assert driver.save_screenshot(str(shot)), "the screenshot failed"
        if os.environ.get("NEURO_OPT_SCREENSHOT"):
            Path(os.environ["NEURO_OPT_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, os.environ["NEURO_OPT_SCREENSHOT"])
        print(f"live page followed the 6th tell in {took:.2f} s; screenshot {shot}")
    finally:
        driver.quit()
