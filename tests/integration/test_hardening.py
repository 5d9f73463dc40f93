"""API hardening (issue 9): what fuzzing found, each on a live cluster."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests.integration.cluster import Cluster, http, running_cluster, wait_for
from tests.integration.test_api import read_sse

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(str(tmp_path_factory.mktemp("hardening")), 3) as c:
        yield c


def code(resp: Any) -> str:
    assert isinstance(resp.body, dict) and "error" in resp.body, resp.body
    return str(resp.body["error"]["code"])


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def with_row(snapshot: bytes, key: str, value: Any) -> bytes:
    doc = msgpack.unpackb(snapshot, raw=False, strict_map_key=False)
    doc["kvs"].append([key, value, 1, 1, 1])
    return bytes(msgpack.packb(doc, use_bin_type=True))


def restore(url: str, data: bytes) -> Any:
    return http("POST", f"{url}/v1/restore", raw=data, headers={"Content-Type": "application/octet-stream"}, timeout=60)


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


# ---------------------------------------------------------------- 1, 2: one set of value limits


def test_restore_refuses_values_the_write_path_refuses_and_reads_stay_whole(cluster: Cluster) -> None:
    url = cluster.url("n1")
    snap = http("GET", f"{url}/v1/snapshot")
    base = urllib_get(f"{url}/v1/snapshot")
    assert snap.status == 200
    for value, what in ((nested(980), "nests more than"), (nested(1000), "nests more than"), (nested(101), "nests")):
        resp = restore(url, with_row(base, "deep/x", value))
        assert resp.status == 422 and code(resp) == "invalid_snapshot", resp.body
        assert what in resp.body["error"]["message"] and resp.body["error"]["applied"] is False
    big = restore(url, with_row(base, "big/x", "x" * (3 * 1024 * 1024)))
    assert big.status == 422 and code(big) == "invalid_snapshot" and "larger than" in big.body["error"]["message"]
    # The deepest value the limits take is written, read, listed and replayed by watch.
    deepest = nested(100)
    assert http("PUT", f"{url}/v1/kv/deep/ok", {"value": nested(101)}).status == 422
    put = http("PUT", f"{url}/v1/kv/deep/ok", {"value": deepest})
    assert put.status == 200, put.body
    assert http("DELETE", f"{url}/v1/kv/deep/ok").status == 200
    for nid in cluster.nodes:
        node = cluster.url(nid)
        wait_for(lambda node=node: http("GET", f"{node}/v1/kv/deep/ok").status == 404, 10, f"{nid} caught up")
        listed = http("GET", f"{node}/v1/kv?prefix=deep/")
        assert listed.status == 200 and listed.body["kvs"] == []
        events = read_sse(f"{node}/v1/watch?prefix=deep/&from_revision={put.body['revision']}", 2)
        assert [e["event"] for e in events] == ["put", "delete"] and events[0]["data"]["kv"]["value"] == deepest
    # And a restore holding it passes.
    ok = restore(url, with_row(urllib_get(f"{url}/v1/snapshot"), "deep/restored", deepest))
    assert ok.status == 200, ok.body
    assert http("GET", f"{cluster.url('n2')}/v1/kv/deep/restored").body["value"] == deepest


def urllib_get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        data: bytes = resp.read()
        return data


def test_a_value_size_is_its_stored_form(cluster: Cluster) -> None:
    url = cluster.url("n2")
    # 600 KiB of control characters: 3.6 MB as JSON, 600 KiB stored.
    escaped = json.dumps({"value": "\x00" * (600 * 1024)}).encode()
    assert len(escaped) > 3_600_000
    resp = http("PUT", f"{url}/v1/kv/size/escaped", raw=escaped)
    assert resp.status == 200, resp.body
    got = http("GET", f"{url}/v1/kv/size/escaped")
    assert got.status == 200 and got.body["value"] == "\x00" * (600 * 1024)
    # Written back as read: the same answer.
    assert http("PUT", f"{url}/v1/kv/size/escaped", {"value": got.body["value"]}).status == 200
    over = http("PUT", f"{url}/v1/kv/size/over", {"value": "x" * (1024 * 1024)})
    assert over.status == 413 and code(over) == "too_large" and over.body["error"]["applied"] is False
    half = "x" * (512 * 1024)
    txn = http("POST", f"{url}/v1/txn", {"success": [{"op": "put", "key": f"size/{i}", "value": half} for i in "ab"]})
    assert txn.status == 413 and code(txn) == "too_large"


# ---------------------------------------------------------------- 3: typed compares


def test_txn_value_compares_by_json_type(cluster: Cluster) -> None:
    url = cluster.url("n3")
    assert http("PUT", f"{url}/v1/kv/typed/t", {"value": True}).status == 200
    assert http("PUT", f"{url}/v1/kv/typed/f", {"value": False}).status == 200
    assert http("PUT", f"{url}/v1/kv/typed/one", {"value": 1}).status == 200

    def compare(key: str, value: Any, result: str = "==") -> bool:
        body = {"compare": [{"key": key, "target": "value", "result": result, "value": value}]}
        resp = http("POST", f"{url}/v1/txn", body)
        assert resp.status == 200, resp.body
        return bool(resp.body["succeeded"])

    assert not compare("typed/t", 1)
    assert not compare("typed/t", 1.0)
    assert not compare("typed/f", 0)
    assert not compare("typed/one", True)
    assert compare("typed/t", True) and compare("typed/one", 1.0) and compare("typed/t", 1, "!=")


# ---------------------------------------------------------------- 4: encodings


@pytest.mark.parametrize("coding", ["xyz", "br", "zstd", "gzip, br"])
def test_unsupported_content_encodings_are_415_with_our_body(cluster: Cluster, coding: str) -> None:
    url = cluster.url("n1")
    resp = http("PUT", f"{url}/v1/kv/enc/x", raw=b'{"value": 1}', headers={"Content-Encoding": coding})
    assert resp.status == 415 and code(resp) == "unsupported_encoding", resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    assert http("GET", f"{url}/v1/kv/enc/x").status == 404


def test_gzip_bodies_are_decoded_within_the_limit(cluster: Cluster) -> None:
    url = cluster.url("n1")
    ok = http(
        "PUT", f"{url}/v1/kv/enc/gz", raw=gzip.compress(b'{"value": "zipped"}'), headers={"Content-Encoding": "gzip"}
    )
    assert ok.status == 200, ok.body
    assert http("GET", f"{url}/v1/kv/enc/gz").body["value"] == "zipped"
    bomb = gzip.compress(b'{"value": "' + b"x" * (9 * 1024 * 1024) + b'"}')
    resp = http("PUT", f"{url}/v1/kv/enc/bomb", raw=bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status == 413 and code(resp) == "too_large"


def test_a_transfer_coding_other_than_chunked_is_refused(cluster: Cluster) -> None:
    port = cluster.nodes["n2"].http_port
    body = b'{"value": 1}'
    request = (
        b"PUT /v1/kv/enc/te HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    answer = raw_exchange(port, request)
    assert answer.startswith(b"HTTP/1.1 501"), answer[:200]
    assert b'"unsupported_transfer_encoding"' in answer
    assert http("GET", f"{cluster.url('n2')}/v1/kv/enc/te").status == 404


def test_a_malformed_request_gets_our_error_body(cluster: Cluster) -> None:
    answer = raw_exchange(cluster.nodes["n3"].http_port, b"GET /v1/status HTTP/1.1\r\nHost x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400" and b"application/json" in head, answer[:300]  # HTTP/1.0: unparsed
    assert json.loads(body)["error"]["code"] == "bad_request"


# ---------------------------------------------------------------- 7: the smaller ones


def test_405_names_the_allowed_methods(cluster: Cluster) -> None:
    resp = http("PATCH", f"{cluster.url('n1')}/v1/kv/a", {"value": 1})
    assert resp.status == 405 and code(resp) == "method_not_allowed"
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) == {"DELETE", "GET", "HEAD", "PUT"}


def test_head_of_watch_answers_at_once(cluster: Cluster) -> None:
    # The head of the stream, and the connection is done (it used to be held open).
    started = time.monotonic()
    answer = raw_exchange(
        cluster.nodes["n1"].http_port, b"HEAD /v1/watch?prefix=x/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5
    )
    assert answer.startswith(b"HTTP/1.1 200") and b"text/event-stream" in answer, answer[:300]
    assert answer.endswith(b"\r\n\r\n")  # no body
    assert time.monotonic() - started < 3


def test_watch_from_far_beyond_reach_is_refused_at_once(cluster: Cluster) -> None:
    url = cluster.url("n2")
    for query in ("from_revision=1000000000000000000", "from_revision=999999999999"):
        started = time.monotonic()
        resp = http("GET", f"{url}/v1/watch?{query}", timeout=5)
        assert resp.status == 422 and code(resp) == "bad_parameter", resp.body
        assert time.monotonic() - started < 3
    far = http("GET", f"{url}/v1/watch", headers={"Last-Event-ID": "999999999999"}, timeout=5)
    assert far.status == 422


@pytest.mark.parametrize("path", ["/v1/kv?limit=", "/v1/tables/vservers?limit=", "/v1/watch?from_revision="])
def test_an_empty_parameter_is_400(cluster: Cluster, path: str) -> None:
    resp = http("GET", cluster.url("n3") + path, timeout=5)
    assert resp.status == 400 and code(resp) == "bad_parameter", resp.body


def test_one_rule_for_percent_escapes_in_key_paths(cluster: Cluster) -> None:
    url = cluster.url("n1")
    for bad in ("/v1/kv/a%FFb", "/v1/kv/a%zzb", "/v1/kv/a%", "/v1/tables/vservers/a%C3"):
        for method in ("GET", "PUT", "DELETE"):
            resp = http(method, url + bad, {"value": 1} if method == "PUT" else None)
            assert resp.status == 400 and code(resp) == "bad_path", (bad, method, resp.body)
    assert http("PUT", f"{url}/v1/kv/pct/a%25FFb", {"value": "literal"}).status == 200
    listed = http("GET", f"{url}/v1/kv?prefix=pct/").body["kvs"]
    assert [kv["key"] for kv in listed] == ["pct/a%FFb"]
    assert http("GET", f"{url}/v1/kv/pct%2Fa%25FFb").body["value"] == "literal"  # %2F is '/'
    assert http("PUT", f"{url}/v1/kv/pct/%C3%A9", {"value": 2}).status == 200
    assert "pct/\u00e9" in [kv["key"] for kv in http("GET", f"{url}/v1/kv?prefix=pct/").body["kvs"]]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/kv/dup", b'{"value": 1, "value": 2}'),
        ("/v1/txn", b'{"success": [{"op": "put", "key": "dup/a", "value": 1}], "success": []}'),
        ("/v1/txn", b'{"success": [{"op": "put", "key": "dup/a", "value": {"x": 1, "x": 2}}]}'),
    ],
)
def test_duplicated_json_object_keys_are_400(cluster: Cluster, path: str, body: bytes) -> None:
    url = cluster.url("n2")
    resp = http("POST" if path == "/v1/txn" else "PUT", url + path, raw=body)
    assert resp.status == 400 and code(resp) == "bad_json" and "twice" in resp.body["error"]["message"]
    assert http("GET", f"{url}/v1/kv/dup").status == 404 and http("GET", f"{url}/v1/kv/dup/a").status == 404


def test_an_idempotency_key_reused_for_a_delete_of_the_same_path_is_422(cluster: Cluster) -> None:
    url = cluster.url("n3")
    headers = {"Idempotency-Key": "reuse-delete-1"}
    assert http("PUT", f"{url}/v1/kv/idem/del", {"value": 1}, headers=headers).status == 200
    resp = http("DELETE", f"{url}/v1/kv/idem/del", headers=headers)
    assert resp.status == 422 and code(resp) == "idempotency_key_reused", resp.body
    assert http("GET", f"{url}/v1/kv/idem/del").body["value"] == 1
    # A DELETE with its own key, retried, is applied once.
    own = {"Idempotency-Key": "reuse-delete-2"}
    first = http("DELETE", f"{url}/v1/kv/idem/del", headers=own)
    again = http("DELETE", f"{url}/v1/kv/idem/del", headers=own)
    assert first.status == again.status == 200 and first.body == again.body


# ---------------------------------------------------------------- 5: slow clients


@pytest.fixture(scope="module")
def strict_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    flags = ["--header-timeout", "1", "--body-timeout", "1", "--max-connections", "12"]
    with running_cluster(str(tmp_path_factory.mktemp("slow")), 1, extra_args=flags) as c:
        yield c


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> tuple[float, bytes]:
    """Trickle ``trickle`` a byte every 0.1 s (then stay idle) until the server closes;
    return how long that took and what it answered."""
    started = time.monotonic()
    sock.settimeout(0.1)
    got = b""
    for i in range(int(seconds * 10)):
        if i < len(trickle):
            try:
                sock.sendall(trickle[i : i + 1])
            except OSError:
                break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    else:
        raise AssertionError(f"the connection was still open after {seconds} s")
    return time.monotonic() - started, got


def test_a_slowloris_client_is_cut_off_and_others_are_served(strict_node: Cluster) -> None:
    node = strict_node.nodes["n1"]
    url = strict_node.url("n1")
    head = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    slow = [socket.create_connection(("127.0.0.1", node.http_port)) for _ in range(3)]
    idle = socket.create_connection(("127.0.0.1", node.http_port))
    body = socket.create_connection(("127.0.0.1", node.http_port))
    body.sendall(
        b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    try:
        # Served meanwhile.
        for _ in range(5):
            assert http("GET", f"{url}/v1/status", timeout=2).status == 200
        took, _ = closed_within(slow[0], 6, trickle=head)
        assert took < 4, took  # a head trickling in for longer than 1 s is cut off
        took, _ = closed_within(idle, 6)
        assert took < 4, took
        took, answer = closed_within(body, 6)
        assert took < 4 and answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer, answer[:200]
        for s in slow[1:]:
            closed_within(s, 6)
        assert http("GET", f"{url}/v1/kv/slow").status == 404
    finally:
        for s in [*slow, idle, body]:
            s.close()


def test_connections_over_the_cap_are_refused_and_the_node_recovers(strict_node: Cluster) -> None:
    node = strict_node.nodes["n1"]
    held = [socket.create_connection(("127.0.0.1", node.http_port)) for _ in range(12)]
    try:
        # Each is accepted (the cap counts connections the server has taken in).
        wait_for(lambda: refused_now(node.http_port), 5, "a connection over the cap to be refused")
    finally:
        for s in held:
            s.close()
    wait_for(lambda: http("GET", strict_node.url("n1") + "/v1/status", timeout=2).status == 200, 5, "served again")


def refused_now(port: int) -> bool:
    try:
        answer = raw_exchange(port, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3)
    except ConnectionResetError:
        return True
    return answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer
