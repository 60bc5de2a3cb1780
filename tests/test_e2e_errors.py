"""Every error row of API.md against the live gateway: status, code and the JSON error body."""

import json
import socket

import pytest
import pytest_twisted
from websockets.exceptions import InvalidStatus

from support import WsClient, in_thread

UNKNOWN = "/v1/sessions/00000000-0000-4000-8000-000000000000"


def assert_error(response, status: int, code: str):
    assert response.status == status, response
    assert response.header("Content-Type") == "application/json"
    body = response.json
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"].strip()
    return body["error"]


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/v1/sessions"), ("GET", "/v1/sessions"), ("GET", UNKNOWN), ("DELETE", UNKNOWN),
     ("POST", UNKNOWN + "/attach"), ("GET", "/v1/profiles"), ("GET", "/v1/nope"), ("PUT", "/v1/sessions")],
)
@pytest_twisted.ensureDeferred
async def test_no_token_is_401_before_anything_else(gateway, method, path):
    """A request without a token gets 401 whatever else is wrong with it, with a Bearer challenge."""
    response = await gateway.request(method, path, token=None)
    assert_error(response, 401, "missing_token")
    assert response.header("WWW-Authenticate").startswith("Bearer")


@pytest.mark.parametrize("value", ["Basic YWxpY2U6eA==", "Bearer", "Bearer   ", "token-without-scheme"])
@pytest_twisted.ensureDeferred
async def test_malformed_authorization_is_401(gateway, value):
    """A header that is not 'Bearer <token>' is refused."""
    response = await gateway.request("GET", "/v1/sessions", token=None, headers={"Authorization": value})
    assert_error(response, 401, "invalid_token")


@pytest_twisted.ensureDeferred
async def test_attach_token_as_bearer_is_401(gateway):
    """Attach tokens cannot create sessions or call the API."""
    created = await gateway.create()
    response = await gateway.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60},
                                     token=created["attach"]["token"])
    assert_error(response, 401, "attach_token_not_accepted")
    response = await gateway.request("GET", f"/v1/sessions/{created['session_id']}",
                                     token=created["attach"]["token"])
    assert_error(response, 401, "attach_token_not_accepted")


@pytest.mark.parametrize(
    "data, code",
    [
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'"text"', "invalid_body"),
        (b"{}", "invalid_field"),
        (b'{"profile": "default"}', "invalid_field"),
        (b'{"ttl_seconds": 60}', "invalid_field"),
        (b'{"profile": 7, "ttl_seconds": 60}', "invalid_field"),
        (b'{"profile": "", "ttl_seconds": 60}', "invalid_field"),
        (b'{"profile": "default", "ttl_seconds": 0}', "invalid_field"),
        (b'{"profile": "default", "ttl_seconds": -5}', "invalid_field"),
        (b'{"profile": "default", "ttl_seconds": "60"}', "invalid_field"),
        (b'{"profile": "default", "ttl_seconds": 60.5}', "invalid_field"),
        (b'{"profile": "default", "ttl_seconds": true}', "invalid_field"),
        (b'{"profile": "default", "ttl_seconds": 60, "placement_hint": 5}', "invalid_field"),
        (b'{"profile": "default", "ttl_seconds": 60, "image_ref": 5}', "invalid_field"),
        (b'{"profile": "default", "ttl_seconds": 60, "image_ref": "Bad Image"}', "invalid_image_ref"),
        (b'{"profile": "default", "ttl_seconds": 60, "image_ref": "x@sha256:abc"}', "invalid_image_ref"),
        (b'{"profile": "nope", "ttl_seconds": 60}', "unknown_profile"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_bodies_are_400(gateway, data, code):
    """Invalid or missing fields are 400 with a code and a sentence."""
    response = await gateway.request("POST", "/v1/sessions", data=data,
                                     headers={"Content-Type": "application/json"})
    assert_error(response, 400, code)


@pytest_twisted.ensureDeferred
async def test_unknown_fields_are_ignored_and_charset_allowed(gateway):
    """Unknown body fields are ignored; a charset parameter on the media type is fine."""
    response = await gateway.request(
        "POST", "/v1/sessions", data=b'{"profile":"default","ttl_seconds":60,"colour":"blue"}',
        headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status == 201, response
    await gateway.request("DELETE", f"/v1/sessions/{response.json['session_id']}")


@pytest_twisted.ensureDeferred
async def test_wrong_media_type_is_415(gateway):
    """A body that is not declared as JSON is refused."""
    response = await gateway.request("POST", "/v1/sessions", data=b"profile=default",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(response, 415, "unsupported_media_type")


@pytest_twisted.ensureDeferred
async def test_body_over_64_kib_is_413(gateway):
    """Bodies over 64 KiB get 413 (401 first when there is no token at all)."""
    big = json.dumps({"profile": "default", "ttl_seconds": 60, "pad": "x" * 70000}).encode()
    response = await gateway.request("POST", "/v1/sessions", data=big,
                                     headers={"Content-Type": "application/json"})
    assert_error(response, 413, "body_too_large")
    response = await gateway.request("POST", "/v1/sessions", data=big, token=None,
                                     headers={"Content-Type": "application/json"})
    assert_error(response, 401, "missing_token")
    response = await gateway.request("POST", "/healthz", data=big, token=None,
                                     headers={"Content-Type": "application/json"})
    assert_error(response, 413, "body_too_large")  # no authentication on /healthz


def _chunked_upload(port: int, size: int) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 8192
        try:
            for _ in range(size // len(chunk)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the gateway answered and closed: what we want
        return sock.recv(65536)
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_limit_is_refused_early(gateway):
    """A chunked upload is cut off with 413 once it passes the limit, not read to its end."""
    answer = await in_thread(_chunked_upload, gateway.port.getHost().port, 4 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"body_too_large"' in answer


@pytest_twisted.ensureDeferred
async def test_policy_denials_are_403_with_rule_id(gateway):
    """TTL over the profile's maximum, a group not allowed, and the per-subject quota each name their rule."""
    response = await gateway.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 3601})
    assert assert_error(response, 403, "policy_denied")["rule_id"] == "profile.max_ttl_seconds"
    response = await gateway.request("POST", "/v1/sessions", {"profile": "admins", "ttl_seconds": 60})
    assert assert_error(response, 403, "policy_denied")["rule_id"] == "profile.allowed_groups"

    created = [await gateway.create(token="quota-user") for _ in range(3)]
    response = await gateway.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60},
                                     token="quota-user")
    assert assert_error(response, 403, "policy_denied")["rule_id"] == "quotas.max_sessions_per_subject"
    await gateway.request("DELETE", f"/v1/sessions/{created[0]['session_id']}", token="quota-user")
    again = await gateway.create(token="quota-user")  # a slot is free again
    denied = [e for e in gateway.audit_events() if e["event"] == "policy.denied"]
    assert [e["details"]["rule_id"] for e in denied] == [
        "profile.max_ttl_seconds", "profile.allowed_groups", "quotas.max_sessions_per_subject"]
    for c in created[1:] + [again]:
        await gateway.request("DELETE", f"/v1/sessions/{c['session_id']}", token="quota-user")


@pytest_twisted.ensureDeferred
async def test_placement_hint_to_a_cloud_node(gateway):
    """A hint naming a node wins over fog-first."""
    created = await gateway.create(placement_hint="cloud-local")
    assert created["placement"]["node_id"] == "cloud-local"
    assert created["placement"]["reasons"][:2] == ["hint-node", "cloud-fallback"]
    await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}")


@pytest.mark.parametrize(
    "method, path, allowed",
    [("PUT", "/v1/sessions", "GET, POST"), ("PATCH", UNKNOWN, "DELETE, GET"),
     ("GET", UNKNOWN + "/attach", "POST"), ("POST", "/healthz", "GET")],
)
@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405_with_allow(gateway, method, path, allowed):
    """A wrong method answers 405 naming the allowed ones."""
    response = await gateway.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.header("Allow") == allowed


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/nope", "/v1/sessions/x/y/z", UNKNOWN + "/pty/x"])
@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_json_404(gateway, path):
    """Unknown paths answer 404 in the same JSON shape."""
    assert_error(await gateway.request("GET", path), 404, "not_found")


@pytest.mark.parametrize("path", [UNKNOWN, "/v1/sessions/not-a-uuid"])
@pytest_twisted.ensureDeferred
async def test_unknown_session_is_404(gateway, path):
    """GET, DELETE and attach of a session that does not exist are 404."""
    for method in ("GET", "DELETE"):
        assert_error(await gateway.request(method, path), 404, "session_not_found")
    assert_error(await gateway.request("POST", path + "/attach"), 404, "session_not_found")


@pytest_twisted.ensureDeferred
async def test_other_subjects_session_is_404(gateway):
    """Another subject's session does not exist for you: GET, DELETE and attach are 404."""
    created = await gateway.create(token="alice")
    path = f"/v1/sessions/{created['session_id']}"
    assert_error(await gateway.request("GET", path, token="mallory"), 404, "session_not_found")
    assert_error(await gateway.request("DELETE", path, token="mallory"), 404, "session_not_found")
    assert_error(await gateway.request("POST", path + "/attach", token="mallory"), 404, "session_not_found")
    listed = await gateway.request("GET", "/v1/sessions", token="mallory")
    assert listed.json == {"sessions": [], "next_cursor": None}
    assert (await gateway.request("GET", path, token="alice")).json["status"] == "running"
    await gateway.request("DELETE", path)


@pytest_twisted.ensureDeferred
async def test_list_pages_newest_first(gateway):
    """GET /v1/sessions pages through the caller's sessions with limit and an opaque cursor."""
    ids = [(await gateway.create(token="lister"))["session_id"] for _ in range(3)]
    first = await gateway.request("GET", "/v1/sessions?limit=2", token="lister")
    assert [s["session_id"] for s in first.json["sessions"]] == ids[::-1][:2]
    cursor = first.json["next_cursor"]
    second = await gateway.request("GET", f"/v1/sessions?limit=2&cursor={cursor}", token="lister")
    assert [s["session_id"] for s in second.json["sessions"]] == ids[:1]
    assert second.json["next_cursor"] is None
    for bad in ("limit=0", "limit=201", "limit=x", "cursor=garbage!", "cursor=e30"):
        assert (await gateway.request("GET", f"/v1/sessions?{bad}", token="lister")).status == 400
    for sid in ids:
        await gateway.request("DELETE", f"/v1/sessions/{sid}", token="lister")


@pytest_twisted.ensureDeferred
async def test_healthz_and_profiles(gateway):
    """/healthz needs no token; /v1/profiles lists only the profiles the caller may use."""
    health = await gateway.request("GET", "/healthz", token=None)
    assert (health.status, health.json) == (200, {"status": "ok"})
    profiles = (await gateway.request("GET", "/v1/profiles")).json["profiles"]
    assert [p["name"] for p in profiles] == ["default", "small"]
    assert set(profiles[0]) == {"name", "max_ttl_seconds", "idle_timeout_seconds", "cpu", "memory_mb"}


# ------------------------------------------------------------ WebSocket upgrade refusals


def _refused(url: str, origin: str | None = None) -> int:
    try:
        WsClient(url, origin=origin).close()
    except InvalidStatus as e:
        body = json.loads(e.response.body)
        assert body["error"]["code"] and body["error"]["message"]
        return e.response.status_code
    raise AssertionError("the upgrade was accepted")


@pytest_twisted.ensureDeferred
async def test_upgrade_refusals(gateway):
    """401 without or with a bad/expired token, 403 for another session's token, 404 for a deleted session."""
    a, b = await gateway.create(), await gateway.create()
    url_a = a["attach"]["ws_url"]
    assert await in_thread(_refused, url_a) == 401
    assert await in_thread(_refused, url_a + "?token=garbage") == 401
    assert await in_thread(_refused, url_a + "?token=" + b["attach"]["token"]) == 403
    await gateway.request("DELETE", f"/v1/sessions/{a['session_id']}")
    assert await in_thread(_refused, url_a + "?token=" + a["attach"]["token"]) == 404
    gateway.clock.advance(15 * 60)
    assert await in_thread(_refused, b["attach"]["ws_url"] + "?token=" + b["attach"]["token"]) == 401
    await gateway.request("DELETE", f"/v1/sessions/{b['session_id']}")


@pytest_twisted.ensureDeferred
async def test_upgrade_origin_check(gateway):
    """A browser page from another origin is refused with 403; the gateway's own origin is accepted."""
    created = await gateway.create()
    url = f"{created['attach']['ws_url']}?token={created['attach']['token']}"
    assert await in_thread(_refused, url, "https://evil.example") == 403
    ws = await in_thread(lambda: WsClient(url, origin=gateway.base))
    await in_thread(ws.close)
    await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}")


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\x00\x01binary", 1008),
        ("not json", 1007),
        ('{"type":"stdin","data_b64":"***"}', 1007),
        ('{"type":"resize","cols":0,"rows":10}', 1008),
        ('{"type":"resize","cols":80,"rows":1001}', 1008),
        ('{"type":"launch"}', 1008),
        ("[1,2,3]", 1008),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_frame_closes_socket_not_session(gateway, frame, code):
    """A malformed frame closes that WebSocket with 1007/1008; the session and other attachments go on."""
    created = await gateway.create()
    bystander = await gateway.attach(created)
    offender = await gateway.attach(created)
    await in_thread(offender.send_json, frame)
    assert await in_thread(offender.wait_close) == code
    await in_thread(bystander.type, "echo alive-$((4*4))\n")
    await in_thread(bystander.read_until, b"alive-16")
    await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}")


@pytest_twisted.ensureDeferred
async def test_oversized_message_closes_with_1009(gateway):
    """A message over WS_MAX_MESSAGE_BYTES is refused by the protocol with 1009; the session goes on."""
    created = await gateway.create()
    ws = await gateway.attach(created)
    await in_thread(ws.send_json, json.dumps({"type": "stdin", "data_b64": "QUFB" * 30000}))
    assert await in_thread(ws.wait_close) == 1009
    got = await gateway.request("GET", f"/v1/sessions/{created['session_id']}")
    assert got.json["status"] == "running"
    await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}")
