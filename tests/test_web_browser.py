# The web app in a real headless Chromium (issue 12): open it with the token, post and see the post,
# add a second real node as a seed, follow its feed and see its new post arrive live (no reload), hostile
# markup from that node shown as text with nothing run, block it and see it gone, cross-site pages that
# auto-submit forms change nothing, keyboard use, JavaScript off, phone width. Screenshots of the main
# pages go to the test's temporary directory (and to $P2PNODE_SCREENSHOTS when set).
from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import start_chromium
from conftest import run_cli
from nodeproc import NodeProcess, feed_entries, init_home, wait_for
from webnode import WebNode

WAIT_S = 25.0
HOSTILE_TEXT = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
HOSTILE_NAME = '<img src=y onerror="window.__pwned=3">Bob'


class Screens:
    def __init__(self, where: Path) -> None:
        self.where = where
        where.mkdir(parents=True, exist_ok=True)
        self.extra = Path(os.environ["P2PNODE_SCREENSHOTS"]) if os.environ.get("P2PNODE_SCREENSHOTS") else None

    def take(self, driver: Any, name: str) -> Path:
        path = self.where / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"screenshot {name} failed"
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("browser")
    bob_home = base / "bob"
    bob_id = init_home(bob_home)
    assert run_cli(bob_home, "profile", "--name", HOSTILE_NAME).returncode == 0
    assert run_cli(bob_home, "post", "bob was here before").returncode == 0
    bob = NodeProcess(bob_home)
    alice = WebNode(base / "alice")
    driver = start_chromium()
    try:
        yield {"alice": alice, "bob": bob, "bob_id": bob_id, "bob_home": bob_home, "driver": driver,
               "screens": Screens(base / "screens")}
    finally:
        driver.quit()
        assert alice.stop() == 0
        assert bob.stop() == 0


def wait_until(driver: Any, condition: Any, what: str) -> Any:
    """Poll `condition` until it holds; an element that went stale because the page navigated meanwhile
    just means 'not yet'."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
                         ).until(condition, message=f"waiting for {what}")


def page_text(driver: Any) -> str:
    return driver.execute_script("return document.body.innerText")


def submit(driver: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, selector).click()


def test_1_open_with_the_token_and_post(world: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    driver, alice = world["driver"], world["alice"]
    driver.get(alice.url)
    assert driver.current_url == alice.base + "/"  # the token left the address bar
    assert driver.execute_script("return document.cookie") == ""  # HttpOnly: scripts cannot read it
    driver.find_element(By.ID, "compose-text").send_keys("my first post from a browser")
    submit(driver, "form.compose button[type=submit]")
    wait_until(driver, lambda d: "Posted." in page_text(d), "the notice")
    assert "my first post from a browser" in page_text(driver)
    assert any(e.get("text") == "my first post from a browser" for e in feed_entries(alice.home, alice.id))


def test_2_add_a_seed_follow_a_second_node_and_see_its_post_arrive_live(world: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    driver, alice, bob = world["driver"], world["alice"], world["bob"]
    driver.get(alice.base + "/network")
    driver.find_element(By.ID, "seed-address").send_keys(bob.address)
    submit(driver, "form.seed button")
    wait_until(driver, lambda d: "Seed added" in page_text(d), "the seed notice")
    # the peers table updates live once the node has dialled the seed
    wait_until(driver, lambda d: "Connected now" in page_text(d), "the peer to show as connected")
    world["screens"].take(driver, "network")
    driver.get(f"{alice.base}/feed/{world['bob_id']}")
    submit(driver, 'form input[value="follow"] ~ button')
    wait_until(driver, lambda d: "Following." in page_text(d), "the follow notice")
    driver.get(alice.base + "/")
    wait_until(driver, lambda d: "bob was here before" in page_text(d), "bob's older post to sync")
    driver.execute_script("window.__marker = 'no reload'")
    assert run_cli(world["bob_home"], "post", "bob posts live").returncode == 0
    wait_until(driver, lambda d: "bob posts live" in page_text(d), "bob's new post to appear without a reload")
    assert driver.execute_script("return window.__marker") == "no reload"
    world["screens"].take(driver, "timeline")
    # and the other way: what was posted in the browser reaches the peer once it follows
    assert run_cli(world["bob_home"], "follow", alice.id).returncode == 0
    wait_for(lambda: any(e.get("text") == "my first post from a browser"
                         for e in feed_entries(world["bob_home"], alice.id)), WAIT_S, "alice's post at bob's node")


def test_3_hostile_markup_shows_as_text_and_runs_nothing(world: dict[str, Any]) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    driver, alice = world["driver"], world["alice"]
    driver.get(alice.base + "/")
    driver.execute_script("window.__marker = 'no reload'")
    assert run_cli(world["bob_home"], "post", HOSTILE_TEXT).returncode == 0
    wait_until(driver, lambda d: HOSTILE_TEXT in page_text(d), "the hostile post, as text, live")
    for _ in range(2):  # inserted live, then rendered by the server after a reload
        assert driver.execute_script("return window.__marker") in ("no reload", None)
        assert driver.execute_script("return typeof window.__pwned") == "undefined"
        assert driver.execute_script("return document.querySelectorAll('#entries img, #entries script').length") == 0
        assert HOSTILE_NAME in page_text(driver)  # bob's hostile name, as text
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018 - raises when no dialog is open
        driver.refresh()
        wait_until(driver, lambda d: HOSTILE_TEXT in page_text(d), "the page after a reload")


def test_3b_a_retraction_arriving_live_hides_the_text_without_a_reload(world: dict[str, Any]) -> None:
    driver, alice = world["driver"], world["alice"]
    driver.get(alice.base + "/")
    driver.execute_script("window.__marker = 'no reload'")
    posted = run_cli(world["bob_home"], "post", "a post bob regrets", "--json")
    assert posted.returncode == 0
    wait_until(driver, lambda d: "a post bob regrets" in page_text(d), "bob's post to arrive")
    assert run_cli(world["bob_home"], "retract", json.loads(posted.stdout)["hash"]).returncode == 0
    wait_until(driver, lambda d: "a post bob regrets" not in page_text(d), "the retraction to hide it")
    assert "Retracted by its author." in page_text(driver)
    assert driver.execute_script("return window.__marker") == "no reload"


def test_4_cross_site_pages_that_auto_submit_forms_change_nothing(world: dict[str, Any], tmp_path: Path) -> None:
    driver, alice = world["driver"], world["alice"]
    before = len(feed_entries(alice.home, alice.id))
    pages = {
        # a page on another port of the same host: same-site, so the cookie IS sent; Origin and CSRF refuse it
        "/fake-csrf.html": _attack_form(alice.base + "/post", {"text": "csrf attack", "csrf": "0" * 64, "back": "/"}),
        # even with a leaked CSRF token, a foreign Origin is refused
        "/leaked-csrf.html": _attack_form(alice.base + "/contact", {"feed": world["bob_id"], "kind": "block",
                                                                    "csrf": alice.csrf, "back": "/"}),
        "/fetch.html": _attack_fetch(alice.base + "/post", {"text": "fetch attack", "csrf": alice.csrf}),
    }
    with _serve(pages) as port:
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            for name in ("/fake-csrf.html", "/leaked-csrf.html"):
                driver.get(origin + name)
                wait_until(driver, lambda d: d.current_url.startswith(alice.base), "the form to submit")
                wait_until(driver, lambda d: "403" in page_text(d), "the app to refuse it")
            driver.get(origin + "/fetch.html")
            wait_until(driver, lambda d: d.title == "sent", "the fetch to be sent")
    after = feed_entries(alice.home, alice.id)
    assert len(after) == before, [e for e in after[: len(after) - before]]
    driver.get(f"{alice.base}/feed/{world['bob_id']}")
    assert "You block this feed" not in page_text(driver)


def test_5_block_the_second_node_and_see_it_gone(world: dict[str, Any]) -> None:
    driver, alice = world["driver"], world["alice"]
    driver.get(f"{alice.base}/feed/{world['bob_id']}")
    world["screens"].take(driver, "feed")
    submit(driver, 'form input[value="block"] ~ button')
    wait_until(driver, lambda d: "You block this feed" in page_text(d), "the block")
    assert "bob posts live" not in page_text(driver)
    driver.get(alice.base + "/")
    text = page_text(driver)
    assert "bob posts live" not in text and "bob was here before" not in text and HOSTILE_TEXT not in text
    assert "my first post from a browser" in text


def test_6_keyboard_only_posting(world: dict[str, Any]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    driver, alice = world["driver"], world["alice"]
    driver.get(alice.base + "/")
    focused = []
    for _ in range(12):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        focused.append(driver.execute_script("const e = document.activeElement; return e.id || e.textContent"))
        if focused[-1] == "compose-text":
            break
    assert focused[0] == "Skip to content" and "Timeline" in focused and focused[-1] == "compose-text", focused
    ActionChains(driver).send_keys("typed with the keyboard").perform()
    ActionChains(driver).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
    wait_until(driver, lambda d: "Posted." in page_text(d), "Ctrl+Enter to post")
    assert "typed with the keyboard" in page_text(driver)


def test_7_phone_width_and_screenshots(world: dict[str, Any]) -> None:
    driver, alice, screens = world["driver"], world["alice"], world["screens"]
    driver.get(alice.base + "/profile")
    screens.take(driver, "profile")
    driver.set_window_size(390, 844)
    try:
        for path, name in (("/", "phone-timeline"), ("/network", "phone-network"), (f"/feed/{alice.id}", "phone-feed")):
            driver.get(alice.base + path)
            overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} scrolls sideways by {overflow} px at phone width"
            screens.take(driver, name)
    finally:
        driver.set_window_size(1280, 900)
    assert len(list(screens.where.glob("*.png"))) >= 7


def test_8_reading_and_posting_with_javascript_off(world: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    alice = world["alice"]
    driver = start_chromium(javascript=False)
    try:
        driver.get(alice.url)
        assert driver.execute_script is not None
        assert "typed with the keyboard" in driver.find_element(By.TAG_NAME, "body").text
        driver.find_element(By.ID, "compose-text").send_keys("no javascript needed")
        driver.find_element(By.CSS_SELECTOR, "form.compose button[type=submit]").click()
        wait_until(driver, lambda d: "no javascript needed" in d.find_element(By.TAG_NAME, "body").text, "the post")
        # reply through the <details> form, still without scripts
        first = driver.find_element(By.CSS_SELECTOR, "#entries li.entry")
        first.find_element(By.TAG_NAME, "summary").click()
        first.find_element(By.NAME, "text").send_keys("a reply without scripts")
        first.find_element(By.CSS_SELECTOR, "details form button").click()
        wait_until(driver, lambda d: "Reply posted." in d.find_element(By.TAG_NAME, "body").text, "the reply")
        assert "in reply to" in driver.find_element(By.TAG_NAME, "body").text
        world["screens"].take(driver, "no-javascript")
    finally:
        driver.quit()


# ------------------------------------------------------------------ the attacker's site

def _attack_form(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
    return (f'<!doctype html><title>win a prize</title><form id="f" method="post" action="{action}">{inputs}</form>'
            '<script>document.getElementById("f").submit()</script>')


def _attack_fetch(url: str, fields: dict[str, str]) -> str:
    body = json.dumps("&".join(f"{k}={v}" for k, v in fields.items()))
    return (f'<!doctype html><title>loading</title><script>fetch("{url}", {{method: "POST", mode: "no-cors", '
            f'credentials: "include", headers: {{"content-type": "application/x-www-form-urlencoded"}}, body: {body}}})'
            '.finally(() => { document.title = "sent"; });</script>')


class _serve:
    """A throwaway site on 127.0.0.1 serving the attacker's pages."""

    def __init__(self, pages: dict[str, str]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = pages.get(self.path, "not found").encode()
                self.send_response(200 if self.path in pages else 404)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        return self.server.server_address[1]

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
