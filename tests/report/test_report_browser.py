"""The report in a real browser: headless Chromium via selenium + /usr/bin/chromedriver.

Install with scripts/install-chromium.sh (Debian packages chromium + chromium-driver).
Checks: no console errors, every image loaded, table cells equal the results JSON,
clicking a header reorders the rows; ``slow``: the same on the demo's report (demo-out/report,
or a `demo --quick` report built by the test).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from oodseg.workflows.report import build_report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parents[1] / "fixtures" / "report"
DEMO_REPORT = REPO / "demo-out" / "report" / "index.html"
sys.path.insert(0, str(FIXTURES))
from synthetic import write_results  # noqa: E402

if CHROMIUM is None or not CHROMEDRIVER.is_file():
    pytest.skip("headless Chromium not installed (run scripts/install-chromium.sh: Debian packages "
                "chromium + chromium-driver)", allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install '.[test]')")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                                "--window-size=1400,1000"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    objects = write_results(root / "results", methods=4, frames=2, shape=(64, 128))
    build_report(root / "results", root / "report", frames=2)
    return root / "report" / "index.html", objects


def open_page(driver, index: Path) -> None:
    driver.get_log("browser")  # drop messages of earlier pages
    driver.get(index.resolve().as_uri())
    driver.execute_script("return document.readyState")  # wait until parsed


def assert_clean_load(driver) -> None:
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
    assert images, "the report shows no images"
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert broken == [], broken


def table_rows(driver, dataset: str) -> list[str]:
    table = driver.find_element(By.CSS_SELECTOR, f'table.ranking[data-dataset="{dataset}"]')
    return [row.get_attribute("data-method") for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


def click_header(driver, dataset: str, key: str) -> str:
    th = driver.find_element(By.CSS_SELECTOR, f'table.ranking[data-dataset="{dataset}"] th[data-key="{key}"]')
    th.click()
    return th.get_attribute("aria-sort")


def test_fixture_report_loads_cleanly(browser, fixture_report):
    index, _ = fixture_report
    open_page(browser, index)
    assert_clean_load(browser)
    assert browser.title == "oodseg report"


def test_table_cells_equal_results_json(browser, fixture_report):
    index, objects = fixture_report
    open_page(browser, index)
    cells = browser.execute_script("""
        return Array.from(document.querySelectorAll('table.ranking tbody td.num')).map(td => [
            td.closest('table').dataset.dataset, td.parentElement.dataset.method,
            td.dataset.key || null, td.dataset.value || null, td.textContent.trim()]);""")
    assert len(cells) == 2 * 4 * 8
    checked = 0
    for dataset, method, key, value, text in cells:
        obj = next(o for o in objects if o["dataset"] == dataset and o["method"] == method)
        if value is None:
            assert text == "—"
            continue
        expected = obj["calibration"][key] if key in ("ECE", "AuSE") else obj[key]
        assert float(value) == expected
        assert text == (f"{expected:.4f}" if key == "AuSE" else f"{100 * expected:.2f}")
        checked += 1
    assert checked == 2 * (4 * 3 + 3 * 3 + 2)  # pixel metrics; component (m1 has none); m0's calibration


def test_clicking_headers_reorders_rows(browser, fixture_report):
    index, objects = fixture_report
    open_page(browser, index)
    by_method = {o["method"]: o for o in objects if o["dataset"] == "obstacle"}
    assert table_rows(browser, "obstacle") == sorted(by_method, key=lambda m: -by_method[m]["AP"])
    assert click_header(browser, "obstacle", "FPR95") == "ascending"  # lower is better: best first
    assert table_rows(browser, "obstacle") == sorted(by_method, key=lambda m: by_method[m]["FPR95"])
    assert click_header(browser, "obstacle", "FPR95") == "descending"
    assert table_rows(browser, "obstacle") == sorted(by_method, key=lambda m: -by_method[m]["FPR95"])
    assert click_header(browser, "obstacle", "AUROC") == "descending"
    assert table_rows(browser, "obstacle") == sorted(by_method, key=lambda m: -by_method[m]["AUROC"])
    click_header(browser, "obstacle", "sIoU")  # m1 has no sIoU: always last
    siou = sorted((m for m in by_method if by_method[m]["sIoU"] is not None), key=lambda m: -by_method[m]["sIoU"])
    assert table_rows(browser, "obstacle") == siou + ["m1"]
    click_header(browser, "obstacle", "method")
    assert table_rows(browser, "obstacle") == sorted(by_method)
    assert table_rows(browser, "anomaly") == sorted(
        (o["method"] for o in objects if o["dataset"] == "anomaly"), key=lambda m: -next(
            o["AP"] for o in objects if o["dataset"] == "anomaly" and o["method"] == m))  # other table untouched


def test_headless_screenshot(fixture_report, tmp_path):
    index, _ = fixture_report
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                    "--window-size=1400,1600", f"--screenshot={shot}", index.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1600)
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 100  # rendered content, not a blank page


def evaluate_objects(root: Path) -> list[dict]:
    """Every ``oodseg.evaluate`` JSON below ``root`` (read here, independently of the report code)."""
    found = []
    for path in root.rglob("*.json"):
        try:
            obj = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict) and obj.get("schema") == "oodseg.evaluate":
            found.append(obj)
    return found


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    """The report of `make demo` when it was run in this checkout, else a `demo --quick` report built now."""
    if DEMO_REPORT.is_file():
        return DEMO_REPORT
    from oodseg.workflows.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(DemoConfig(out=out, quick=True, log=lambda message: None))
    return out / "report" / "index.html"


@pytest.mark.slow
def test_demo_report_in_browser(browser, demo_report):
    open_page(browser, demo_report)
    assert_clean_load(browser)
    objects = evaluate_objects(demo_report.parent.parent)
    cells = browser.execute_script("""
        return Array.from(document.querySelectorAll('table.ranking tbody td.num')).map(td => [
            td.closest('table').dataset.dataset, td.parentElement.dataset.method,
            td.dataset.key || null, td.dataset.value || null]);""")
    assert cells
    for dataset, method, key, value in cells:
        if value is None:
            continue
        matches = [o for o in objects if o["dataset"] == dataset and o["method"] == method]
        expected = {(o.get("calibration") or {}).get(key) if key in ("ECE", "AuSE") else o.get(key) for o in matches}
        assert float(value) in expected, (dataset, method, key)
    dataset = cells[0][0]
    fpr = {method: float(value) for d, method, key, value in cells if d == dataset and key == "FPR95" and value}
    click_header(browser, dataset, "FPR95")
    order = [m for m in table_rows(browser, dataset) if m in fpr]
    assert [fpr[m] for m in order] == sorted(fpr.values())
