"""
The node inventory: configured nodes, their connectors, health and the
sessions each one holds, as the L{NodeView}s placement ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudshell_fog.config import NodeConfig
from cloudshell_fog.placement import NodeView


@dataclass
class NodeState:
    config: NodeConfig
    connector: object
    sessions: int = 0
    healthy: bool = True
    rtt_ms: float | None = None

    def view(self) -> NodeView:
        c = self.config
        return NodeView(c.id, c.region, c.tier, self.healthy, self.sessions, c.capacity, self.rtt_ms)


class NodeInventory:
    def __init__(self, states: list[NodeState]):
        self._states = {s.config.id: s for s in states}

    def views(self) -> list[NodeView]:
        return [s.view() for s in self._states.values()]

    def connectors(self) -> list:
        return [s.connector for s in self._states.values()]

    def connector(self, node_id: str):
        return self._states[node_id].connector

    def config(self, node_id: str) -> NodeConfig:
        return self._states[node_id].config

    def reserve(self, node_id: str) -> None:
        self._states[node_id].sessions += 1

    def release(self, node_id: str) -> None:
        state = self._states[node_id]
        state.sessions = max(0, state.sessions - 1)
