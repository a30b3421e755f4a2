"""The portal in a real browser: headless Chromium (Debian's, with its chromedriver given
explicitly) driven by selenium, against `webhooks api` under real uvicorn on 127.0.0.1, with
a real worker and dispatcher delivering to a real receiver that answers with hostile markup.

The link is opened from a page of another site (``http://localhost:…``), as a customer
clicks it in their dashboard; screenshots of every page are written under the module's
temporary folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from sqlalchemy.engine import Engine

from tests.acceptance.support import IN_CI, chromium, chromium_args
from tests.support.api import bearer, new_key, served_api
from tests.support.deliveries import new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import Receiver, Reply
from webhooks import clock
from webhooks.portal_sessions import create_portal_session
from webhooks.settings import Settings

# Five or six attempts a second apart (jitter decides): the endpoint turns `failing` (five
# failures in a row) and the delivery `failed` within seconds.
STACK_ENV = {
    "WEBHOOKS_API_ALLOW_HTTP": "true",
    "WEBHOOKS_RETRY_SCHEDULE": "1s",
    "WEBHOOKS_RETRY_WINDOW": "5s",
    # The breaker would hold the fifth attempt for its cooldown (30 s).
    "WEBHOOKS_BREAKER_THRESHOLD": "50",
}
CHROMEDRIVER = "/usr/bin/chromedriver"
HOSTILE_BODY = "<script>document.title='owned'</script><img src=x onerror=alert(1)>"
HOSTILE_HEADER = "<img src=x onerror=alert(2)>"
OUR_TITLE_END = "· Webhooks"
VIEWER_ZONE = "Asia/Kolkata"


def customer_site() -> Receiver:
    """The customer's side on 127.0.0.1: ``/`` is their dashboard (a page with the portal link,
    set by `Portal.open_from_dashboard`); ``POST /bad`` answers 500 with hostile markup in its
    body and headers; other POSTs 200."""
    site = Receiver().start()
    hostile = {"content-type": "text/html", "x-evil": HOSTILE_HEADER}
    site.respond("/bad", lambda _: Reply(500, HOSTILE_BODY.encode(), hostile))
    return site


@dataclass
class Portal:
    driver: Any
    api_url: str
    project: str
    key: str
    endpoint_id: str
    event_id: str
    attempts: int  # how many the failed delivery made
    site: Receiver
    shots: Path

    def open(self, path: str) -> None:
        self.driver.get(self.api_url + path)

    def shot(self, name: str) -> Path:
        target = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(target))
        return target

    def text(self) -> str:
        """The page's text; empty while a navigation replaces the page under our feet (a
        caller polling for some text then simply looks again)."""
        try:
            return str(self.driver.find_element(By.TAG_NAME, "body").text)
        except (StaleElementReferenceException, NoSuchElementException):  # no body yet
            return ""

    def new_link(self) -> str:
        response = httpx.post(
            self.api_url + "/v1/webhook_portal_sessions", headers=bearer(self.key), timeout=10
        )
        assert response.status_code == 201, response.text
        return str(response.json()["url"])

    def open_from_dashboard(self, link: str) -> None:
        """Click the link on the customer's dashboard, a page of another site."""
        dashboard = (
            "<!doctype html><title>Acme dashboard</title>"
            f'<a id="portal" href="{self.api_url}{link}">Webhook deliveries</a>'
        ).encode()
        page = {"content-type": "text/html; charset=utf-8"}
        self.site.respond("/", lambda _: Reply(200, dashboard, page))
        self.driver.get(f"http://localhost:{self.site.port}/")
        self.driver.find_element(By.ID, "portal").click()


def _driver(profile: Path) -> Any:
    if not Path(CHROMEDRIVER).exists():
        message = f"{CHROMEDRIVER} is not installed (run .ci/install-browser)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for argument in chromium_args(profile):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A viewer in India (UTC+5:30): times must be shown in their zone, not the server's.
    service = Service(CHROMEDRIVER, env={**os.environ, "TZ": VIEWER_ZONE})
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture(scope="module")
def site() -> Iterator[Receiver]:
    site = customer_site()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def portal(
    env: dict[str, str],
    stack: Stack,
    engine: Engine,
    settings: Settings,
    site: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Portal]:
    """A failed delivery (five or six hostile 500s) of a project with a write key, the API served,
    and a browser that has not opened the portal yet."""
    project = f"proj_{secrets.token_hex(4)}"
    endpoint_id, _ = new_endpoint(engine, settings, site.url("/bad"), project)
    event_id = publish_one(engine, settings, project)
    (delivery,) = wait_for_state(engine, settings, event_id, "failed", timeout=40)
    shots = tmp_path_factory.mktemp("portal-screenshots")
    with served_api(env, tmp_path_factory.mktemp("api")) as api_url:
        driver = _driver(tmp_path_factory.mktemp("chromium-profile"))
        try:
            yield Portal(
                driver,
                api_url,
                project,
                new_key(engine, settings, project),
                endpoint_id,
                event_id,
                delivery.attempt_count,
                site,
                shots,
            )
        finally:
            driver.quit()
            print(f"portal screenshots: {shots}")


def _no_alert(driver: Any) -> None:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    text = alert.text
    alert.dismiss()
    raise AssertionError(f"an alert ran: {text!r}")


@pytest.mark.slow
def test_the_link_clicked_on_another_site_lands_signed_in_and_works_only_once(
    portal: Portal,
) -> None:
    link = portal.new_link()
    portal.open_from_dashboard(link)
    wait_for(lambda: "Webhook endpoints" in portal.text(), timeout=10, what="the portal")
    assert portal.driver.current_url == portal.api_url + "/portal/"
    assert "pl_" not in portal.driver.current_url
    assert portal.project in portal.text()
    assert portal.driver.title.endswith(OUR_TITLE_END)
    portal.shot("endpoints")
    # The same link again (from the dashboard, or history): refused, clearly.
    portal.open_from_dashboard(link)
    wait_for(lambda: "already used" in portal.text(), timeout=10, what="the error page")
    portal.shot("link-used")
    assert portal.driver.find_elements(By.CSS_SELECTOR, "a[href$='/portal/endpoints/new']") == []


@pytest.mark.slow
def test_an_expired_link_shows_the_error_page_and_nothing_else(
    portal: Portal, engine: Engine, settings: Settings
) -> None:
    with engine.begin() as conn:
        _, token = create_portal_session(
            conn,
            settings.db_schema,
            project_id=portal.project,
            mode="live",
            key_id="key_test",
            ttl=timedelta(minutes=1),
            now=clock.now() - timedelta(hours=2),
        )
    portal.open_from_dashboard(f"/portal/enter/{token}")
    wait_for(lambda: "expired" in portal.text(), timeout=10, what="the error page")
    portal.shot("link-expired")
    assert portal.endpoint_id not in portal.driver.page_source


@pytest.mark.slow
def test_the_failing_endpoint_its_attempts_and_a_hostile_body_shown_as_text(
    portal: Portal,
) -> None:
    portal.open_from_dashboard(portal.new_link())
    wait_for(lambda: "Webhook endpoints" in portal.text(), timeout=10, what="the portal")
    row = portal.text()
    assert (
        "Failing" in row
        and "HTTP 500" in row
        and "0 %" in row
        and f"of {portal.attempts} attempts" in row
    )
    # Times are shown in the viewer's zone by the page's script (CSP allows it: same origin).
    shown = portal.driver.find_element(By.CSS_SELECTOR, "time[datetime]")
    assert shown.get_attribute("title").endswith(" UTC")
    assert "GMT+5:30" in shown.text, shown.text
    assert "shown in your time zone (Asia/" in portal.text()
    portal.driver.find_element(By.LINK_TEXT, portal.site.url("/bad")).click()
    wait_for(lambda: "Deliveries" in portal.text(), timeout=10, what="the endpoint page")
    assert "Failed" in portal.text()
    portal.shot("endpoint")
    portal.driver.find_element(By.LINK_TEXT, "deployment.succeeded").click()
    last = f"Attempt {portal.attempts}"
    wait_for(lambda: last in portal.text(), timeout=10, what="the delivery page")
    portal.shot("delivery")
    portal.driver.find_element(By.LINK_TEXT, "Attempt 1").click()
    wait_for(lambda: "Response" in portal.text(), timeout=10, what="the attempt page")
    portal.shot("attempt")
    _no_alert(portal.driver)
    assert portal.driver.find_element(By.ID, "response-body").text == HOSTILE_BODY
    assert HOSTILE_HEADER in portal.text()
    assert portal.driver.title.endswith(OUR_TITLE_END) and "owned" not in portal.driver.title
    assert portal.driver.find_elements(By.CSS_SELECTOR, "img") == []
    scripts = portal.driver.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src") for s in scripts] == [
        portal.api_url + "/portal/static/portal.js"
    ]
    violations = [
        entry["message"]
        for entry in portal.driver.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]
    assert violations == []


@pytest.mark.slow
def test_replay_from_the_delivery_page_and_watch_the_new_attempt_appear(portal: Portal) -> None:
    portal.open_from_dashboard(portal.new_link())
    wait_for(lambda: "Webhook endpoints" in portal.text(), timeout=10, what="the portal")
    portal.open(f"/portal/endpoints/{portal.endpoint_id}")
    portal.driver.find_element(By.LINK_TEXT, "deployment.succeeded").click()
    last = f"Attempt {portal.attempts}"
    wait_for(lambda: last in portal.text(), timeout=10, what="the delivery page")
    portal.driver.find_element(By.XPATH, "//button[text()='Replay to this endpoint']").click()
    wait_for(lambda: "Replay queued" in portal.text(), timeout=10, what="the notice")

    def replayed() -> bool:
        portal.driver.refresh()  # what the page's Reload link does, waiting for the load
        return f"Attempt {portal.attempts + 1}" in portal.text()

    wait_for(replayed, timeout=20, interval=0.5, what="the replay's attempt on the page")
    assert "replay" in portal.text()
    portal.shot("delivery-replayed")


@pytest.mark.slow
def test_add_an_endpoint_see_its_secret_once_then_rotate_it(portal: Portal) -> None:
    portal.open_from_dashboard(portal.new_link())
    wait_for(lambda: "Webhook endpoints" in portal.text(), timeout=10, what="the portal")
    portal.driver.find_element(By.LINK_TEXT, "Add endpoint").click()
    portal.driver.find_element(By.ID, "url").send_keys(portal.site.url("/good"))
    portal.driver.find_element(By.ID, "description").send_keys("added in the browser")
    portal.shot("add-endpoint")
    portal.driver.find_element(By.XPATH, "//button[text()='Add endpoint']").click()
    wait_for(lambda: "shown only once" in portal.text(), timeout=10, what="the secret")
    secret = portal.driver.find_element(By.ID, "secret").get_attribute("value")
    assert secret.startswith("whsec_")
    portal.driver.find_element(By.XPATH, "//button[text()='Copy']").click()
    portal.shot("secret")
    portal.driver.find_element(By.PARTIAL_LINK_TEXT, "go to the endpoint").click()
    wait_for(lambda: "No attempts yet — send a test event" in portal.text(), timeout=10)
    assert secret not in portal.driver.page_source
    portal.shot("endpoint-empty")
    portal.driver.find_element(By.XPATH, "//button[text()='Rotate secret']").click()
    wait_for(lambda: "New signing secret" in portal.text(), timeout=10, what="the new secret")
    rotated = portal.driver.find_element(By.ID, "secret").get_attribute("value")
    assert rotated.startswith("whsec_") and rotated != secret
    portal.driver.back()
    portal.driver.refresh()
    assert rotated not in portal.driver.page_source


@pytest.mark.slow
def test_a_post_without_the_csrf_token_is_refused(portal: Portal) -> None:
    portal.open_from_dashboard(portal.new_link())
    wait_for(lambda: "Webhook endpoints" in portal.text(), timeout=10, what="the portal")
    portal.open(f"/portal/endpoints/{portal.endpoint_id}")
    button = portal.driver.find_element(By.XPATH, "//button[text()='Disable']")
    # What a forged form would lack: WebDriver's script is not the page's, CSP does not apply.
    portal.driver.execute_script(
        "arguments[0].form.querySelector('input[name=csrf]').remove();", button
    )
    button.click()
    wait_for(lambda: "refused" in portal.text(), timeout=10, what="the refusal")
    portal.shot("csrf-refused")
    portal.open(f"/portal/endpoints/{portal.endpoint_id}")
    assert portal.driver.find_elements(By.XPATH, "//button[text()='Disable']")


@pytest.mark.slow
def test_at_phone_width_no_page_scrolls_sideways(portal: Portal) -> None:
    portal.open_from_dashboard(portal.new_link())
    wait_for(lambda: "Webhook endpoints" in portal.text(), timeout=10, what="the portal")
    portal.driver.set_window_size(375, 812)
    try:
        width = portal.driver.execute_script("return window.innerWidth")
        assert width <= 400, width
        pages = {
            "phone-endpoints": "/portal/",
            "phone-endpoint": f"/portal/endpoints/{portal.endpoint_id}",
            "phone-new": "/portal/endpoints/new",
        }
        portal.open(pages["phone-endpoint"])
        portal.driver.find_element(By.LINK_TEXT, "deployment.succeeded").click()
        delivery = portal.driver.current_url.removeprefix(portal.api_url)
        attempt = portal.driver.find_element(By.LINK_TEXT, "Attempt 1").get_attribute("href")
        pages["phone-delivery"] = delivery
        pages["phone-attempt"] = attempt.removeprefix(portal.api_url)
        for name, path in pages.items():
            portal.open(path)
            overflow = portal.driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            portal.shot(name)
            assert overflow <= 0, (path, overflow)
    finally:
        portal.driver.set_window_size(1400, 900)


def test_chromium_and_its_driver_come_from_the_same_build() -> None:
    browser = shutil.which("chromium")
    if browser is None or not Path(CHROMEDRIVER).exists():
        if IN_CI:
            pytest.fail("chromium or chromedriver is missing (run .ci/install-browser)")
        pytest.skip("chromium or chromedriver is missing")
    versions = [
        subprocess.run(
            [path, "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        for path in (browser, CHROMEDRIVER)
    ]
    assert versions[0] == versions[1], versions
