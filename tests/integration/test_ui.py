"""The /ui dashboard in a real browser: Debian's headless Chromium driven by selenium,
against a real three-node cluster. Screenshots land in the test's tmp_path (printed).

Chromium and chromium-driver are installed with apt when missing (as root); the tests
skip, saying why, only where that is impossible.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.debian import ensure_tool
from tests.integration.cluster import Cluster, http, running_cluster, wait_for

pytestmark = pytest.mark.integration

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency: pip install -e '.[dev]'")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

PACKAGES = ["chromium", "chromium-driver"]


@pytest.fixture
def browser(tmp_path: Any) -> Iterator[WebDriver]:
    chromium = ensure_tool("chromium", PACKAGES)
    chromedriver = ensure_tool("chromedriver", PACKAGES)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,800",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=chromedriver)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        pytest.skip(f"Chromium is installed but does not start headless here: {exc.msg}")
    driver.set_window_size(1280, 800)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, tmp_path: Any, name: str) -> None:
    """Save the whole page (not only the viewport) as ``tmp_path/name.png``."""
    path = os.path.join(str(tmp_path), f"{name}.png")
    driver.execute_script("window.scrollTo(0, 0)")
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1}
    data = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    with open(path, "wb") as f:
        f.write(base64.b64decode(data["data"]))
    print(f"screenshot: {path}")


def until(driver: WebDriver, condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll the page (not the cluster) until ``condition`` holds."""
    return wait_for(condition, timeout, what, interval=0.05)


def card(driver: WebDriver, nid: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#ring-cards [data-node="{nid}"]')


def rows(driver: WebDriver, selector: str) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def seed(c: Cluster) -> None:
    url = c.url("n1")
    for path, row in (
        ("vservers/vs1", {"name": "vs1"}),
        ("aggregates/a1", {"name": "a1", "home_node": "n1", "size_mb": 100}),
        ("volumes/v1", {"name": "v1", "vserver": "vs1", "aggregate": "a1", "size_mb": 10, "junction_path": "/v1"}),
    ):
        resp = http("PUT", f"{url}/v1/tables/{path}?wait=applied", row)
        assert resp.status == 200, resp.body


def test_dashboard_shows_the_ring_fences_failures_and_tables(tmp_path: Any, browser: WebDriver) -> None:
    with running_cluster(str(tmp_path), 3, extra_args=["--fault-injection"]) as c:
        seed(c)
        browser.get(c.url("n1") + "/ui/")
        assert browser.title == "rdbsync dashboard"

        # The ring: three nodes, one marked leader, all serving.
        def ring_ready() -> bool:
            cards = rows(browser, "#ring-cards [data-node]")
            leaders = rows(browser, "#ring-cards .card.leader")
            return len(cards) == 3 and len(leaders) == 1 and "Leader" in leaders[0].text

        until(browser, ring_ready, 10, "three node cards and a leader")
        leader = rows(browser, "#ring-cards .card.leader")[0].get_attribute("data-node")
        assert leader == c.leader()
        for nid in c.nodes:
            assert "serving" in card(browser, nid).text
        follower = card(browser, next(n for n in c.nodes if n != leader))
        assert not follower.find_elements(By.CSS_SELECTOR, ".badge") and "follower" in follower.text
        # Tables per node, in words.
        assert "in sync" in browser.find_element(By.CSS_SELECTOR, '#tables-nodes [data-node="n2"]').text

        # Live: the page updates at least once a second.
        def updates() -> int:
            return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-updates") or 0)

        first = updates()
        until(browser, lambda: updates() >= first + 3, 3.5, "three page updates within 3.5 s")
        shot(browser, tmp_path, "01-ring")

        # A resync fault on n2: its nfs fence shows within 2 s, with its cause and table.
        assert http("POST", f"{c.url('n2')}/v1/debug/faults", {"table": "export_rules", "mode": "error"}).status == 200
        injected = time.monotonic()
        fence_row = '#fences-active tr[data-node="n2"][data-consumer="nfs"]'
        until(browser, lambda: rows(browser, fence_row), 2.0, "n2's nfs fence on the page within 2 s")
        print(f"fence visible {time.monotonic() - injected:.2f} s after the fault was injected")
        text = rows(browser, fence_row)[0].text
        assert "export_rules" in text and "error" in text
        assert "fenced: " in card(browser, "n2").text and "nfs" in card(browser, "n2").text
        assert not rows(browser, '#fences-active tr[data-node="n1"]')
        until(browser, lambda: rows(browser, '#event-list tr[data-event="fenced"][data-node="n2"]'), 2, "event")
        shot(browser, tmp_path, "02-fenced")

        # Cleared: the fence is lifted, and the page says when and why.
        assert http("DELETE", f"{c.url('n2')}/v1/debug/faults").status == 200
        until(browser, lambda: not rows(browser, fence_row), 15, "n2's nfs fence lifted")
        lifted = until(
            browser, lambda: rows(browser, '#fences-lifted tr[data-node="n2"][data-consumer="nfs"]'), 3, "lifted row"
        )
        assert "export_rules" in lifted[0].text and "resynced" in lifted[0].text
        assert "serving" in card(browser, "n2").text
        shot(browser, tmp_path, "03-lifted")

        # Browse, by keyboard: n2's vldb next to the volumes table it projects.
        select = browser.find_element(By.ID, "browse-node")
        select.send_keys("n2")
        browser.find_element(By.ID, "browse-table").send_keys("vldb")
        browser.find_element(By.ID, "browse-show").send_keys(Keys.ENTER)
        until(
            browser,
            lambda: browser.find_element(By.ID, "browse-summary").text.startswith("vldb on n2:"),
            5,
            "the browse summary for vldb on n2",
        )
        assert rows(browser, '#browse-mgmt tr[data-key="v1"]') and rows(browser, '#browse-blade tr[data-key="v1"]')
        assert "volumes" in browser.find_element(By.ID, "browse-mgmt-h").text
        shot(browser, tmp_path, "04-browse")

        # Kill the node that served the page: the page reads from another member and
        # shows n1 as unreachable (not dropped); then n1 comes back.
        c.signal("n1", signal.SIGKILL)
        until(
            browser,
            lambda: (
                card(browser, "n1").get_attribute("data-reachable") == "false"
                and "unreachable" in card(browser, "n1").text
            ),
            15,
            "n1 shown unreachable",
        )
        assert len(rows(browser, "#ring-cards [data-node]")) == 3
        assert "data from n" in browser.find_element(By.ID, "source").text
        assert "unreachable" in browser.find_element(By.CSS_SELECTOR, '#tables-nodes [data-node="n1"]').text
        shot(browser, tmp_path, "05-unreachable")
        c.start("n1")
        until(
            browser,
            lambda: (
                card(browser, "n1").get_attribute("data-reachable") == "true" and "serving" in card(browser, "n1").text
            ),
            30,
            "n1 back and serving",
        )
        until(browser, lambda: "data from n1" in browser.find_element(By.ID, "source").text, 5, "n1 serving the page")
        shot(browser, tmp_path, "06-back")

        # A narrow window: nothing wider than the window.
        browser.set_window_size(420, 900)
        until(browser, lambda: browser.execute_script("return document.documentElement.scrollWidth") <= 421, 5, "fit")
        shot(browser, tmp_path, "07-narrow")


def test_with_a_token_nothing_under_ui_answers_without_it(tmp_path: Any, browser: WebDriver) -> None:
    token = "ui-t0ken"
    c = Cluster(str(tmp_path), 1, env={"RDBSYNC_API_TOKEN": token})
    c.start()
    try:
        url = c.url("n1")
        bearer = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: http("GET", url + "/readyz", headers=bearer).status == 200, 20, "ready")
        # Without the token: the page asks for it, and nothing else answers.
        page = http("GET", url + "/ui/")
        assert page.status == 401 and 'name="token"' in page.body and "app.js" not in page.body
        for path in ("/ui/app.js", "/ui/style.css", "/ui/api/overview", "/ui/api/local", "/ui/api/browse?table=vldb"):
            assert http("GET", url + path).status == 401, path
        assert http("GET", url + "/v1/status").status == 401
        assert (
            http(
                "POST",
                url + "/ui/login",
                raw=b"token=wrong",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ).status
            == 401
        )
        # With the bearer token, the same paths answer.
        assert http("GET", url + "/ui/api/overview", headers=bearer).status == 200
        assert http("GET", url + "/ui/app.js", headers=bearer).status == 200

        # In the browser: the login form, then the dashboard through an HttpOnly cookie.
        browser.get(url + "/ui/")
        assert browser.find_elements(By.ID, "token") and not browser.find_elements(By.ID, "ring-cards")
        shot(browser, tmp_path, "10-login")
        field = browser.find_element(By.ID, "token")
        field.send_keys("not-it", Keys.ENTER)
        until(browser, lambda: "not this cluster's token" in browser.page_source, 5, "the wrong-token message")
        browser.find_element(By.ID, "token").send_keys(token, Keys.ENTER)
        until(browser, lambda: rows(browser, '#ring-cards [data-node="n1"]'), 10, "the dashboard after signing in")
        assert "serving" in card(browser, "n1").text
        cookie = browser.get_cookie("rdbsync_ui")
        assert cookie is not None and cookie["httpOnly"] and cookie["value"] != token
        assert browser.execute_script("return document.cookie") == ""  # page scripts cannot read it
        shot(browser, tmp_path, "11-signed-in")
        # The session cookie opens /ui only: the API still wants the bearer token.
        session = {"Cookie": f"rdbsync_ui={cookie['value']}"}
        assert http("GET", url + "/ui/api/overview", headers=session).status == 200
        assert http("GET", url + "/v1/status", headers=session).status == 401
        assert http("GET", url + "/ui/api/overview", headers={"Cookie": "rdbsync_ui=forged"}).status == 401
        # Signing out: the form again.
        browser.find_element(By.CSS_SELECTOR, "#logout button").send_keys(Keys.ENTER)
        until(browser, lambda: browser.find_elements(By.ID, "token"), 5, "the login form after signing out")
    finally:
        c.close()


def test_agents_and_file_sinks_show_with_their_state_and_fences(tmp_path: Any, browser: WebDriver) -> None:
    # One node expecting agent "edge" (it holds blade table routes, on which consumer proxy
    # depends): no daemon runs; the test speaks the agent protocol's report itself.
    args = ["--app", "apps.proxy:app", "--agent", "edge=routes", "--agent-timeout", "30"]
    c = Cluster(str(tmp_path), 1, extra_args=args)
    c.start()
    try:
        url = c.url("n1")
        wait_for(lambda: http("GET", url + "/v1/status").status == 200, 20, "n1 answers")
        browser.get(url + "/ui/")
        row = '#tables-nodes [data-node="n1"] tr[data-agent="edge"]'

        def agent_row(state: str) -> str | None:
            # The row's text, read in one step: the page redraws it every second.
            script = "const r = document.querySelector(arguments[0]); return r ? r.innerText : null"
            text: str | None = browser.execute_script(script, f'{row}[data-state="{state}"]')
            return text

        # Declared, never heard from: "missing" in words, and its consumer fenced.
        missing = until(browser, lambda: agent_row("missing"), 10, "agent edge shown missing")
        assert "routes" in missing and "never" in missing and "fenced: proxy" in missing
        shot(browser, tmp_path, "20-agent-missing")

        def report(body: dict[str, Any]) -> None:
            assert http("POST", f"{url}/v1/agents/edge/report", body).status == 200

        def routes_revision() -> int:
            return int(http("GET", url + "/v1/status").body["tables"]["routes"]["applied_revision"])

        def in_sync_and_fencing_nothing() -> str | None:
            # Report what a live agent would: the node's current revision of its table (a
            # node just started may still move it, and an agent behind it stays fenced).
            report({"state": "ok", "applied_revision": routes_revision()})
            text = agent_row("ok")
            return text if text is not None and "fenced" not in text else None

        ok = until(browser, in_sync_and_fencing_nothing, 10, "agent edge shown in sync, fencing nothing")
        assert "in sync" in ok and "s ago" in ok
        revision = routes_revision()

        report({"state": "failed", "applied_revision": revision, "error": "nginx -t said no"})
        failed = until(browser, lambda: agent_row("failed"), 5, "agent edge shown failed")
        assert "nginx -t said no" in failed and "fenced: proxy" in failed
        shot(browser, tmp_path, "21-agent-failed")
        # The charts draw a line from what the node recorded (its start-up commits at least).
        until(browser, lambda: rows(browser, "#chart-writes polyline"), 5, "a write-rate line")
        until(browser, lambda: rows(browser, "#chart-latency polyline"), 5, "a commit -> blade latency line")
    finally:
        c.close()
