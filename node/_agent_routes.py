"""HTTP routes for agents (the wire protocol in the README, "Agents"); loop thread."""

from __future__ import annotations

from aiohttp import web

from node._common import RUNTIME, int_param, json_body
from node._exceptions import ApiError

MAX_PARAM = 10**18 - 1  # what the API document allows (int_param parses 18 digits)


async def agent_load(request: web.Request) -> web.Response:
    body = await request.app[RUNTIME].agents.load(request.match_info["name"])
    return web.json_response(body, headers={"X-Rdb-Revision": str(body["revision"])})


async def agent_stream(request: web.Request) -> web.StreamResponse:
    hub = request.app[RUNTIME].agents
    name = request.match_info["name"]
    hub.record_of(name)  # 404 before the stream starts
    cursor = int_param(request, "cursor", maximum=MAX_PARAM)
    epoch = int_param(request, "epoch", maximum=MAX_PARAM)
    if cursor is None or epoch is None:
        raise ApiError(422, "bad_parameter", "stream needs the integer cursor and epoch of a load")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        async for frame in hub.stream(name, cursor, epoch):
            await response.write(frame)
    except ConnectionResetError:
        pass  # the agent went away
    return response


async def agent_report(request: web.Request) -> web.Response:
    body = await json_body(request)  # the one body reader: encodings, size, duplicate keys
    if not isinstance(body, dict):
        raise ApiError(422, "bad_report", "a report is a JSON object")
    return web.json_response(request.app[RUNTIME].agents.report(request.match_info["name"], body))


async def agents_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME].agents.status())


def add_agent_routes(app: web.Application) -> None:
    app.router.add_get("/v1/agents", agents_status)
    app.router.add_get("/v1/agents/{name}/load", agent_load)
    app.router.add_get("/v1/agents/{name}/stream", agent_stream)
    app.router.add_post("/v1/agents/{name}/report", agent_report)
