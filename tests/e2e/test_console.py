"""The console in a real headless Chromium (Debian's `chromium` + `chromedriver`, driven by
Selenium): a user enters the token, labels 20 queue items with the number keys (one undo
on the way), the answers are stored as feedback, the pending trigger retrains and the new
version is swapped in; texts and label names with markup stay text under the page's own
Content-Security-Policy. Screenshots go to tmp (and to $REFIT_SCREENSHOTS_DIR when set:
docs/img/ holds the ones README uses)."""

from __future__ import annotations

import csv
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import banking77_slice, read_banking77
from tests.e2e.conftest import TOKEN, Server, make_server, production, wait_job

pytestmark = pytest.mark.slow

CLASSES = sorted({label for _, label in read_banking77("train")})[60:64]
ODD = '<img src=x onerror="window.__pwned=1">'  # a class name with markup in it
SCRIPT = "<script>window.__pwned = 2</script> is this my card?"
ANSWERS = 20


def renamed(label: str) -> str:
    return ODD if label == CLASSES[0] else label


@pytest.fixture(scope="module")
def console_server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("console")
    first = tmp / "first.csv"
    with first.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows((t, renamed(y)) for t, y in banking77_slice("train", CLASSES, per_class=8))
    srv = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(first),
        REFIT_RETRAIN_MIN_PENDING=str(ANSWERS),
        REFIT_TRIGGER_POLL_S="1",
        REFIT_DRIFT_THRESHOLD="0",
        REFIT_PROMOTION_TOLERANCE="0.2",  # this test is about the loop, not the gate
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail("chromium and chromedriver are missing: run tests/install_system_deps.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(flag)
    options.add_argument("--disable-dev-shm-usage")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(check, timeout: float = 30, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # element not there yet, or replaced while read
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def screenshot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("REFIT_SCREENSHOTS_DIR"):
        shutil.copy(path, Path(os.environ["REFIT_SCREENSHOTS_DIR"]) / name)


def test_a_user_labels_twenty_items_with_the_keyboard_and_the_model_retrains(
    console_server: Server, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    srv, driver = console_server, browser
    used = {t for t, _ in banking77_slice("train", CLASSES, per_class=8)}
    pool = [r for r in banking77_slice("train", CLASSES, per_class=None) if r[0] not in used][:80]
    truth = {t: renamed(y) for t, y in pool}
    with srv.client() as client:
        first_version = production(client)
        body = {"texts": [SCRIPT, *truth]}
        r = client.post("/models/default/pool", json=body)
        assert r.status_code == 200 and r.json()["accepted"] == len(truth) + 1, r.text
        page = client.get("/ui")
        assert "script-src 'self'" in page.headers["content-security-policy"]

    driver.get(srv.url + "/ui")
    token = wait_for(lambda: driver.find_element(By.ID, "token"), what="the token field")
    token.send_keys(TOKEN, Keys.ENTER)
    wait_for(lambda: "token set" in driver.find_element(By.ID, "token-state").text)
    driver.get(srv.url + "/ui#/label/default")
    try:
        wait_for(lambda: driver.find_element(By.ID, "item-text").text, what="a queue item")
    except AssertionError:
        raise AssertionError(driver.find_element(By.ID, "main").text + srv.tail()) from None
    driver.find_element(By.ID, "item-text").click()  # keys go to the page, not a field
    odd = [
        b
        for b in driver.find_elements(By.CSS_SELECTOR, "#label-buttons button")
        if b.get_attribute("data-label") == ODD
    ]
    assert len(odd) == 1 and odd[0].text.endswith(ODD)  # shown as text, not as an image

    def press(key: str) -> None:
        before = driver.find_element(By.ID, "item-info").text
        ActionChains(driver).send_keys(key).perform()
        try:
            wait_for(lambda: driver.find_element(By.ID, "item-info").text != before, timeout=60)
        except AssertionError:
            toast = driver.find_element(By.ID, "toast").text
            raise AssertionError(
                f"{key!r} on {before!r}: {toast!r} {driver.get_log('browser')}"
            ) from None

    def answer_shown() -> None:
        text = driver.find_element(By.ID, "item-text").text
        if text == SCRIPT:  # stored markup is text here too: skip it
            press("s")
            return
        labels = [
            b.get_attribute("data-label")
            for b in driver.find_elements(By.CSS_SELECTOR, "#label-buttons button")
        ]
        press(str(labels.index(truth[text]) + 1))

    def answered() -> int:
        return int(driver.find_element(By.ID, "answered-count").text.split()[1])

    while answered() < 5:
        answer_shown()
    press("u")  # undo the last answer: it comes back, and is answered again
    assert answered() == 4
    while answered() < ANSWERS - 1:
        answer_shown()
    screenshot(driver, tmp_path, "console-label.png")
    answer_shown()
    assert answered() == ANSWERS

    db = sqlite3.connect(srv.home / "refit.sqlite")
    try:
        stored = db.execute(
            "SELECT e.text, e.label FROM examples e JOIN batches b ON e.batch_id = b.id"
            " WHERE b.model = 'default' AND b.source = 'feedback'"
        ).fetchall()
    finally:
        db.close()
    assert len(stored) == ANSWERS and all(truth[t] == y for t, y in stored)

    with srv.client() as client:  # the pending trigger fires, the job publishes and swaps
        job = wait_for(
            lambda: next(
                (j for j in client.get("/jobs").json()["jobs"] if "trigger" in j["request"]),
                None,
            ),
            timeout=60,
            what="a triggered job",
        )
        done, _ = wait_job(client, job["id"], timeout=600)
        assert done["state"] == "succeeded", done
        new = done["result"]["version"]
        wait_for(lambda: production(client) == new != first_version, what="the promotion")
        wait_for(
            lambda: client.post("/predict", json={"texts": ["card"]}).json()["version"] == new,
            what="the swap",
        )

    driver.get(srv.url + "/ui#/model/default")
    rows = wait_for(
        lambda: len(driver.find_elements(By.CSS_SELECTOR, "#versions tr")) >= 3 or None,
        what="two versions in the table",
    )
    assert rows
    assert new in driver.find_element(By.ID, "versions").text
    screenshot(driver, tmp_path, "console-model.png")
    assert driver.execute_script("return window.__pwned === undefined")
    assert not driver.find_elements(By.CSS_SELECTOR, "main img")
    violations = [
        e["message"]
        for e in driver.get_log("browser")
        if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"
    ]
    assert violations == [], violations
