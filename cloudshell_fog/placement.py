"""
Placement: a pure ranking of runtime nodes for one request.

Order: the hinted node, then nodes in the hinted region, then fog before
cloud, then lower measured round-trip time, then lower load.  Only healthy
nodes with a free slot are candidates.  The reasons list says what decided.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeView:
    id: str
    region: str
    tier: str
    healthy: bool
    sessions: int
    capacity: int
    rtt_ms: float | None = None

    @property
    def free_slots(self) -> int:
        return self.capacity - self.sessions


@dataclass(frozen=True)
class Candidate:
    node: NodeView
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Placement:
    """The ranked candidates, best first; the first is the decision."""

    candidates: tuple[Candidate, ...]

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


class NoCapacity(Exception):
    """No node can take the session; the message says why."""


def _rank_key(hint: str | None, node: NodeView):
    return (
        hint is None or node.id != hint,
        hint is None or node.region != hint,
        node.tier != "fog",
        node.rtt_ms if node.rtt_ms is not None else float("inf"),
        node.sessions / node.capacity,
        node.id,
    )


def _reasons(hint: str | None, node: NodeView) -> tuple[str, ...]:
    reasons = []
    if hint is not None and node.id == hint:
        reasons.append("hint-node")
    elif hint is not None and node.region == hint:
        reasons.append("hint-region")
    elif hint is not None:
        reasons.append("hint-unmatched")
    reasons.append("fog-preferred" if node.tier == "fog" else "cloud-fallback")
    reasons += ["healthy", "capacity-ok"]
    if node.rtt_ms is not None:
        reasons.append(f"rtt={node.rtt_ms:.1f}")
    return tuple(reasons)


def place(hint: str | None, nodes: list[NodeView] | tuple[NodeView, ...]) -> Placement:
    """
    Rank C{nodes} for a request with placement hint C{hint} (a node id or
    a region, or None).

    @raise NoCapacity: when no node is healthy with a free slot.
    """
    if not nodes:
        raise NoCapacity("No runtime nodes are configured; add one to nodes.yaml.")
    healthy = [n for n in nodes if n.healthy]
    if not healthy:
        raise NoCapacity(f"None of the {len(nodes)} runtime nodes is healthy; try again later.")
    usable = [n for n in healthy if n.free_slots > 0]
    if not usable:
        raise NoCapacity(
            f"All {len(healthy)} healthy runtime nodes are at capacity; try again later "
            "or ask an operator to add capacity."
        )
    ranked = sorted(usable, key=lambda n: _rank_key(hint, n))
    return Placement(tuple(Candidate(n, _reasons(hint, n)) for n in ranked))
