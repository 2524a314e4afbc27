"""GET / in a real headless browser (Debian's chromium + chromedriver, driven by Selenium):
upload a photo, read the rendered bars, and a clear message for a bad file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import images
from tests.artifacts import CELEBA_LABELS
from tests.harness import ROOT

pytestmark = pytest.mark.serve

SCREENSHOTS = ROOT / "test-output"


def find_browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser():
    found = find_browser()
    if found is None:
        message = (
            "chromium and chromedriver not installed (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": .ci/run installs them")
        pytest.skip(message)
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", "--window-size=1200,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    yield driver
    driver.quit()


def upload(browser, served, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))


def test_upload_shows_sorted_bars_threshold_version_latency(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "red.jpg"
    photo.write_bytes(images.solid(images.RED))
    upload(browser, served, photo)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: b.find_element(By.ID, "status").get_attribute("data-latency-ms"))

    names = [
        e.get_attribute("data-label")
        for e in browser.find_elements(By.CSS_SELECTOR, "#results .name")
    ]
    assert len(names) == 40 and set(names) == set(CELEBA_LABELS)
    assert names[0] == CELEBA_LABELS[0]  # the most probable first
    assert browser.find_elements(By.CSS_SELECTOR, "#results .name.on")  # above the threshold
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .threshold")) == 40
    assert browser.find_element(By.ID, "model-version").text == "v1"
    assert float(browser.find_element(By.ID, "status").get_attribute("data-latency-ms")) > 0
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "web-page.png"))


def test_bad_file_shows_a_clear_message(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    upload(browser, served, bad)
    status = WebDriverWait(browser, 30).until(
        lambda b: b.find_element(By.CSS_SELECTOR, "#status.error")
    )
    assert "Could not classify this file" in status.text and "decod" in status.text
