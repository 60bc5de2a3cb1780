"""Operations: Prometheus metrics after a scripted workload, and readiness."""

import sqlite3

import pytest

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from support import in_thread


async def scrape(gateway) -> dict:
    response = await gateway.request("GET", "/metrics", token=None)
    assert response.status == 200
    samples = {}
    for family in text_string_to_metric_families(response.raw.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest_twisted.ensureDeferred
async def test_metrics_follow_a_workload(gateway):
    """Creations by result, a denial with its rule, attaches, placements, bytes and active sessions move as they should."""
    before = await scrape(gateway)
    a = await gateway.create(token="metric-user")
    b = await gateway.create(token="metric-user", placement_hint="cloud-local")
    denied = await gateway.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 99999},
                                   token="metric-user")
    assert denied.status == 403
    refused = await gateway.request("GET", "/v1/sessions", token=a["attach"]["token"])
    assert refused.status == 401
    ws = await gateway.attach(a)
    await in_thread(ws.type, "head -c 3000 /dev/zero | tr '\\\\0' x; echo; echo done-$((1+1))\n")
    await in_thread(ws.read_until, b"done-2")
    after = await scrape(gateway)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cloudshell_sessions_created_total", result="ok", rule_id="") == 2
    assert moved("cloudshell_sessions_created_total", result="policy_denied",
                 rule_id="profile.max_ttl_seconds") == 1
    assert moved("cloudshell_attaches_total", result="ok") == 1
    assert moved("cloudshell_placements_total", tier="fog", failover="false") == 1
    assert moved("cloudshell_placements_total", tier="cloud", failover="false") == 1
    assert moved("cloudshell_token_verification_failures_total", reason="attach_token_not_accepted") == 1
    assert moved("cloudshell_session_start_seconds_count") == 2
    assert moved("cloudshell_pty_bytes_total", direction="out") >= 3000
    assert moved("cloudshell_pty_bytes_total", direction="in") >= 40
    assert value(after, "cloudshell_sessions_active", node_id="fog-local", tier="fog") == 1
    assert value(after, "cloudshell_sessions_active", node_id="cloud-local", tier="cloud") == 1
    assert value(after, "cloudshell_node_healthy", node_id="fog-local") == 1
    text = (await gateway.request("GET", "/metrics", token=None)).raw.decode()
    assert a["session_id"] not in text and "metric-user" not in text and "dev:" not in text
    for created in (a, b):
        await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}", token="metric-user")


@pytest_twisted.ensureDeferred
async def test_readiness_follows_the_store_and_the_nodes(gateway):
    """/readyz is 200 when ready, 503 naming the check when the store stops answering or no node is healthy."""
    ready = await gateway.request("GET", "/readyz", token=None)
    assert (ready.status, ready.json) == (200, {"status": "ready", "checks": {"store": "ok", "nodes": "ok"}})
    store = gateway.parts.sessions._store
    working = store._db
    store._db = sqlite3.connect(":memory:")
    store._db.close()  # a store that no longer answers
    try:
        broken = await gateway.request("GET", "/readyz", token=None)
        assert broken.status == 503 and broken.json["status"] == "not_ready"
        assert broken.json["checks"]["store"] != "ok" and broken.json["checks"]["nodes"] == "ok"
    finally:
        store._db = working
    for state in gateway.parts.inventory.states():
        state.healthy = False
    nodes_down = await gateway.request("GET", "/readyz", token=None)
    assert nodes_down.status == 503 and nodes_down.json["checks"] == {"store": "ok", "nodes": "no node is healthy"}
    for state in gateway.parts.inventory.states():
        state.healthy = True
    assert (await gateway.request("GET", "/readyz", token=None)).status == 200


def test_audit_rotation_loses_no_line(tmp_path):
    """A burst of events across several rotations: every line is somewhere, whole, in order."""
    import json

    from twisted.internet.task import Clock

    from cloudshell_fog.audit import Audit

    path = tmp_path / "audit.jsonl"
    audit = Audit(Clock(), str(path), max_bytes=4096, backups=100)
    audit.open()
    for n in range(2000):
        audit.emit("test.event", session_id=f"s{n}", subject="x", n=n)
    audit.close()
    files = sorted(tmp_path.glob("audit.jsonl*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    assert len(files) > 10
    numbers = [json.loads(line)["details"]["n"] for f in files for line in f.read_text().splitlines()]
    assert numbers == list(range(2000))
    assert all(f.stat().st_size <= 4096 for f in files)


@pytest.fixture
def admin_gateway(make_gateway):
    return make_gateway(env={"DEV_GROUPS": "cloudshell-admins"})


@pytest_twisted.ensureDeferred
async def test_reload_applies_good_files_and_keeps_the_old_on_bad_ones(admin_gateway):
    """A reload takes a new profile and node; a broken file is refused with its reason; sessions survive."""
    import yaml

    from support import POLICY, WORK_ROOT, node

    gw = admin_gateway
    running = await gw.create()
    ws = await gw.attach(running)
    policy = {**POLICY, "profiles": {**POLICY["profiles"], "tiny": {"max_ttl_seconds": 60, "run_as": "cloudshell-test"}}}
    open(gw.env["POLICY_FILE"], "w").write(yaml.safe_dump(policy))
    nodes = [node("fog-local", "fog", work_root=WORK_ROOT), node("fog-new", "fog", work_root=WORK_ROOT)]
    open(gw.env["NODES_FILE"], "w").write(yaml.safe_dump({"nodes": nodes}))  # cloud-local removed
    done = await gw.request("POST", "/v1/admin/reload")
    assert done.status == 200 and done.json["reloaded"] is True
    assert "tiny" in [p["name"] for p in (await gw.request("GET", "/v1/profiles")).json["profiles"]]
    assert {n["id"] for n in (await gw.request("GET", "/v1/nodes")).json["nodes"]} == {"fog-local", "fog-new"}
    assert (await gw.create(profile="tiny", ttl_seconds=30, placement_hint="fog-new"))["placement"]["node_id"] \
        == "fog-new"

    open(gw.env["POLICY_FILE"], "w").write("profiles: [oops\n")
    refused = await gw.request("POST", "/v1/admin/reload")
    assert refused.status == 400 and refused.json["error"]["code"] == "config_invalid"
    assert "is not valid YAML" in refused.json["error"]["message"]
    assert "tiny" in [p["name"] for p in (await gw.request("GET", "/v1/profiles")).json["profiles"]]

    await in_thread(ws.type, "echo survived-$((3+3))\n")
    await in_thread(ws.read_until, b"survived-6")  # the session from before both reloads
    events = [e["event"] for e in gw.audit_events()]
    assert "config.reloaded" in events and "config.reload_failed" in events


@pytest_twisted.ensureDeferred
async def test_reload_needs_an_admin(gateway):
    """Without an admin group, POST /v1/admin/reload is 403 with rule admin.groups."""
    response = await gateway.request("POST", "/v1/admin/reload")
    assert (response.status, response.json["error"]["rule_id"]) == (403, "admin.groups")


def test_log_format_json_writes_one_object_per_line():
    """LOG_FORMAT=json gives JSON lines with the event's fields; text stays text; anything else is refused."""
    import io
    import json

    from twisted.logger import Logger, LogPublisher

    from cloudshell_fog.logs import observer

    out = io.StringIO()
    publisher = LogPublisher(observer(out, {"LOG_FORMAT": "json"}))
    Logger(observer=publisher).info("placed on {node_id}", node_id="fog-1", event="placement.decided")
    record = json.loads(out.getvalue().strip())
    assert record["node_id"] == "fog-1" and record["log_format"] == "placed on {node_id}"
    text = io.StringIO()
    LogPublisher(observer(text, {}))  # default: text
    with pytest.raises(SystemExit):
        observer(io.StringIO(), {"LOG_FORMAT": "xml"})
