"""Operations: Prometheus metrics after a scripted workload, and readiness."""

import sqlite3

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
