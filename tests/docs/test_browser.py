"""The built site in headless Chromium: pages render, pictures load, search finds the operator; screenshots for a person to look at."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from sacseg.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
# Ignored by git (.gitignore): the pictures of the last run, to be looked at, never compared.
SCREENSHOTS = REPO / "docs_screenshots"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 30

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="needs chromium and chromedriver on PATH"),
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log on stderr."""


@pytest.fixture(scope="module")
def site_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site built from this checkout (strict), served on a free port of 127.0.0.1 while the tests run."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium driven by the system's chromedriver (given explicitly: Selenium downloads nothing)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _open(browser: webdriver.Chrome, url: str) -> None:
    """Loads ``url`` and fails on what the browser logged as an error (a missing file, a script error)."""
    browser.get(url)
    WebDriverWait(browser, WAIT_S).until(lambda driver: driver.execute_script("return document.readyState") == "complete")
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"{url}: {errors}"


def _screenshot(browser: webdriver.Chrome, name: str, full_page: bool = False) -> None:
    """``docs_screenshots/<name>.png``: the window, or the whole page up to 6000 pixels high."""
    SCREENSHOTS.mkdir(exist_ok=True)
    # After a scroll the header cross-fades the site name into the page title: wait for the fade to end.
    WebDriverWait(browser, WAIT_S).until(lambda driver: driver.execute_script("return document.getAnimations().length") == 0)
    if full_page:
        height = min(browser.execute_script("return document.documentElement.scrollHeight"), 6000)
        browser.set_window_size(1280, height)
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    browser.set_window_size(1280, 900)


def _heading(browser: webdriver.Chrome) -> str:
    return browser.find_element(By.CSS_SELECTOR, "article h1").text


def test_home_page(browser: webdriver.Chrome, site_url: str) -> None:
    _open(browser, f"{site_url}/index.html")
    assert browser.title.startswith("sacseg")
    assert _heading(browser) == "sacseg"
    nav = browser.find_element(By.CSS_SELECTOR, "nav.md-nav--primary").get_attribute("textContent")
    assert all(section in nav for section in ("Getting started", "The operator", "API reference", "Results"))
    assert _pictures(browser) == 1
    _screenshot(browser, "home", full_page=True)


@pytest.mark.parametrize(
    ("page", "entry", "section"),
    [("ops", "sacseg.ops.sac_conv2d", "Parameters:"), ("evaluation", "sacseg.evaluation.segmenter.Segmenter", "Returns:")],
)
def test_api_reference(browser: webdriver.Chrome, site_url: str, page: str, entry: str, section: str) -> None:
    _open(browser, f"{site_url}/api/{page}.html")
    assert _heading(browser) == f"sacseg.{page}"
    assert entry.rsplit(".", 1)[1] in browser.find_element(By.ID, entry).text
    # The docstrings' sections are rendered as tables, and their reStructuredText became Markdown.
    body = browser.find_element(By.CSS_SELECTOR, "article").text
    assert section in body
    assert not [markup for markup in (":func:", ":class:", ":meth:", "``") if markup in body]
    _screenshot(browser, f"api_{page}")


def test_config_keys_table(browser: webdriver.Chrome, site_url: str) -> None:
    _open(browser, f"{site_url}/training.html")
    cells = {cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "article table td:first-child code")}
    assert {field.name for field in dataclasses.fields(TrainConfig)} <= cells
    browser.find_element(By.ID, "config-keys").location_once_scrolled_into_view  # noqa: B018  (scrolls)
    _screenshot(browser, "training_config_keys")


def test_equations_render(browser: webdriver.Chrome, site_url: str) -> None:
    _open(browser, f"{site_url}/operator.html")
    equations = browser.find_elements(By.CSS_SELECTOR, "article math[display=block]")
    assert len(equations) == 3
    assert all(equation.size["height"] > 10 for equation in equations)
    _screenshot(browser, "operator")


def _pictures(browser: webdriver.Chrome) -> int:
    """How many pictures the page shows, each checked to have loaded (a decoded image, not a broken link)."""
    images = browser.find_elements(By.CSS_SELECTOR, "article img")
    for image in images:
        WebDriverWait(browser, WAIT_S).until(
            lambda driver, image=image: driver.execute_script("return arguments[0].complete", image)
        )
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 0, image.get_attribute("src")
    return len(images)


def test_results_page_and_pictures(browser: webdriver.Chrome, site_url: str) -> None:
    _open(browser, f"{site_url}/results.html")
    assert _heading(browser).startswith("Results")
    assert _pictures(browser) >= 6
    _screenshot(browser, "results", full_page=True)


def test_demo_picture(browser: webdriver.Chrome, site_url: str) -> None:
    _open(browser, f"{site_url}/getting-started.html")
    assert _heading(browser) == "Getting started"
    assert _pictures(browser) == 1
    _screenshot(browser, "getting_started", full_page=True)


def test_search_finds_the_operator(browser: webdriver.Chrome, site_url: str) -> None:
    _open(browser, f"{site_url}/index.html")
    box = browser.find_element(By.CSS_SELECTOR, "input[data-md-component=search-query]")  # in the header at this width
    box.click()
    box.send_keys("sac_conv2d")
    try:
        WebDriverWait(browser, WAIT_S).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item"))
    except TimeoutException:
        meta = browser.find_element(By.CSS_SELECTOR, ".md-search-result__meta").text
        pytest.fail(f"no search results for sac_conv2d ({meta!r})")
    results = [item.text for item in browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item")]
    assert any("sac_conv2d" in result for result in results), results
    _screenshot(browser, "search")
