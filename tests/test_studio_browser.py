"""The studio in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by
selenium; nothing is downloaded at run time) loads the page served on 127.0.0.1, writes a 3-caption story
on the tiny Char-LDM run, clicks Draw and finds the 3 frames in the page. Every resource the page loaded
came from the studio's own address (no fonts, scripts or analytics from the network).

Skipped, with the reason, where the browser is missing (a developer without it still runs the suite);
`.ci/run` installs it (apt-get install chromium chromium-driver) and sets STORYVIZ_REQUIRE_BROWSER=1, under
which a missing browser fails instead. selenium is in requirements-dev.txt."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.ports import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1800")
STORY = "Ada walked on the beach.\nBob ran in the forest.\nAda met Bob in the city."

HAVE_BROWSER = Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()
pytestmark = pytest.mark.skipif(not HAVE_BROWSER and not os.environ.get("STORYVIZ_REQUIRE_BROWSER"),
                                reason="no headless Chromium here (apt-get install chromium chromium-driver; .ci/run does)")


@pytest.fixture(scope="module")
def page_url(stage1_run, tmp_path_factory):
    from src.studio.app import build_app, launch
    from src.studio.drawing import PipelineCache, Studio

    studio = Studio(roots=[stage1_run.parent.parent.parent], out=tmp_path_factory.mktemp("studio") / "stories",
                    cache=PipelineCache("cpu"))
    app = build_app(studio)
    yield launch(app, studio, free_port(), block=False)
    app.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)  # no Selenium Manager
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def wait_for(driver, condition, seconds: float, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.5).until(condition)
    except TimeoutException:
        status = driver.find_elements("css selector", "#sgv-status")
        pytest.fail(f"waited {seconds} s for {what}; the status line says: "
                    f"{status[0].text if status else '(none)'}")


def frames_in(driver) -> list:
    return [img for img in driver.find_elements("css selector", "#sgv-frames img") if img.get_attribute("src")]


@pytest.mark.slow
def test_the_page_draws_a_story_typed_into_it(page_url, browser):
    browser.get(page_url)
    # the run list is filled on load, and choosing a run sets its drawing settings (the tiny run: 1 step)
    wait_for(browser, lambda d: "char_ldm · toy/s1" in d.find_element("css selector", "#sgv-run input").get_attribute("value"),
             60, "the run list")
    wait_for(browser, lambda d: d.find_element("css selector", "#sgv-steps input[type=number]").get_attribute("value") == "1",
             60, "the run's settings")
    story = browser.find_element("css selector", "#sgv-story textarea")
    story.clear()
    story.send_keys(STORY)
    browser.find_element("css selector", "#sgv-draw").click()
    wait_for(browser, lambda d: len(frames_in(d)) == 3, 300, "3 frames in the gallery")
    wait_for(browser, lambda d: d.find_element("css selector", "#sgv-status").text.startswith("Done: 3 frames"), 120,
             "the done status")
    captions = browser.find_element("css selector", "#sgv-frames").text
    assert "1. Ada walked on the beach." in captions and "fused: Ada, Bob" in captions
    host = page_url.rstrip("/")
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [name for name in loaded if not name.startswith(host) and not name.startswith("data:")]
    assert loaded and outside == []
