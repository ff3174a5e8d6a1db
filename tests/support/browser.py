"""Debian's Chromium, headless, driven by selenium through Debian's chromedriver (nothing downloaded)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1400,1000")


def open_chromium() -> tuple[WebDriver, Path]:
    """A fresh headless Chromium (its own profile folder); quit it and remove the folder after."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: install the Debian packages chromium and chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # selenium must never try to download a browser or driver
    profile = Path(tempfile.mkdtemp(prefix="prodsmart-edge-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver, profile


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver, profile = open_chromium()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $PRODSMART_TEST_ARTIFACTS (kept by CI), else the test's tmp_path."""
    folder = Path(os.environ.get("PRODSMART_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
