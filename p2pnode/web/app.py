# The owner's web app (issue 12): a Starlette app served by hypercorn's trio worker inside the node's own
# nursery. It owns the routes, the guard that every request passes (Host, token cookie, Origin, CSRF),
# the security headers, form handling, the live event stream, and `serve_web`, which runs it all.
# Reads and writes use the web app's own Local (its own SQLite connection) in one worker thread, so a
# slow page never stalls the node's event loop, and the node notices the app's writes as it notices the CLI's.
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from protocol.ids import parse_entry_ref, parse_feed_id

from .. import seeds as seedbook
from ..local import Local, UserError, check_text, explain, open_home
from . import pages
from .access import (
    WebOptions,
    WebStartError,
    cookie_name,
    csrf_token,
    host_header_ok,
    load_or_create_token,
    origin_ok,
    token_ok,
)

log = logging.getLogger("p2pnode.web")

HERE = Path(__file__).parent
MAX_FORM_BYTES = 512 * 1024  # a post's payload is at most 64 KiB; URL-encoded it can triple
HUB_POLL_S = 0.25  # how often the app looks for commits by other processes (the CLI) when the node is quiet
HEARTBEAT_S = 15.0
SAFE_BACK = re.compile(r"/(?!/)[A-Za-z0-9@._/-]*")  # where a form may send the browser back to
STATUS_REFRESH_S = 2.0  # the node's status is re-read at least this often even when it says nothing changed
STATIC_TYPES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make Chromium send "Origin: null"
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
DONE_MESSAGES = {
    "posted": "Posted.", "replied": "Reply posted.", "retracted": "Retracted.", "profile": "Profile saved.",
    "follow": "Following.", "unfollow": "No longer following.", "block": "Blocked: nothing of this feed is "
    "fetched, stored, served or shown any more.", "unblock": "Unblocked.", "unchanged": "Nothing to change.",
    "seed": "Seed added: the node dials it now.", "seed-known": "That address was already known.",
}


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Db:
    """The web app's store connection, used from one worker thread at a time."""

    def __init__(self, local: Local) -> None:
        self.local = local
        self.limiter = trio.CapacityLimiter(1)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, self.local, *args, limiter=self.limiter)


class Hub:
    """Wakes the live streams when the store or the node's peers change."""

    def __init__(self, db: Db, status: Callable[[], dict[str, Any]], changed: Callable[[], trio.Event]) -> None:
        self.db = db
        self.status_source = status
        self.changed_source = changed
        self.event = trio.Event()
        self.status: dict[str, Any] = {}
        self.status_version = 0
        self._fingerprint: Any = None

    def current_status(self) -> dict[str, Any]:
        try:
            return self.status_source()
        except Exception:  # noqa: BLE001 - a status that cannot be read is shown as none, not a dead page
            log.exception("node status unavailable")
            return {"address": None, "peers": []}

    async def run(self) -> None:
        status_due = 0.0
        while True:
            changed = self.changed_source()
            with trio.move_on_after(HUB_POLL_S) as quiet:
                await changed.wait()
            version = await self.db.run(lambda local: (local.store.data_version(), local.store.last_row_id()))
            # the node's status reads its whole clock: only when the node says something changed, or now and then
            if not quiet.cancelled_caught or trio.current_time() >= status_due:
                status_due = trio.current_time() + STATUS_REFRESH_S
                status = self.current_status()
                if json.dumps(status, sort_keys=True) != json.dumps(self.status, sort_keys=True):
                    self.status = status
                    self.status_version += 1
            fingerprint = (version, self.status_version)
            if fingerprint != self._fingerprint:
                self._fingerprint = fingerprint
                self.event.set()
                self.event = trio.Event()
            await trio.sleep(0.05)  # coalesce a burst (a large sync stores a batch every few ms)


class Guard:
    """ASGI middleware in front of every route: the served Host, the owner's token (swapped from the URL
    into a cookie), and for anything but GET/HEAD a matching Origin. Adds the security headers."""

    def __init__(self, app: ASGIApp, web: WebApp) -> None:
        self.app = app
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()

        async def send_secure(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                # Server-Timing: the time this server spent before the first byte (bench/web_bench.py reads it)
                timing = f"app;dur={(time.perf_counter() - started) * 1000:.2f}".encode()
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS,
                                                  (b"server-timing", timing)]}
            await send(message)

        request = Request(scope)
        try:
            response = self.web.check(request)
        except Refused as refused:
            response = PlainTextResponse(f"{refused.status} {refused.reason}\n", status_code=refused.status)
        if response is not None:
            await response(scope, receive, send_secure)
            return
        await self.app(scope, receive, send_secure)


class WebApp:
    def __init__(self, token: str, options: WebOptions, db: Db, hub: Hub) -> None:
        self.token = token
        self.csrf = csrf_token(token)
        self.options = options
        self.port = options.port
        self.db = db
        self.hub = hub
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                            undefined=jinja2.StrictUndefined)
        self.static = {name: (HERE / "static" / name).read_bytes() for name in STATIC_TYPES}
        routes = [
            Route("/", self.timeline),
            Route("/feed/{feed}", self.feed),
            Route("/entry/{ref}", self.entry),
            Route("/profile", self.profile, methods=["GET", "HEAD"]),
            Route("/profile", self.save_profile, methods=["POST"]),
            Route("/network", self.network, methods=["GET", "HEAD"]),
            Route("/post", self.post, methods=["POST"]),
            Route("/retract", self.retract, methods=["POST"]),
            Route("/contact", self.contact, methods=["POST"]),
            Route("/seed", self.seed, methods=["POST"]),
            Route("/events", self.events),
            Route("/static/{name}", self.static_file),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
        ]
        self.asgi = Guard(Starlette(routes=routes, exception_handlers={
            404: self.not_found, 405: self.not_allowed, Refused: self.refused}), self)

    # ------------------------------------------------------------ the guard

    def check(self, request: Request) -> Response | None:
        """A response that ends the request here (a refusal, or the token swapped for a cookie), or None."""
        host = request.headers.get("host")
        if not host_header_ok(host, self.options, self.port):
            raise Refused(403, "wrong Host: open the address that 'p2pnode web' prints")
        given = request.query_params.get("token")
        if given is not None:
            if request.method not in ("GET", "HEAD") or not token_ok(given, self.token):
                raise Refused(403, "wrong token: open the URL that 'p2pnode web' prints")
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            path = request.url.path if SAFE_BACK.fullmatch(request.url.path) else "/"
            target = path + ("?" + urlencode(query) if query else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(cookie_name(self.port), self.token, httponly=True, samesite="strict",
                                path="/", max_age=10 * 365 * 86400)
            return response
        if not token_ok(request.cookies.get(cookie_name(self.port)), self.token):
            raise Refused(403, "forbidden: open the URL that 'p2pnode web' prints")
        if request.method not in ("GET", "HEAD") and not origin_ok(request.headers.get("origin"), host or ""):
            raise Refused(403, "cross-origin request refused")
        return None

    async def form(self, request: Request) -> dict[str, str]:
        """An URL-encoded form body (bounded), with its CSRF token checked."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise Refused(415, "forms must be application/x-www-form-urlencoded")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Refused(413, f"form over {MAX_FORM_BYTES} bytes")
        try:
            fields = parse_qs(body.decode("ascii"), keep_blank_values=True, max_num_fields=20,
                              errors="replace")
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "malformed form") from None
        values = {key: items[-1] for key, items in fields.items()}
        if not token_ok(values.get("csrf"), self.csrf):
            raise Refused(403, "missing or wrong CSRF token")
        return values

    # ------------------------------------------------------------ rendering

    def render(self, template: str, status_code: int = 200, **context: Any) -> Response:
        status = self.hub.status or self.hub.current_status()
        context.setdefault("error", None)
        context.setdefault("notice", None)
        context.setdefault("draft", "")
        context.setdefault("after", 0)
        context.setdefault("live", "")
        html = self.templates.get_template(template).render(csrf=self.csrf, me=self.me,
                                                            netstatus=pages.status_line(status), **context)
        return Response(html, status_code=status_code, media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-store"})

    @property
    def me(self) -> pages.Author:
        local = self.db.local
        return pages.Author(local.owner, local.id, None)

    def notice(self, request: Request) -> str | None:
        return DONE_MESSAGES.get(request.query_params.get("done", ""))

    async def page(self, request: Request, path: str, query: dict[str, str], error: str | None = None,
                   draft: str = "", status_code: int = 200) -> Response:
        """Render the page at `path` (with `query`); a user error in it is shown on the page, status 400."""
        notice = None if error else self.notice(request)
        try:
            if path == "/":
                data = await self.db.run(pages.timeline_page, query.get("before"))
                return self.render("timeline.html", status_code, title="Timeline", nav="timeline", live="timeline",
                                   error=error, draft=draft, notice=notice, back=_back(path, query), **data)
            if path.startswith("/feed/"):
                feed = path[len("/feed/"):]
                data = await self.db.run(pages.feed_page, feed, query.get("before"))
                author = data["feed"]
                return self.render("feed.html", status_code, title=author.label, nav="me" if data["is_me"] else "",
                                   live=f"feed:{author.id}", error=error, draft=draft, notice=notice,
                                   back=_back(path, query), **data)
            if path.startswith("/entry/"):
                data = await self.db.run(pages.entry_page, path[len("/entry/"):])
                return self.render("entry.html", status_code, title="Entry", nav="", error=error, draft=draft,
                                   notice=notice, back=_back(path, query), **data)
            if path == "/profile":
                data = await self.db.run(pages.profile_page)
                if draft:
                    data.update(json.loads(draft))
                return self.render("profile.html", status_code, title="Your profile", nav="profile", error=error,
                                   notice=notice, back="/profile", **data)
            if path == "/network":
                data = await self.db.run(pages.network_page, self.hub.current_status())
                return self.render("network.html", status_code, title="Network", nav="network", live="network",
                                   error=error,
                                   draft=draft, notice=notice, back="/network", **data)
        except Exception as exc:  # noqa: BLE001 - a user's error is shown on the page; anything else is a bug
            message = explain(exc)
            if message is None:
                raise
            return self.render("error.html", 404 if "no entry" in message else 400, title="Not possible",
                               nav="", error=message, back="/")
        return self.render("error.html", 404, title="Not found", nav="", error="there is no such page here", back="/")

    # ------------------------------------------------------------ pages

    async def timeline(self, request: Request) -> Response:
        return await self.page(request, "/", dict(request.query_params))

    async def feed(self, request: Request) -> Response:
        return await self.page(request, request.url.path, dict(request.query_params))

    async def entry(self, request: Request) -> Response:
        return await self.page(request, request.url.path, dict(request.query_params))

    async def profile(self, request: Request) -> Response:
        return await self.page(request, "/profile", {})

    async def network(self, request: Request) -> Response:
        return await self.page(request, "/network", {})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self.render("error.html", 404, title="Not found", nav="", error="there is no such page here",
                           back="/")

    async def refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return PlainTextResponse(f"{exc.status} {exc.reason}\n", status_code=exc.status)

    async def not_allowed(self, request: Request, exc: Exception) -> Response:
        return PlainTextResponse("405 method not allowed\n", status_code=405)

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            return PlainTextResponse("404 not found\n", status_code=404)
        return Response(self.static[name], media_type=STATIC_TYPES[name], headers={"cache-control": "no-cache"})

    # ------------------------------------------------------------ actions (POST)

    async def act(self, request: Request, action: Callable[[Local, dict[str, str]], str],
                  draft_of: Callable[[dict[str, str]], str] = lambda values: "") -> Response:
        """Run a state change from a form; on success go back (303) with a notice, on a user error show the
        page it came from with the error and the text typed so far (400)."""
        values = await self.form(request)
        parts = urlsplit(values.get("back", "/"))
        if parts.scheme or parts.netloc or not SAFE_BACK.fullmatch(parts.path):
            parts = urlsplit("/")  # only a path of this app: never '//host' or '/\\host', which browsers follow
        try:
            done = await self.db.run(action, values)
        except Exception as exc:  # noqa: BLE001 - see page()
            message = explain(exc)
            if message is None:
                raise
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            return await self.page(request, parts.path, query, error=message, draft=draft_of(values),
                                   status_code=400)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items() if k != "done"}
        query["done"] = done
        return RedirectResponse(f"{parts.path}?{urlencode(query)}", status_code=303)

    async def post(self, request: Request) -> Response:
        def action(local: Local, values: dict[str, str]) -> str:
            text = check_text(values.get("text", "").replace("\r\n", "\n"))
            if values.get("reply_to"):
                local.reply(parse_entry_ref(values["reply_to"]), text)
                return "replied"
            local.publish({"type": "post", "text": text})
            return "posted"
        return await self.act(request, action, lambda values: values.get("text", ""))

    async def retract(self, request: Request) -> Response:
        def action(local: Local, values: dict[str, str]) -> str:
            local.retract(parse_entry_ref(values.get("entry", "")))
            return "retracted"
        return await self.act(request, action)

    async def contact(self, request: Request) -> Response:
        def action(local: Local, values: dict[str, str]) -> str:
            kind = values.get("kind", "")
            if kind not in ("follow", "unfollow", "block", "unblock"):
                raise UserError(f"unknown action {kind[:20]!r}")
            stored = local.set_contact(parse_feed_id(values.get("feed", "")), kind)
            return kind if stored is not None else "unchanged"
        return await self.act(request, action)

    async def save_profile(self, request: Request) -> Response:
        def action(local: Local, values: dict[str, str]) -> str:
            about = values.get("about", "").replace("\r\n", "\n")
            local.set_profile(values.get("name", "").strip(), about if about.strip() else None)
            return "profile"
        return await self.act(request, action, lambda values: json.dumps(
            {"name": values.get("name", ""), "about": values.get("about", "")}))

    async def seed(self, request: Request) -> Response:
        def action(local: Local, values: dict[str, str]) -> str:
            try:  # what `p2pnode seeds add` does: the seeds file and the peer book
                added = seedbook.add(local.home, local.store, values.get("address", "").strip())
            except seedbook.SeedError as exc:
                raise UserError(str(exc)) from None
            return "seed" if added else "seed-known"
        return await self.act(request, action, lambda values: values.get("address", ""))

    # ------------------------------------------------------------ live updates (server-sent events)

    async def events(self, request: Request) -> Response:
        view = request.query_params.get("view", "")
        after_text = request.headers.get("last-event-id") or request.query_params.get("after", "0")
        if not after_text.isdigit() or len(after_text) > 19:
            return PlainTextResponse("400 bad 'after'\n", status_code=400)
        if view not in ("", "timeline", "network"):
            if not view.startswith("feed:"):
                return PlainTextResponse("400 bad 'view'\n", status_code=400)
            try:
                parse_feed_id(view[5:])
            except Exception:  # noqa: BLE001 - the id is checked here, where a bad one is the client's
                return PlainTextResponse("400 bad 'view'\n", status_code=400)
        return StreamingResponse(self._stream(view, int(after_text)), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def _stream(self, view: str, after: int) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        seen_status = -1
        while True:
            event = self.hub.event
            if view == "timeline" or view.startswith("feed:"):
                items, after, more = await self.db.run(pages.live_items, view, after)
                if items or more:
                    fragment = self.templates.get_template("_live.html")
                    data = {"items": [{"key": item.key, "html": fragment.render(item=item, csrf=self.csrf,
                                                                                  back=_live_back(view))}
                                      for item in items], "more": more,
                            "retracted": [item.retracts for item in items if item.retracts]}
                    yield f"id: {after}\nevent: entries\ndata: {json.dumps(data)}\n\n"
            if self.hub.status_version != seen_status:
                seen_status = self.hub.status_version
                status = self.hub.status or self.hub.current_status()
                data = {"line": pages.status_line(status)}
                if view == "network":
                    network = await self.db.run(pages.network_page, status)
                    data["peers"] = self.templates.get_template("_peers.html").render(**network)
                yield f"event: status\ndata: {json.dumps(data)}\n\n"
            with trio.move_on_after(HEARTBEAT_S) as timer:
                await event.wait()
            if timer.cancelled_caught:
                yield ": keep-alive\n\n"


def _back(path: str, query: dict[str, str]) -> str:
    kept = {k: v for k, v in query.items() if k == "before"}
    return path + ("?" + urlencode(kept) if kept else "")


def _live_back(view: str) -> str:
    return "/" if view == "timeline" else f"/feed/{view[5:]}"


# ------------------------------------------------------------------ serving

async def serve_web(home: Path, options: WebOptions, status: Callable[[], dict[str, Any]],
                    changed: Callable[[], trio.Event], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the web app until cancelled; `task_status.started(base_url)` once it accepts connections.
    `status` and `changed` are the running node's (Node.status, and its current `changed` event)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    token = load_or_create_token(home)
    with open_home(home, create_store=True) as local:
        db = Db(local)
        hub = Hub(db, status, changed)
        app = WebApp(token, options, db, hub)
        config = Config()
        host = f"[{options.host}]" if ":" in options.host else options.host
        config.bind = [f"{host}:{options.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("p2pnode.web.server")
        config.graceful_timeout = 0.5
        config.keep_alive_timeout = 75.0
        async with trio.open_nursery() as nursery:
            try:
                binds = await nursery.start(_serve_app, serve, app.asgi, config)
            except (OSError, BaseExceptionGroup) as exc:  # hypercorn's own nurseries wrap a failed bind
                problem = _os_error(exc)
                if problem is None:
                    raise
                raise WebStartError(f"cannot serve the web app on {options.host}:{options.port}: "
                                    f"{problem.strerror or problem} (another node? choose --web HOST:PORT, "
                                    "or --web off)") from None
            app.port = int(binds[0].rsplit(":", 1)[1])
            shown = "127.0.0.1" if options.host in ("0.0.0.0", "localhost") else (
                "[::1]" if options.host == "::" else host)
            nursery.start_soon(hub.run)
            task_status.started(f"http://{shown}:{app.port}/")


async def _serve_app(serve: Callable[..., Awaitable[None]], app: ASGIApp, config: Any, *,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await serve(app, config, task_status=task_status, mode="asgi")


def _os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None
