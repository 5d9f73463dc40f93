"""The HTTP contract on a live cluster: errors, limits, txn, listing, watch, auth, ops endpoints."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.cluster import Cluster, http, running_cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_history_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(str(tmp_path_factory.mktemp("api")), 3, env={"RDBSYNC_HISTORY_LIMIT": "50"}) as c:
        yield c


def error_code(resp: Any) -> str:
    return str(resp.body["error"]["code"])


def test_bad_input_gets_clear_4xx_and_changes_nothing(small_history_cluster: Cluster) -> None:
    url = small_history_cluster.url("n2")
    before = int(http("GET", f"{url}/v1/kv?prefix=").headers["X-Rdb-Revision"])
    cases = [
        (http("PUT", f"{url}/v1/kv/a", raw=b"{not json"), 400, "bad_json"),
        (http("PUT", f"{url}/v1/kv/a", raw=b""), 400, "bad_json"),
        (http("PUT", f"{url}/v1/kv/a", {"valu": 1}), 422, "schema"),
        (http("PUT", f"{url}/v1/kv/a", [1, 2]), 422, "schema"),
        (http("PUT", f"{url}/v1/kv/{'k' * 1025}", {"value": 1}), 422, "invalid_key"),
        (http("PUT", f"{url}/v1/kv/a?prev_revision=-1", {"value": 1}), 422, "bad_parameter"),
        (http("PUT", f"{url}/v1/kv/a?prev_revision=abc", {"value": 1}), 422, "bad_parameter"),
        (http("PUT", f"{url}/v1/kv/_rdb/members/x", {"value": 1}), 422, "reserved_key"),
        (http("GET", f"{url}/v1/kv/a?consistency=weird"), 422, "bad_parameter"),
        (http("GET", f"{url}/v1/kv?limit=0"), 422, "bad_parameter"),
        (
            http("POST", f"{url}/v1/txn", {"success": [{"op": "put", "key": "a", "value": i} for i in range(129)]}),
            422,
            "invalid",
        ),
        (http("POST", f"{url}/v1/txn", {"success": [{"op": "frob", "key": "a"}]}), 422, "schema"),
        (
            http("POST", f"{url}/v1/txn", {"compare": [{"key": "a", "target": "mod_revision", "value": "x"}]}),
            422,
            "invalid",
        ),
        (http("GET", f"{url}/v1/nope"), 404, "no_route"),
        (http("PATCH", f"{url}/v1/kv/a", {"value": 1}), 405, "method_not_allowed"),
        (http("PUT", f"{url}/v1/kv/a", raw=json.dumps({"value": "x" * (2 * 1024 * 1024)}).encode()), 413, "too_large"),
        # Found by fuzzing the API (each answered 503 internal, or stored non-JSON):
        (http("PUT", f"{url}/v1/kv/a", raw=b'{"value": 1e999}'), 400, "bad_json"),
        (http("PUT", f"{url}/v1/kv/a", raw=b'{"value": ' + b"9" * 5000 + b"}"), 400, "bad_json"),
        (
            http("POST", f"{url}/v1/txn", raw=b'{"success": [{"op": "put", "key": "a", "value": -1e400}]}'),
            400,
            "bad_json",
        ),
        (http("GET", f"{url}/v1/watch", headers={"Last-Event-ID": "\u00b2"}), 422, "bad_parameter"),
        (http("PUT", f"{url}/v1/kv/a?prev_revision=%2B1", {"value": 1}), 422, "bad_parameter"),
        (http("PUT", f"{url}/v1/kv/a?prev_revision=1_0", {"value": 1}), 422, "bad_parameter"),
        (http("POST", f"{url}/v1/resync?dry_run=maybe"), 422, "bad_parameter"),
        (http("PUT", f"{url}/v1/kv/a", raw=b'{"value": 1}', headers={"Content-Encoding": "gzip"}), 400, "bad_body"),
        (
            http("POST", f"{url}/v1/txn", {"success": [{"op": "put", "key": "line\nbreak", "value": 1}]}),
            422,
            "invalid_key",
        ),
        (
            http("PUT", f"{url}/v1/kv/a", {"value": 1}, headers={"Idempotency-Key": "k\u00e9y"}),
            422,
            "bad_idempotency_key",
        ),
        (
            http("PUT", f"{url}/v1/tables/aggregates/a1", {"name": "a1", "home_node": "n1", "size_mb": True}),
            422,
            "schema",
        ),
        (
            http(
                "POST",
                f"{url}/v1/cluster/members",
                {"id": "n9", "raft_address": "127.0.0.1:99999", "http_url": "http://x"},
            ),
            422,
            "invalid_member",
        ),
    ]
    for resp, status, code in cases:
        assert resp.status == status, (status, code, resp.body)
        assert error_code(resp) == code, resp.body
        assert resp.body["error"]["message"]
        assert "X-Rdb-Revision" in resp.headers
        if status != 404 and status != 405 and resp.body["error"].get("applied") is not None:
            assert resp.body["error"]["applied"] is False
    after = int(http("GET", f"{url}/v1/kv?prefix=").headers["X-Rdb-Revision"])
    assert after == before


def test_cas_create_only_delete_and_conflict_body(small_history_cluster: Cluster) -> None:
    url = small_history_cluster.url("n1")
    first = http("PUT", f"{url}/v1/kv/cas?prev_revision=0", {"value": 1})
    assert first.status == 200
    again = http("PUT", f"{url}/v1/kv/cas?prev_revision=0", {"value": 2})
    assert again.status == 409 and error_code(again) == "cas_conflict"
    assert again.body["error"]["details"]["current"]["value"] == 1
    assert again.body["error"]["applied"] is False
    wrong = http("DELETE", f"{url}/v1/kv/cas?prev_revision={first.body['revision'] + 100}")
    assert wrong.status == 409
    assert http("DELETE", f"{url}/v1/kv/cas?prev_revision={first.body['revision']}").status == 200
    missing = http("DELETE", f"{url}/v1/kv/cas")
    assert missing.status == 404 and error_code(missing) == "not_found"


def test_idempotency_key_applies_once(small_history_cluster: Cluster) -> None:
    url = small_history_cluster.url("n3")
    headers = {"Idempotency-Key": "req-123"}
    a = http("PUT", f"{url}/v1/kv/idem", {"value": {"x": 1, "y": 2}}, headers=headers)
    b = http("PUT", f"{url}/v1/kv/idem", {"value": {"x": 1, "y": 2}}, headers=headers)  # a retry
    assert a.status == b.status == 200
    assert a.body["revision"] == b.body["revision"]
    # The key reused for a different request is refused, not answered with the first result.
    c = http("PUT", f"{url}/v1/kv/idem", {"value": "second"}, headers=headers)
    assert c.status == 422 and error_code(c) == "idempotency_key_reused" and c.body["error"]["applied"] is False
    got = http("GET", f"{url}/v1/kv/idem").body
    assert got["value"] == {"x": 1, "y": 2} and got["version"] == 1


def test_txn_is_atomic_and_branches(small_history_cluster: Cluster) -> None:
    url = small_history_cluster.url("n2")
    body = {
        "compare": [{"key": "tx/a", "target": "version", "result": "==", "value": 0}],
        "success": [{"op": "put", "key": "tx/a", "value": 1}, {"op": "put", "key": "tx/b", "value": 2}],
        "failure": [{"op": "get", "key": "tx/a"}],
    }
    first = http("POST", f"{url}/v1/txn", body)
    assert first.status == 200 and first.body["succeeded"] is True
    a = http("GET", f"{url}/v1/kv/tx/a").body
    b = http("GET", f"{url}/v1/kv/tx/b").body
    assert a["mod_revision"] == b["mod_revision"] == first.body["revision"]
    second = http("POST", f"{url}/v1/txn", body)
    assert second.body["succeeded"] is False
    assert second.body["responses"][0]["kv"]["value"] == 1


def test_list_pages_in_key_order(small_history_cluster: Cluster) -> None:
    url = small_history_cluster.url("n1")
    for i in range(25):
        assert http("PUT", f"{url}/v1/kv/list/{i:03d}", {"value": i}).status == 200
    keys: list[str] = []
    start = ""
    while True:
        page = http("GET", f"{url}/v1/kv?prefix=list/&limit=10" + (f"&start_after={start}" if start else "")).body
        keys += [kv["key"] for kv in page["kvs"]]
        if not page["more"]:
            break
        start = page["kvs"][-1]["key"]
    assert keys == [f"list/{i:03d}" for i in range(25)]


def read_sse(url: str, stop_after: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Read ``stop_after`` events from an SSE stream with a raw socket (bounded)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    path = parts.path + ("?" + parts.query if parts.query else "")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    buf = b""
    events: list[dict[str, Any]] = []
    with sock:
        while len(events) < stop_after:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                fields = dict(
                    line.split(": ", 1) for line in block.decode(errors="replace").splitlines() if ": " in line
                )
                if "data" in fields and "event" in fields:
                    events.append(
                        {"event": fields["event"], "id": fields.get("id"), "data": json.loads(fields["data"])}
                    )
    return events


def test_watch_delivers_in_order_and_resumes(small_history_cluster: Cluster) -> None:
    url = small_history_cluster.url("n3")
    start = int(http("PUT", f"{small_history_cluster.url('n1')}/v1/kv/w/start", {"value": 0}).body["revision"])
    got: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: got.extend(read_sse(f"{url}/v1/watch?prefix=w/&from_revision={start + 1}", 20)), daemon=True
    )
    reader.start()
    revisions = []
    for i in range(20):
        writer = small_history_cluster.url(f"n{i % 3 + 1}")
        if i % 5 == 4:
            r = http("DELETE", f"{writer}/v1/kv/w/{i - 1}")
        else:
            r = http("PUT", f"{writer}/v1/kv/w/{i}", {"value": i})
        assert r.status == 200
        revisions.append(r.body["revision"])
    reader.join(20)
    assert [int(e["id"]) for e in got] == revisions
    assert [e["event"] for e in got] == ["delete" if i % 5 == 4 else "put" for i in range(20)]
    # Resume from the middle: exactly the tail, in order.
    tail = read_sse(f"{url}/v1/watch?prefix=w/&from_revision={revisions[10]}", 10)
    assert [int(e["id"]) for e in tail] == revisions[10:]
    assert tail[0]["data"]["kv"]["key"] in {"w/10", "w/9"}


def test_watch_of_compacted_history_is_410(small_history_cluster: Cluster) -> None:
    url = small_history_cluster.url("n1")
    for i in range(60):  # history limit is 50 in this cluster
        assert http("PUT", f"{url}/v1/kv/churn/{i}", {"value": i}).status == 200
    resp = http("GET", f"{url}/v1/watch?from_revision=1")
    assert resp.status == 410 and error_code(resp) == "compacted"
    assert resp.body["error"]["details"]["compacted_revision"] >= 1


def test_ops_endpoints(small_history_cluster: Cluster) -> None:
    url = small_history_cluster.url("n2")
    assert http("GET", f"{url}/healthz").status == 200
    assert http("GET", f"{url}/readyz").status == 200
    spec = http("GET", f"{url}/openapi.json").body
    assert spec["openapi"].startswith("3.") and "/v1/kv/{key}" in spec["paths"]
    assert "PutBody" in spec["components"]["schemas"]
    status = http("GET", f"{url}/v1/status").body
    for field in (
        "id",
        "role",
        "leader",
        "pid",
        "http_url",
        "quorum",
        "tables",
        "fences",
        "term",
        "commit_index",
        "applied_index",
    ):
        assert field in status
    metrics = http("GET", f"{url}/metrics")
    assert metrics.status == 200 and "rdb_raft_term" in str(metrics.body)
    view = http("GET", f"{url}/v1/cluster").body
    assert view["leader"] in {"n1", "n2", "n3"} and len(view["nodes"]) == 3


def test_bearer_token_required_except_healthz(tmp_path: Any) -> None:
    c = Cluster(str(tmp_path), 1, env={"RDBSYNC_API_TOKEN": "t0ken"})
    c.start()
    try:
        auth = {"Authorization": "Bearer t0ken"}
        wait_for(lambda: http("GET", c.url("n1") + "/readyz", headers=auth).status == 200, 20, "ready")
        assert http("GET", c.url("n1") + "/healthz").status == 200
        denied = http("PUT", c.url("n1") + "/v1/kv/a", {"value": 1})
        assert denied.status == 401 and error_code(denied) == "unauthorized"
        assert http("GET", c.url("n1") + "/v1/status", headers={"Authorization": "Bearer wrong"}).status == 401
        assert http("PUT", c.url("n1") + "/v1/kv/a", {"value": 1}, headers=auth).status == 200
    finally:
        c.close()
