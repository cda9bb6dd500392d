"""The web console in a real headless Chromium (Debian chromium + chromium-driver, driven
by Selenium) against a running daemon fed by ``acqflow demo microscopy`` and
``acqflow demo ct``: the plate map, a live update without a reload, a well's time course
and overlays, the studies view with its flagged structures, operations with and without
actions; bad requests get a 4xx. Screenshots go to ``$ACQFLOW_SCREENSHOTS`` (default: the
test's folder)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon_proc import DaemonProcess, journal_rows, wait_until
from tests.support.peers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(DRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _settings(root: Path, **web: Any) -> dict[str, Any]:
    return {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port(), "series_quiet_seconds": 2.0},
        "folders": [{"path": str(root / "inbox"), "stable_seconds": 0.5, "poll_seconds": 0.5}],
        "web": {"enabled": True, "port": free_port(), "refresh_seconds": 1.0, **web},
        "pipelines": {"options": {"ct-muscle": {"samples": 2}}},
    }


def _url(daemon: DaemonProcess, path: str = "/") -> str:
    return f"http://127.0.0.1:{daemon.settings['web']['port']}{path}"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _latest_per_well(daemon: DaemonProcess) -> dict[str, float]:
    """Mean efficiency at each well's latest time point, from the journal's records."""
    points: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in journal_rows(daemon, "SELECT fields FROM records WHERE kind='efficiency' AND grp='EXP1'"):
        fields = json.loads(row["fields"])
        points[fields["well"]][int(fields["timepoint"])].append(float(fields["efficiency"]))
    return {well: sum(v[max(v)]) / len(v[max(v)]) for well, v in points.items()}


def _shot(browser: Any, name: str, root: Path) -> None:
    folder = Path(os.environ.get("ACQFLOW_SCREENSHOTS", root))
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"console-{name}.png"))


def _ready(daemon: DaemonProcess, images: int) -> bool:
    jobs = journal_rows(daemon, "SELECT pipeline, state FROM jobs")
    staining = [j for j in jobs if j["pipeline"] == "virtual-staining"]
    ct = [j for j in jobs if j["pipeline"] == "ct-muscle"]
    return len(staining) >= images and all(j["state"] == "done" for j in jobs) and len(ct) == 1


def test_plates_studies_and_operations_in_a_browser(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    daemon = DaemonProcess(tmp_path, _settings(tmp_path))
    daemon.start()
    try:
        assert daemon.cli("demo", "microscopy", "--interval", "0").returncode == 0
        assert daemon.cli("demo", "ct").returncode == 0
        wait_until(lambda: _ready(daemon, 24), 300, "the demo data processed", daemon)
        expected = _latest_per_well(daemon)

        browser.get(_url(daemon))
        browser.find_element(By.LINK_TEXT, "EXP1").click()
        cells = {c.get_attribute("data-well"): c for c in browser.find_elements(By.CSS_SELECTOR, "a.well")}
        assert set(cells) == set(expected) == {"A01", "A02", "A03"}
        for well, efficiency in expected.items():
            assert cells[well].find_element(By.CLASS_NAME, "eff").text == f"{100 * efficiency:.1f}%"
        _shot(browser, "plate", tmp_path)

        # A new, later image of A01 (another well's image under A01's name): the cell
        # changes without a reload of the page.
        browser.execute_script("window.__still_loaded = true;")
        before = cells["A01"].find_element(By.CLASS_NAME, "eff").text
        source = next((tmp_path / "inbox" / "EXP1").glob("EXP1_A03_pos1_t003*"))
        later = source.name.replace("A03_pos1_t003", "A01_pos1_t004")
        shutil.copy(source, tmp_path / "inbox" / "EXP1" / later)
        wait_until(lambda: len(_latest_per_well(daemon)) == 3 and _latest_per_well(daemon)["A01"] != float(
            before.rstrip("%")) / 100, 60, "the new image processed", daemon)
        updated = f"{100 * _latest_per_well(daemon)['A01']:.1f}%"
        WebDriverWait(browser, 15).until(
            lambda b: b.find_element(By.CSS_SELECTOR, 'a.well[data-well="A01"] .eff').text == updated)
        assert browser.execute_script("return window.__still_loaded === true;")

        browser.find_element(By.CSS_SELECTOR, 'a.well[data-well="A02"]').click()
        assert browser.find_element(By.TAG_NAME, "h1").text == "Well A02"
        assert browser.find_element(By.CSS_SELECTOR, "svg polyline").get_attribute("points")
        images = browser.find_elements(By.CSS_SELECTOR, ".thumbs img")
        assert len(images) == 8  # 2 positions x 4 time points
        WebDriverWait(browser, 15).until(
            lambda b: all(b.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images))
        captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, ".thumbs figcaption")]
        assert any(c.startswith("position pos1 · time point 0") for c in captions), captions
        assert browser.find_elements(By.LINK_TEXT, "ImageJ TIFF")
        _shot(browser, "well", tmp_path)

        browser.find_element(By.LINK_TEXT, "Studies").click()
        flagged = {json.loads(r["fields"])["structure"] for r in journal_rows(
            daemon, "SELECT fields FROM records WHERE kind='ct-structure'")
            if json.loads(r["fields"])["review_required"]}
        [section] = browser.find_elements(By.CSS_SELECTOR, "section.series")
        rows = section.find_elements(By.CSS_SELECTOR, "tbody tr")
        shown = {r.find_elements(By.TAG_NAME, "td")[0].text for r in rows
                 if r.find_elements(By.TAG_NAME, "td")[4].text == "flagged"}
        assert shown == flagged and len(rows) >= 3
        assert "series-" in section.find_element(By.TAG_NAME, "h2").text  # a pseudonym, not the UID
        _shot(browser, "studies", tmp_path)

        assert not browser.find_elements(By.XPATH, "//button[text()='Reprocess']")
        [ct] = journal_rows(daemon, "SELECT id FROM arrivals WHERE kind='dicom-series'")
        request = urllib.request.Request(_url(daemon, f"/studies/reprocess/{ct['id']}"), method="POST",
                                         data=b"")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403

        browser.find_element(By.LINK_TEXT, "Operations").click()
        assert "read-only" in browser.find_element(By.CLASS_NAME, "provenance").text
        assert not browser.find_elements(By.XPATH, "//button[text()='Retry']")
        _shot(browser, "operations", tmp_path)
    finally:
        assert daemon.terminate() == 0
    daemon.settings["web"]["allow_actions"] = True  # the same daemon, actions on: reprocess the series
    daemon.start()
    try:
        browser.get(_url(daemon, "/studies"))
        browser.find_element(By.XPATH, "//button[text()='Reprocess']").click()
        ct_jobs = lambda: [j["state"] for j in journal_rows(  # noqa: E731
            daemon, "SELECT state FROM jobs WHERE pipeline='ct-muscle' ORDER BY id")]
        wait_until(lambda: ct_jobs() == ["done", "done"], 120, "the series reprocessed from the console",
                   daemon)
    finally:
        assert daemon.terminate() == 0


def test_retry_only_with_actions_and_bad_requests_get_a_4xx(tmp_path: Path, browser: Any) -> None:
    """A job made to die (a CT series routed to the microscopy pipeline): no retry without
    allow_actions (no button, POST 403); with it, the button queues the job again."""
    from selenium.webdriver.common.by import By

    from tests.support.peers import storescu, write_synthetic_ct

    settings = _settings(tmp_path)
    settings["routes"] = [{"name": "wrong", "kind": ["dicom-series"], "pipelines": ["virtual-staining"]}]
    settings["workers"]["max_attempts"] = 1
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        series = write_synthetic_ct(tmp_path / "ct", n_slices=2, seed="console-dead", rows=16, cols=16)
        storescu(daemon.settings["dicom"]["port"], series.paths)
        states = lambda: [j["state"] for j in journal_rows(daemon, "SELECT state FROM jobs")]  # noqa: E731
        wait_until(lambda: states() == ["dead"], 60, "the misrouted series dead", daemon)
        [job] = journal_rows(daemon, "SELECT id FROM jobs")
        for path in ("/plates/NOPE", "/plates/EXP1/wells/Z99", "/files/999999",
                     "/files/..%2F..%2Fetc%2Fpasswd", "/plates/..%2F..%2F..%2Fetc%2Fpasswd",
                     "/plates/EXP1/wells/..%2F..%2Fjournal.sqlite3", "/api/plates/..%2Fstate"):
            assert 400 <= _status(_url(daemon, path)) < 500, path
        request = urllib.request.Request(_url(daemon, f"/ops/retry/{job['id']}"), method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        browser.get(_url(daemon, "/ops"))
        [row] = browser.find_elements(By.CSS_SELECTOR, "#dead-jobs tbody tr")
        assert row.find_elements(By.TAG_NAME, "td")[0].text == str(job["id"])
        assert not browser.find_elements(By.XPATH, "//button[text()='Retry']")
    finally:
        assert daemon.terminate() == 0
    daemon.settings["web"]["allow_actions"] = True
    daemon.start()
    try:
        browser.get(_url(daemon, "/ops"))
        browser.find_element(By.XPATH, f"//button[@aria-label='retry job {job['id']}']").click()
        wait_until(lambda: f"web console: job {job['id']} queued again" in daemon.log_tail(20000), 20,
                   "the retry through the console", daemon)
        assert browser.current_url.endswith("/ops")
    finally:
        assert daemon.terminate() == 0


def test_a_token_is_required_when_configured(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("lab s3cret-token\n")
    daemon = DaemonProcess(tmp_path, _settings(tmp_path, tokens_file=str(tokens)))
    daemon.start()
    try:
        assert _status(_url(daemon, "/")) == 401
        assert _status(_url(daemon, "/?token=wrong")) == 401
        with urllib.request.urlopen(_url(daemon, "/?token=s3cret-token"), timeout=10) as response:
            cookie = response.headers["Set-Cookie"].split(";", 1)[0]
            assert response.status == 200
        with urllib.request.urlopen(urllib.request.Request(_url(daemon, "/ops"), headers={"Cookie": cookie}),
                                    timeout=10) as response:
            assert response.status == 200
    finally:
        assert daemon.terminate() == 0
