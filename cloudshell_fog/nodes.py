"""
The node inventory (configured nodes, their connectors, the sessions each
holds) and the prober that measures their health and round-trip time, as the
L{NodeView}s placement ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from cloudshell_fog.config import NodeConfig
from cloudshell_fog.placement import NodeView

RTT_SMOOTHING = 0.3  # weight of a new sample in the moving average
_log = Logger()


@dataclass
class NodeState:
    config: NodeConfig
    connector: object
    sessions: int = 0
    healthy: bool = True  # until a probe says otherwise: allocation fails over anyway
    rtt_ms: float | None = None
    failures: int = 0
    draining: bool = False  # removed from nodes.yaml by a reload: kept until its sessions end

    def view(self) -> NodeView:
        c = self.config
        return NodeView(c.id, c.region, c.tier, self.healthy, self.sessions, c.capacity, self.rtt_ms)

    def describe(self) -> dict:
        """As GET /v1/nodes shows it."""
        c = self.config
        return {"id": c.id, "region": c.region, "tier": c.tier, "healthy": self.healthy,
                "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
                "sessions": self.sessions, "capacity": c.capacity}


class NodeInventory:
    def __init__(self, states: list[NodeState]):
        self._states = {s.config.id: s for s in states}
        self._retired: list = []  # connectors replaced by a reload, still owning some runtimes

    def states(self) -> list[NodeState]:
        return list(self._states.values())

    def views(self) -> list[NodeView]:
        """What placement may choose from: draining nodes take no new sessions."""
        return [s.view() for s in self._states.values() if not s.draining]

    def connectors(self) -> list:
        return [s.connector for s in self._states.values()] + self._retired

    def update(self, configs, make_connector) -> None:
        """
        Take a reloaded nodes.yaml: unchanged nodes keep their state; changed
        ones get a new connector (running sessions keep the old one); removed
        ones with running sessions drain, taking no new sessions, until empty.
        """
        states = {}
        for config in configs:
            old = self._states.get(config.id)
            if old is not None and old.config == config:
                old.draining = False
                states[config.id] = old
                continue
            state = NodeState(config, make_connector(config))
            if old is not None:
                self._retired.append(old.connector)
                state.sessions, state.healthy, state.rtt_ms = old.sessions, old.healthy, old.rtt_ms
            states[config.id] = state
        for node_id, old in self._states.items():
            if node_id not in states:
                if old.sessions:
                    old.draining = True
                    states[node_id] = old
                else:
                    self._retired.append(old.connector)
        self._states = states

    def connector(self, node_id: str):
        return self._states[node_id].connector

    def config(self, node_id: str) -> NodeConfig:
        return self._states[node_id].config

    def reserve(self, node_id: str) -> None:
        self._states[node_id].sessions += 1

    def release(self, node_id: str) -> None:
        state = self._states[node_id]
        state.sessions = max(0, state.sessions - 1)
        if state.draining and not state.sessions:
            del self._states[node_id]
            self._retired.append(state.connector)

    def probed(self, node_id: str, rtt_ms: float | None, failures_to_unhealthy: int, why: str = "") -> None:
        """Record a probe: C{rtt_ms} on success (None: not measured), else a failure saying C{why}."""
        state = self._states.get(node_id)
        if state is None:
            return  # removed by a reload meanwhile
        if why:
            state.failures += 1
            if state.healthy and state.failures >= failures_to_unhealthy:
                state.healthy = False
                _log.warn("node {node_id} is unhealthy after {n} failed probes: {why}",
                          node_id=node_id, n=state.failures, why=why)
            return
        if not state.healthy:
            _log.info("node {node_id} is healthy again", node_id=node_id)
        state.healthy, state.failures = True, 0
        if rtt_ms is not None:
            state.rtt_ms = rtt_ms if state.rtt_ms is None else (
                RTT_SMOOTHING * rtt_ms + (1 - RTT_SMOOTHING) * state.rtt_ms)


class NodeProber(Service):
    """Probes every node every C{interval} seconds; C{failures} misses in a row make it unhealthy."""

    def __init__(self, inventory: NodeInventory, clock, interval: float, failures: int):
        self._inventory, self._clock = inventory, clock
        self._interval, self._failures = interval, failures
        self._calls: dict[str, object] = {}

    def startService(self):
        super().startService()
        self.sync()

    def sync(self) -> None:
        """Probe nodes that are new (after a reload); stop probing those that are gone."""
        current = {state.config.id for state in self._inventory.states()}
        for node_id in current - set(self._calls):
            self._schedule(node_id, 0)
        for node_id in set(self._calls) - current:
            call = self._calls.pop(node_id)
            if call.active():
                call.cancel()

    def stopService(self):
        super().stopService()
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()

    def _schedule(self, node_id: str, delay: float) -> None:
        if self.running and any(s.config.id == node_id for s in self._inventory.states()):
            self._calls[node_id] = self._clock.callLater(delay, self.probe, node_id)

    def probe(self, node_id: str):
        """Probe one node now; fires when the result is recorded."""
        d = maybeDeferred(self._inventory.connector(node_id).probe)
        d.addTimeout(max(self._interval, 1.0), self._clock)
        d.addCallbacks(
            lambda rtt: self._inventory.probed(node_id, rtt, self._failures),
            lambda f: self._inventory.probed(node_id, None, self._failures,
                                             why=getattr(f.value, "message", None) or f.getErrorMessage()
                                             or f.type.__name__),
        )
        d.addErrback(lambda f: _log.failure("recording a probe of {node_id} failed", f, node_id=node_id))
        d.addBoth(lambda _: self._schedule(node_id, self._interval))
        return d
