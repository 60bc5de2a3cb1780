"""
Prometheus metrics, in a registry of the gateway's own (so several gateways
in one process, as in tests, never mix).

Counting on the data path costs an integer addition per frame: byte and
pause counts are plain attributes, exposed at scrape time by a collector
together with what is read from the inventory (sessions per node, health,
RTT).  Labels are bounded: node ids and tiers from nodes.yaml, result and
reason codes from a fixed vocabulary, rule ids from policy.yaml; never a
session id or a subject.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, inventory=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.created = Counter("cloudshell_sessions_created", "Session creations by result",
                               ["result", "rule_id"], registry=self.registry)
        self.start_seconds = Histogram("cloudshell_session_start_seconds",
                                       "From the create request to a running runtime",
                                       buckets=START_BUCKETS, registry=self.registry)
        self.attaches = Counter("cloudshell_attaches", "WebSocket attach attempts by result",
                                ["result"], registry=self.registry)
        self.placements = Counter("cloudshell_placements", "Placement decisions by tier and failover",
                                  ["tier", "failover"], registry=self.registry)
        self.token_failures = Counter("cloudshell_token_verification_failures",
                                      "Refused bearer tokens by reason", ["reason"], registry=self.registry)
        self.ended = Counter("cloudshell_sessions_ended", "Ended sessions by reason", ["reason"],
                             registry=self.registry)
        self.bytes_out = 0  # terminal output sent to clients (before base64)
        self.bytes_in = 0  # terminal input received from clients
        self.pauses = 0  # times a full client paused a shell's output
        self._inventory = inventory
        self.registry.register(_Collector(self))

    def bind(self, inventory) -> None:
        self._inventory = inventory


class _Collector:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        m = self._metrics
        traffic = CounterMetricFamily("cloudshell_pty_bytes", "Terminal bytes through the gateway",
                                      labels=["direction"])
        traffic.add_metric(["out"], m.bytes_out)
        traffic.add_metric(["in"], m.bytes_in)
        yield traffic
        yield CounterMetricFamily("cloudshell_backpressure_pauses", "Shell output paused for a full client",
                                  value=m.pauses)
        if m._inventory is None:
            return
        active = GaugeMetricFamily("cloudshell_sessions_active", "Running sessions by node",
                                   labels=["node_id", "tier"])
        healthy = GaugeMetricFamily("cloudshell_node_healthy", "1 when the node is healthy", labels=["node_id"])
        rtt = GaugeMetricFamily("cloudshell_node_rtt_milliseconds", "Measured round trip to the node",
                                labels=["node_id"])
        for state in m._inventory.states():
            node = state.config
            active.add_metric([node.id, node.tier], state.sessions)
            healthy.add_metric([node.id], 1 if state.healthy else 0)
            if state.rtt_ms is not None:
                rtt.add_metric([node.id], state.rtt_ms)
        yield active
        yield healthy
        yield rtt
