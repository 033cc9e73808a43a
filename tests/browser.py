# A real headless Chromium for the web app's tests: Debian's `chromium` driven by Selenium through Debian's
# `chromium-driver` (test.sh installs both). Where either is missing or the browser cannot start, the test
# is skipped with the reason on a plain machine and FAILS under CI=true, so a green CI never hides it.
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"real-browser test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def start_chromium(width: int = 1280, height: int = 900, javascript: bool = True):  # noqa: ANN201 - selenium type
    """A headless Chromium, or skip/fail with the reason it cannot start."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        unavailable(f"selenium is not installed ({exc})")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            unavailable(f"{path} not found: install the Debian package {package} (test.sh does, as root)")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    except WebDriverException as exc:
        unavailable(f"headless chromium did not start: {str(exc.msg or exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    return driver
