# The web app over real HTTP against a real `p2pnode run` (issue 12): every route, every refusal of the
# guard (token, Host, Origin, CSRF, method, body type and size), the CLI's rules and errors shown on the
# page, escaping of hostile text, keyset paging, the live event stream, and the `web`/`status`/`--web` CLI.
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import cli_command, cli_env, run_cli
from nodeproc import feed_entries, wait_for
from webnode import WAIT_S, ForeignFeed, WebNode

from p2pnode.web.access import TOKEN_FILE, WebConfigError, WebOptions, host_header_ok, parse_web_option
from p2pnode.web.pages import human_time
from protocol.ids import entry_ref

ERROR_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    node = WebNode(tmp_path_factory.mktemp("web") / "home")
    yield node
    assert node.stop() == 0


def test_token_file_is_private_and_url_sets_an_httponly_strict_cookie(web: WebNode) -> None:
    mode = stat.S_IMODE((web.home / TOKEN_FILE).stat().st_mode)
    assert mode == 0o600
    fresh = httpx.Client(base_url=web.base)
    response = fresh.get(f"/network?token={web.token}")
    assert response.status_code == 303
    assert response.headers["location"] == "/network"  # the token leaves the address bar at once
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"p2pnode_{web.port}={web.token}")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert fresh.get("/network").status_code == 200
    response = httpx.get(f"{web.base}//evil.example/?token={web.token}")  # never a redirect off this app
    assert response.status_code == 303 and response.headers["location"] == "/"
    fresh.close()


@pytest.mark.parametrize("path", ["/", "/network", "/profile", "/static/app.js", "/events", "/feed/@x", "/nope"])
def test_without_the_cookie_every_route_is_403_and_shows_nothing(web: WebNode, path: str) -> None:
    response = httpx.get(web.base + path)
    assert response.status_code == 403
    assert "Timeline" not in response.text and web.id not in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_wrong_token_or_cookie_is_403(web: WebNode) -> None:
    assert httpx.get(f"{web.base}/?token={'x' * 43}").status_code == 403
    assert httpx.get(f"{web.base}/", cookies={f"p2pnode_{web.port}": "x" * 43}).status_code == 403
    # the token is no use in a POST's URL
    response = httpx.post(f"{web.base}/post?token={web.token}", data={"text": "x"}, headers={"origin": web.base})
    assert response.status_code == 403


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1:1", "localhost.evil.example:{port}",
                                  "10.1.2.3:{port}", "", "127.0.0.1"])
def test_a_host_header_other_than_the_served_one_is_refused(web: WebNode, host: str) -> None:
    response = web.client.get("/", headers={"host": host.format(port=web.port)})
    assert response.status_code == 403
    assert "wrong Host" in response.text


def test_localhost_names_the_same_server(web: WebNode) -> None:
    assert web.client.get("/", headers={"host": f"localhost:{web.port}"}).status_code == 200


@pytest.mark.parametrize("origin", [None, "null", "http://evil.example", "http://127.0.0.1:1", "https://127.0.0.1:{port}"])
def test_a_post_without_this_apps_origin_is_refused(web: WebNode, origin: str | None) -> None:
    headers = {} if origin is None else {"origin": origin.format(port=web.port)}
    response = web.client.post("/post", data={"csrf": web.csrf, "text": "cross-site"}, headers=headers)
    assert response.status_code == 403
    assert all(e.get("text") != "cross-site" for e in feed_entries(web.home, web.id))


@pytest.mark.parametrize("csrf", [None, "", "0" * 64])
def test_a_post_without_the_csrf_token_is_refused(web: WebNode, csrf: str | None) -> None:
    data = {"text": "no csrf"} if csrf is None else {"text": "no csrf", "csrf": csrf}
    response = web.client.post("/post", data=data, headers={"origin": web.base})
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert all(e.get("text") != "no csrf" for e in feed_entries(web.home, web.id))


def test_methods_body_types_and_sizes_are_checked(web: WebNode) -> None:
    assert web.client.get("/post").status_code == 405
    assert web.client.request("PUT", "/", headers={"origin": web.base}).status_code == 405
    response = web.client.post("/post", json={"csrf": web.csrf, "text": "json"}, headers={"origin": web.base})
    assert response.status_code == 415
    response = web.client.post("/post", content=b"csrf=" + b"a" * 600_000, headers={
        "origin": web.base, "content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413


def test_post_appears_in_timeline_and_own_feed_and_is_signed_into_the_store(web: WebNode) -> None:
    response = web.form("/post", text="hello from the browser", back="/")
    assert response.status_code == 303 and response.headers["location"] == "/?done=posted"
    page = web.client.get("/?done=posted").text
    assert "hello from the browser" in page and "Posted." in page
    assert "hello from the browser" in web.client.get(f"/feed/{web.id}").text
    assert any(e.get("text") == "hello from the browser" for e in feed_entries(web.home, web.id))


def test_the_clis_errors_show_on_the_page_with_the_draft_kept(web: WebNode) -> None:
    response = web.form("/post", text="   ", back="/")
    assert response.status_code == 400
    assert "empty post: there is nothing to publish" in response.text
    response = web.form("/post", text="x" * 70_000, back="/")
    assert response.status_code == 400 and "limit" in response.text
    assert "x" * 70_000 in response.text  # the text typed is still in the box
    missing = entry_ref(b"\1" * 32)
    response = web.form("/post", text="orphan", reply_to=missing, back="/")
    assert response.status_code == 400 and f"no entry {missing} in this store" in response.text
    response = web.form("/post", text="typo", reply_to="%nonsense", back="/")
    assert response.status_code == 400 and "not an entry hash" in response.text


def test_reply_shows_its_parent_and_retract_shows_retracted(web: WebNode) -> None:
    web.form("/post", text="parent post", back="/")
    parent = next(e for e in feed_entries(web.home, web.id) if e.get("text") == "parent post")
    assert web.form("/post", text="child reply", reply_to=parent["hash"], back="/").status_code == 303
    page = web.client.get("/").text
    child = page.index("child reply")
    assert "in reply to" in page[page.rindex("<li", 0, child):child] and "parent post" in page
    response = web.form("/retract", entry=parent["hash"], back="/")
    assert response.status_code == 303
    page = web.client.get("/").text
    assert "Retracted by its author." in page and ">parent post<" not in page
    response = web.form("/retract", entry=parent["hash"], back="/")
    assert response.status_code == 400 and "already retracted" in response.text
    entry_page = web.client.get(f"/entry/{parent['hash'][1:]}")
    assert entry_page.status_code == 200 and "Retracted by its author." in entry_page.text


def test_hostile_text_from_the_network_is_escaped(web: WebNode) -> None:
    other = ForeignFeed(b"h" * 32)
    other.write(web.home, web.id, [
        {"type": "profile", "name": "<img src=x onerror=alert(1)>", "about": "<script>alert(2)</script>"},
        {"type": "post", "text": "<script>alert(3)</script> & <b>bold</b>"},
    ])
    assert web.form("/contact", feed=other.id, kind="follow", back="/").status_code == 303
    page = web.client.get("/").text
    assert "&lt;script&gt;alert(3)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page
    feed_page = web.client.get(f"/feed/{other.id}").text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in feed_page and "<script>alert" not in feed_page


def test_follow_unfollow_block_unblock_from_the_feed_page(web: WebNode) -> None:
    other = ForeignFeed(b"f" * 32)
    other.write(web.home, web.id, [{"type": "profile", "name": "Frieda"}, {"type": "post", "text": "frieda speaks"}])
    page = web.client.get(f"/feed/{other.id}").text
    assert "Frieda" in page and 'value="follow"' in page and "frieda speaks" in page
    assert "frieda speaks" not in web.client.get("/").text  # not followed yet
    response = web.form("/contact", feed=other.id, kind="follow", back=f"/feed/{other.id}")
    assert response.status_code == 303 and response.headers["location"] == f"/feed/{other.id}?done=follow"
    assert 'value="unfollow"' in web.client.get(f"/feed/{other.id}").text
    assert "frieda speaks" in web.client.get("/").text
    assert "Nothing to change." in web.client.get(web.form("/contact", feed=other.id, kind="follow",
                                                           back="/").headers["location"]).text
    web.form("/contact", feed=other.id, kind="unfollow", back="/")
    assert "frieda speaks" not in web.client.get("/").text
    web.form("/contact", feed=other.id, kind="block", back=f"/feed/{other.id}")
    page = web.client.get(f"/feed/{other.id}").text
    assert "You block this feed" in page and "frieda speaks" not in page and 'value="unblock"' in page
    web.form("/contact", feed=other.id, kind="unblock", back=f"/feed/{other.id}")
    assert 'value="block"' in web.client.get(f"/feed/{other.id}").text
    response = web.form("/contact", feed=web.id, kind="block", back="/")
    assert response.status_code == 400 and "cannot block your own feed" in response.text
    response = web.form("/contact", feed="@nope", kind="follow", back="/")
    assert response.status_code == 400 and "not a feed id" in response.text
    response = web.form("/contact", feed=other.id, kind="befriend", back="/")
    assert response.status_code == 400 and "unknown action" in response.text


def test_profile_edit_with_the_clis_limits(web: WebNode) -> None:
    assert "Your profile" in web.client.get("/profile").text
    response = web.form("/profile", name="Ada", about="writes\nabout trains", back="/profile")
    assert response.status_code == 303
    page = web.client.get("/profile").text
    assert 'value="Ada"' in page and "writes\nabout trains" in page
    assert "Ada" in web.client.get(f"/feed/{web.id}").text
    response = web.form("/profile", name="N" * 65, about="", back="/profile")
    assert response.status_code == 400 and "profile name must be 1-64 characters" in response.text
    assert 'value="' + "N" * 65 + '"' in response.text  # what was typed stays in the form
    response = web.form("/profile", name="  ", back="/profile")
    assert response.status_code == 400


def test_network_page_and_adding_a_seed(web: WebNode) -> None:
    page = web.client.get("/network").text
    assert web.runtime()["address"] in page and "Copy address" in page
    assert "No peer is connected." in page
    other = ForeignFeed(b"s" * 32)
    response = web.form("/seed", address=f"127.0.0.1:9/{other.id}", back="/network")
    assert response.status_code == 303
    assert f"127.0.0.1:9/{other.id}" in web.client.get("/network").text
    response = web.form("/seed", address="not an address", back="/network")
    assert response.status_code == 400 and "not an address" in response.text
    response = web.form("/seed", address=web.runtime()["address"], back="/network")
    assert response.status_code == 400 and "this node&#39;s own" in response.text


def test_back_must_be_a_path_of_this_app(web: WebNode) -> None:
    response = web.form("/post", text="where to", back="//evil.example/x")
    assert response.headers["location"].startswith("/?")
    for back in ("http://evil.example/", "/\\evil.example/", "/\r\nset-cookie: x=y", "javascript:alert(1)"):
        response = web.form("/post", text="where to", back=back)
        assert response.status_code == 303 and response.headers["location"] == "/?done=posted", back
    response = web.form("/post", text="where to", back="/feed/" + web.id + "?before=3")
    assert response.headers["location"] == f"/feed/{web.id}?before=3&done=posted"


def test_keyset_paging_walks_every_entry_once_in_order(web: WebNode) -> None:
    other = ForeignFeed(b"p" * 32)
    other.write(web.home, web.id, [{"type": "post", "text": f"paged {n:03d}"} for n in range(130)])
    web.form("/contact", feed=other.id, kind="follow", back="/")
    seen: list[str] = []
    url = "/"
    while url:
        page = web.client.get(url).text
        seen += [line.split("paged ")[1][:3] for line in page.splitlines() if '<p class="text">paged ' in line]
        marker = 'rel="next"'
        if marker in page:
            link = page[:page.index(marker)].rsplit('href="', 1)[1].split('"', 1)[0]
            url = link.replace("&amp;", "&")
        else:
            url = ""
    assert seen == [f"{n:03d}" for n in reversed(range(130))]
    feed_seen: list[str] = []
    url = f"/feed/{other.id}"
    while url:
        page = web.client.get(url).text
        feed_seen += [line.split("paged ")[1][:3] for line in page.splitlines() if '<p class="text">paged ' in line]
        url = page[:page.index('rel="next"')].rsplit('href="', 1)[1].split('"', 1)[0] if 'rel="next"' in page else ""
    assert feed_seen == seen
    response = web.client.get("/?before=abc")
    assert response.status_code == 400 and "not a paging position" in response.text


def test_unknown_pages_and_ids(web: WebNode) -> None:
    assert web.client.get("/no/such/page").status_code == 404
    response = web.client.get("/feed/@bad")
    assert response.status_code == 400 and "not a feed id" in response.text
    missing = entry_ref(b"\2" * 32)
    response = web.client.get(f"/entry/{missing[1:]}")
    assert response.status_code == 404 and "no entry" in response.text
    assert web.client.get("/static/nothing.js").status_code == 404
    script = web.client.get("/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")


def test_live_stream_sends_a_post_written_by_the_cli(web: WebNode) -> None:
    after = web.client.get("/").text.split('data-after="', 1)[1].split('"', 1)[0]
    with web.client.stream("GET", f"/events?view=timeline&after={after}") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert run_cli(web.home, "post", "live from the cli").returncode == 0
        received = ""
        for chunk in stream.iter_text():
            received += chunk
            if "live from the cli" in received:
                break
    assert "event: entries" in received
    assert web.client.get("/events?after=x").status_code == 400
    assert web.client.get("/events?view=feed:@bad").status_code == 400


def test_status_shows_the_web_url(web: WebNode) -> None:
    result = run_cli(web.home, "status")
    assert f"web: {web.base}/" in result.stdout
    assert web.token not in result.stdout


# ------------------------------------------------------------------ the CLI around it

def test_web_command_without_a_running_node(home: Path) -> None:
    assert run_cli(home, "init").returncode == 0
    result = run_cli(home, "web")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("Error: no node is running on") and "Traceback" not in result.stderr


@pytest.mark.parametrize(("option", "message"), [
    (["--web", "nonsense"], "--web must be HOST:PORT or 'off'"),
    (["--web", "0.0.0.0:0"], "needs --web-public"),
    (["--web", "192.0.2.1:8766"], "needs --web-public"),
])
def test_bad_web_options_are_one_line(home: Path, option: list[str], message: str) -> None:
    assert run_cli(home, "init").returncode == 0
    result = run_cli(home, "run", "--listen", "127.0.0.1:0", *option, timeout=ERROR_TIMEOUT_S)
    assert result.returncode == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_taken_web_port_is_one_line(home: Path) -> None:
    assert run_cli(home, "init").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(home, "run", "--listen", "127.0.0.1:0", "--web", f"127.0.0.1:{port}",
                         timeout=ERROR_TIMEOUT_S)
    assert result.returncode == 1
    assert f"cannot serve the web app on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_a_second_node_on_the_machine_serves_its_app_on_a_free_port(tmp_path: Path) -> None:
    """Two nodes side by side, as the README shows, with no --web: the usual address is taken by the first
    (here by a socket standing in for it), so the second serves its app on a free port and says so."""
    from nodeproc import NodeProcess, init_home

    from p2pnode.web.access import DEFAULT_WEB
    home = tmp_path / "second"
    init_home(home)
    host, port = DEFAULT_WEB.rsplit(":", 1)
    with socket.socket() as taken:
        try:
            taken.bind((host, int(port)))
            taken.listen()
        except OSError:
            pass  # something on this machine has the port already: the same situation
        node = NodeProcess(home, "--web", DEFAULT_WEB)  # what `run` does with no --web (tests set P2PNODE_WEB=off)
        try:
            def runtime() -> dict:
                try:
                    return json.loads((home / "node.json").read_text())
                except (OSError, ValueError):
                    return {}

            wait_for(lambda: "web" in runtime(), WAIT_S, "the web URL in node.json")
            url = runtime()["web"]
            assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{port}/"), url
            assert "usual address" in node.log_text() and "taken" in node.log_text()
        finally:
            assert node.stop() == 0


def test_web_off_serves_nothing(tmp_path: Path) -> None:
    from nodeproc import NodeProcess, init_home
    home = tmp_path / "off"
    init_home(home)
    node = NodeProcess(home, "--web", "off")
    try:
        wait_for(lambda: (home / "node.json").exists(), WAIT_S, "node.json")
        result = run_cli(home, "web")
        assert result.returncode == 1 and "--web off" in result.stderr
    finally:
        assert node.stop() == 0


def test_a_public_bind_needs_the_flag_and_warns(tmp_path: Path) -> None:
    from nodeproc import NodeProcess, init_home
    home = tmp_path / "public"
    init_home(home)
    node = NodeProcess(home, "--web", "0.0.0.0:0", "--web-public")
    try:
        wait_for(lambda: "not only on this machine" in node.log_text(), WAIT_S, "the warning")
    finally:
        assert node.stop() == 0


# ------------------------------------------------------------------ pure rules

def test_host_rules() -> None:
    loop = WebOptions("127.0.0.1", 8766)
    assert host_header_ok("127.0.0.1:8766", loop, 8766) and host_header_ok("localhost:8766", loop, 8766)
    assert host_header_ok("[::1]:8766", loop, 8766)
    assert not host_header_ok("127.0.0.1:8767", loop, 8766)
    assert not host_header_ok("attacker.example:8766", loop, 8766)
    assert not host_header_ok("192.168.1.5:8766", loop, 8766)
    public = WebOptions("0.0.0.0", 8766, public=True)
    assert host_header_ok("192.168.1.5:8766", public, 8766)
    assert not host_header_ok("rebound.example:8766", public, 8766)
    assert parse_web_option("off") is None
    assert parse_web_option("[::1]:0") == WebOptions("::1", 0)
    with pytest.raises(WebConfigError):
        parse_web_option("example.org:80")


def test_human_times() -> None:
    now = 1_800_000_000_000
    assert human_time(now - 10_000, now) == "just now"
    assert human_time(now - 3 * 60_000, now) == "3 min ago"
    assert human_time(now - 5 * 3_600_000, now) == "5 h ago"
    assert human_time(now - 2 * 86_400_000, now) == "2 d ago"
    assert human_time(now - 30 * 86_400_000, now) == "16 Dec 2026"
    assert human_time(now + 3_600_000, now) == "in the future"
    assert human_time(2**53 - 1, now) == "in the future"
    assert human_time(0, now) == "1 Jan 1970"


def test_token_file_mode_is_enforced(tmp_path: Path) -> None:
    from p2pnode.web.access import load_or_create_token, read_token
    token = load_or_create_token(tmp_path)
    assert read_token(tmp_path) == token and len(token) >= 40
    os.chmod(tmp_path / TOKEN_FILE, 0o644)
    with pytest.raises(WebConfigError, match="chmod 600"):
        read_token(tmp_path)


def test_web_open_starts_the_browser_with_the_url(web: WebNode, tmp_path: Path) -> None:
    opened = tmp_path / "opened"
    script = tmp_path / "fake-browser"
    script.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    script.chmod(0o755)
    env = {**cli_env(web.home), "BROWSER": f"{script} %s", "DISPLAY": ""}
    result = subprocess.run([*cli_command(), "web", "--open"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == web.url
    wait_for(opened.exists, WAIT_S, "the browser command to run")
    assert opened.read_text() == web.url
