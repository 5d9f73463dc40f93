"""The live dashboard at ``/ui``: static files from ``node/ui`` and three JSON endpoints.

    GET  /ui/                 the page (or, with an API token configured and no session,
                              a login form that asks for the token: 401)
    POST /ui/login            form field ``token``: sets an HttpOnly session cookie
    POST /ui/logout           clears it
    GET  /ui/app.js, style.css
    GET  /ui/api/local        this node: status, recent events, chart series
    GET  /ui/api/overview     every member's /ui/api/local (unreachable ones say so)
    GET  /ui/api/browse       a management table's rows next to one node's blade table

Auth: with ``--api-token``, nothing under /ui but the login form answers without the
token: a request carries it as ``Authorization: Bearer`` or as the session cookie, which
holds an HMAC of the token (not the token) and is sent only to /ui paths. The API under
/v1 still takes the bearer token only, so the cookie cannot be used to write.

Failover: the page reads the overview from the node that served it and, when that node
does not answer, from any other member; the /ui/api answers carry CORS headers for the
members' own origins (with credentials, so the session cookie goes along).

Threading: asyncio loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import os
import time
from typing import Any

import aiohttp
from aiohttp import web

from node._common import CLIENT, CONFIG, RUNTIME, STORE, members_registry
from node._exceptions import ApiError
from node._metrics import METRICS_REGISTRY

UI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")
STATIC = {"app.js": "application/javascript", "style.css": "text/css"}
COOKIE = "rdbsync_ui"
EVENTS_PER_NODE = 200
MEMBER_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
_SESSION_MESSAGE = b"rdbsync ui session v1"
_PUBLIC = {("GET", "/ui"), ("HEAD", "/ui"), ("GET", "/ui/"), ("HEAD", "/ui/"), ("POST", "/ui/login")}


def _session_value(token: str) -> str:
    return hmac.new(token.encode(), _SESSION_MESSAGE, hashlib.sha256).hexdigest()


def _has_session(request: web.Request, token: str) -> bool:
    given = request.cookies.get(COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), _session_value(token).encode())


def _has_bearer(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def ui_auth_exempt(request: web.Request, token: str) -> bool:
    """For the node's auth middleware: may this request pass without a bearer token?
    Only the login page and form, and /ui requests with a valid session cookie."""
    if (request.method, request.path) in _PUBLIC:
        return True
    return request.path.startswith("/ui/") and _has_session(request, token)


# ---------------------------------------------------------------- page and login


def _login_page(error: str = "") -> str:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>rdbsync: sign in</title>
<style>body{{font:16px system-ui,sans-serif;margin:0;display:flex;min-height:100vh;align-items:center;
justify-content:center;background:#f4f5f7;color:#1b1f24}}form{{background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px #0002;max-width:22rem;width:90%}}label,input,button{{display:block;width:100%;
box-sizing:border-box}}input{{margin:.5rem 0 1rem;padding:.5rem;font:inherit}}button{{padding:.6rem;font:inherit;
background:#0b5cad;color:#fff;border:0;border-radius:4px}}button:focus,input:focus{{outline:3px solid #f0a000}}
.error{{color:#a00000;font-weight:600}}</style></head>
<body><form method="post" action="/ui/login" id="login"><h1>rdbsync</h1>
<p>This cluster requires its API token.</p>{message}
<label for="token">API token</label><input id="token" name="token" type="password" autocomplete="current-password"
required autofocus><button type="submit" id="sign-in">Sign in</button></form></body></html>"""


def _redirect(location: str, status: int = 303) -> web.Response:
    # A plain response: raised HTTPExceptions become JSON errors in the error middleware.
    return web.Response(status=status, headers={"Location": location})


async def page(request: web.Request) -> web.StreamResponse:
    if request.path == "/ui":
        return _redirect("/ui/", 302)
    token = request.app[CONFIG].api_token
    if token and not (_has_session(request, token) or _has_bearer(request, token)):
        return web.Response(text=_login_page(), status=401, content_type="text/html")
    return _file_response("index.html", "text/html")


async def login(request: web.Request) -> web.Response:
    token = request.app[CONFIG].api_token
    form = await request.post()
    given = str(form.get("token", ""))
    if not token:
        return _redirect("/ui/")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return web.Response(text=_login_page("That is not this cluster's token."), status=401, content_type="text/html")
    response = _redirect("/ui/")
    response.set_cookie(COOKIE, _session_value(token), path="/ui", httponly=True, samesite="Strict")
    return response


async def logout(request: web.Request) -> web.Response:
    response = _redirect("/ui/")
    response.del_cookie(COOKIE, path="/ui")
    return response


def _file_response(name: str, content_type: str) -> web.Response:
    with open(os.path.join(UI_DIR, name), "rb") as f:
        body = f.read()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise ApiError(404, "not_found", f"no file {name!r} in the dashboard")
    return _file_response(name, STATIC[name])


# ---------------------------------------------------------------- data


def _json(request: web.Request, body: Any) -> web.Response:
    """A JSON answer, readable by the page when it was loaded from another member."""
    response = web.json_response(body, headers={"Cache-Control": "no-store"})
    origin = request.headers.get("Origin")
    if origin and origin in {m.get("http_url") for m in members_registry(request.app).values()}:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    return response


def local_view(app: web.Application) -> dict[str, Any]:
    """This node's part of the dashboard."""
    from node._http import node_status  # node._http mounts this module: import at call time

    runtime = app[RUNTIME]
    events = list(runtime.events)[-EVENTS_PER_NODE:]
    return {
        "status": node_status(app),
        "events": events,
        "series": app[METRICS_REGISTRY].series(),
        "now": time.time(),
    }


def _auth_headers(app: web.Application) -> dict[str, str]:
    token = app[CONFIG].api_token
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _fetch_json(app: web.Application, url: str) -> Any:
    async with app[CLIENT].get(url, headers=_auth_headers(app), timeout=MEMBER_TIMEOUT) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        return await resp.json()


async def api_local(request: web.Request) -> web.Response:
    return _json(request, local_view(request.app))


async def api_overview(request: web.Request) -> web.Response:
    app = request.app
    me = local_view(app)
    members = me["status"]["members"]

    async def fetch(member: dict[str, Any]) -> dict[str, Any]:
        if member["raft_address"] == me["status"]["raft_address"]:
            return me
        base = {"id": member["id"], "raft_address": member["raft_address"], "http_url": member.get("http_url")}
        if not member.get("http_url"):
            return {"status": {**base, "reachable": False, "error": "no HTTP URL known"}, "events": [], "series": {}}
        try:
            view: dict[str, Any] = await _fetch_json(app, f"{member['http_url']}/ui/api/local")
            return view
        except Exception as exc:  # noqa: BLE001 - any failure means unreachable
            error = str(exc) or type(exc).__name__
            return {"status": {**base, "reachable": False, "error": error}, "events": [], "series": {}}

    views = sorted(await asyncio.gather(*(fetch(m) for m in members)), key=lambda v: str(v["status"].get("id")))
    leaders = {v["status"].get("id") for v in views if v["status"].get("role") == "leader"}
    return _json(
        request,
        {
            "served_by": app[CONFIG].id,
            "auth": bool(app[CONFIG].api_token),
            "at": time.time(),
            "leader": next(iter(leaders)) if len(leaders) == 1 else me["status"].get("leader"),
            "revision": app[STORE].revision,
            "nodes": views,
        },
    )


async def api_browse(request: web.Request) -> web.Response:
    """``?node=ID&table=BLADE_TABLE``: that node's blade table and the management table it
    projects, with revisions (the management rows are this node's committed state)."""
    app = request.app
    node_id = request.query.get("node") or app[CONFIG].id
    name = request.query.get("table", "")
    runtime = app[RUNTIME]
    table = runtime.tables.get(name)
    if table is None:
        raise ApiError(404, "unknown_table", f"no blade table {name!r}; tables: {', '.join(runtime.tables)}")
    source = table.source.name
    prefix = table.source.prefix
    store = app[STORE]
    kvs, more = store.range(prefix, limit=2000)
    management = {
        "table": source,
        "revision": store.revision,
        "more": more,
        "rows": {kv.key[len(prefix) :]: {"value": kv.value, "mod_revision": kv.mod_revision} for kv in kvs},
    }
    urls = {m["id"]: m.get("http_url") for m in members_registry(app).values()}
    if node_id not in urls:
        raise ApiError(404, "unknown_node", f"no member {node_id!r}")
    path = f"/v1/blades/{table.blade}/{name}"
    try:
        if node_id == app[CONFIG].id:
            st = runtime.engine.status[name]
            blade: dict[str, Any] = {"revision": st.applied_revision, "state": st.state, "rows": dict(table.rows())}
        else:
            blade = await _fetch_json(app, f"{urls[node_id]}{path}")
        blade["reachable"] = True
    except Exception as exc:  # noqa: BLE001 - the node is down: say so
        blade = {"reachable": False, "error": str(exc) or type(exc).__name__, "rows": {}}
    blade.update({"node": node_id, "blade": table.blade, "table": name})
    return _json(request, {"management": management, "blade": blade})


def add_ui_routes(app: web.Application) -> None:
    app.router.add_get("/ui", page)
    app.router.add_get("/ui/", page)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/ui/api/local", api_local)
    app.router.add_get("/ui/api/overview", api_overview)
    app.router.add_get("/ui/api/browse", api_browse)
    app.router.add_get("/ui/{name}", static_file)


__all__ = ["add_ui_routes", "local_view", "ui_auth_exempt"]
