"""`stgt serve` in real headless Chromium: type a caption, see its clip among the results, click it, the clip plays.

The index is the real one built by `stgt index` with a real registered model (the `search_index` fixture); the
server is the real command, a subprocess on a free loopback port. Chromium is driven by Selenium 4 through
Debian's chromium-driver (named explicitly, so Selenium Manager never downloads a browser or a driver).

Needs Debian's `chromium` and `chromium-driver`; skipped without them, except under CI=true where it fails. The
screenshot is kept in the test's temp dir, and copied to reports/search-screenshot.png when STGT_UI_SCREENSHOT=1.
"""
from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator
from urllib.parse import quote

import pytest

from tests.conftest import REPO_ROOT
from tests.search.world import subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

URL_LINE = re.compile(r"search page on (http://127\.0\.0\.1:\d+/)")


@pytest.fixture
def browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    reason = ("chromium and chromium-driver are not installed (Debian: apt-get install -y chromium "
              "chromium-driver); the search page's browser test needs them")
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def served(search_index, tmp_path) -> Iterator[str]:
    """`stgt serve` on a free loopback port; yields the URL it printed."""
    env = {**subprocess_env(search_index), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "stgt_pipeline.cli", "serve", "--index", str(search_index.index_dir),
               "--model", search_index.model_uri, "--port", "0", "--top", "5"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        url, deadline = None, time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            if m := URL_LINE.search(line):
                url = m.group(1)
        if url is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            pytest.fail(f"`stgt serve` printed no URL (exit {proc.poll()}):\n{''.join(output)[-3000:]}")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def driver(browser_binaries, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_binaries
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_page_load_timeout(120)
    try:
        yield browser
    finally:
        browser.quit()


def test_type_a_caption_see_its_clip_click_it_and_it_plays(served, driver, search_index, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert search_index.test_caption, "the search world found no test caption whose clip ranks first"
    driver.get(served)
    box = WebDriverWait(driver, 30).until(ec.element_to_be_clickable((By.ID, "q")))
    box.clear()
    box.send_keys(search_index.test_caption)
    box.send_keys(Keys.ENTER)

    # the results: thumbnails with rank, score and id, the expected clip first
    WebDriverWait(driver, 120).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results a[data-video]")))
    links = driver.find_elements(By.CSS_SELECTOR, "#results a[data-video]")
    ids = [a.get_attribute("data-video") for a in links]
    assert search_index.expected_video_id in ids, ids
    assert ids[0] == search_index.expected_video_id, ids  # the fixture's caption: `stgt search` ranks it first
    assert driver.find_element(By.ID, "q").get_attribute("value") == search_index.test_caption
    hit = links[ids.index(search_index.expected_video_id)]
    assert re.fullmatch(r"-?\d+\.\d{3}", hit.find_element(By.CLASS_NAME, "score").text)
    assert hit.find_element(By.CLASS_NAME, "vid").text == search_index.expected_video_id
    thumb = hit.find_element(By.CSS_SELECTOR, "img.thumb")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", thumb))

    # click: a <video> with that clip plays
    hit.click()
    video = WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#player video")))
    expected_src = served.rstrip("/") + f"/video/{quote(search_index.expected_video_id, safe='')}"
    assert video.get_attribute("src") == expected_src
    assert video.get_attribute("controls") is not None and video.get_attribute("autoplay") is not None
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return arguments[0].readyState", video) >= 1,
                                    "the clip's metadata never loaded")
    media_error = driver.execute_script("return arguments[0].error && arguments[0].error.code", video)
    assert not media_error, f"the <video> failed with MediaError code {media_error}"
    duration = driver.execute_script("return arguments[0].duration", video)
    assert duration and duration > 0
    time.sleep(0.5)  # a frame or two, for the screenshot

    screenshot = tmp_path / "search-screenshot.png"
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("STGT_UI_SCREENSHOT") == "1":
        (REPO_ROOT / "reports").mkdir(exist_ok=True)
        shutil.copy(screenshot, REPO_ROOT / "reports" / "search-screenshot.png")
