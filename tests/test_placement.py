"""Unit tests for cloudshell_fog.placement.place: ranking, reasons and NoCapacity."""

from __future__ import annotations

import pytest

from cloudshell_fog.placement import NoCapacity, NodeView, Placement, place


def node(
    id: str,
    tier: str = "fog",
    region: str = "r1",
    healthy: bool = True,
    sessions: int = 0,
    capacity: int = 10,
    rtt_ms: float | None = None,
) -> NodeView:
    """A node view with sensible defaults."""
    return NodeView(
        id=id, region=region, tier=tier, healthy=healthy, sessions=sessions, capacity=capacity, rtt_ms=rtt_ms
    )


def order(placement: Placement) -> list[str]:
    """The candidate node ids, best first."""
    return [c.node.id for c in placement.candidates]


RANKING_CASES = [
    # id, hint, nodes, expected order
    ("fog-before-cloud", None, [node("c", tier="cloud"), node("f", tier="fog")], ["f", "c"]),
    (
        "fog-before-faster-cloud",
        None,
        [node("c", tier="cloud", rtt_ms=1.0), node("f", tier="fog", rtt_ms=50.0)],
        ["f", "c"],
    ),
    (
        "fog-before-emptier-cloud",
        None,
        [node("c", tier="cloud", sessions=0), node("f", tier="fog", sessions=9)],
        ["f", "c"],
    ),
    ("lower-rtt-wins", None, [node("a", rtt_ms=30.0), node("b", rtt_ms=10.0), node("c", rtt_ms=20.0)], ["b", "c", "a"]),
    ("known-rtt-before-unknown", None, [node("a"), node("b", rtt_ms=500.0)], ["b", "a"]),
    (
        "lower-load-wins-same-rtt",
        None,
        [node("a", sessions=5, rtt_ms=10.0), node("b", sessions=1, rtt_ms=10.0)],
        ["b", "a"],
    ),
    (
        "load-is-a-fraction-of-capacity",
        None,
        [node("a", sessions=2, capacity=4), node("b", sessions=10, capacity=100)],
        ["b", "a"],
    ),
    ("lower-load-wins-no-rtt", None, [node("a", sessions=3), node("b", sessions=2)], ["b", "a"]),
    ("rtt-before-load", None, [node("a", sessions=0, rtt_ms=20.0), node("b", sessions=9, rtt_ms=5.0)], ["b", "a"]),
    ("id-breaks-ties", None, [node("b"), node("a"), node("c")], ["a", "b", "c"]),
    (
        "cloud-ranked-by-rtt-too",
        None,
        [node("c1", tier="cloud", rtt_ms=9.0), node("c2", tier="cloud", rtt_ms=3.0), node("f", rtt_ms=100.0)],
        ["f", "c2", "c1"],
    ),
    (
        "hint-node-beats-fog",
        "c",
        [node("f", tier="fog", rtt_ms=1.0), node("c", tier="cloud", rtt_ms=99.0)],
        ["c", "f"],
    ),
    (
        "hint-region-beats-fog",
        "us",
        [node("f", tier="fog", region="eu"), node("c", tier="cloud", region="us")],
        ["c", "f"],
    ),
    (
        "hint-node-beats-hint-region",
        "x",
        [node("a", region="x"), node("x", tier="cloud", region="y")],
        ["x", "a"],
    ),
    (
        "hint-region-then-normal-order",
        "eu",
        [
            node("c-eu", tier="cloud", region="eu"),
            node("f-eu", tier="fog", region="eu", rtt_ms=20.0),
            node("f-eu2", tier="fog", region="eu", rtt_ms=10.0),
            node("f-us", tier="fog", region="us"),
        ],
        ["f-eu2", "f-eu", "c-eu", "f-us"],
    ),
    (
        "hint-unmatched-normal-ranking",
        "nowhere",
        [node("c", tier="cloud", rtt_ms=1.0), node("f2", rtt_ms=20.0), node("f1", rtt_ms=10.0)],
        ["f1", "f2", "c"],
    ),
    (
        "hinted-node-unhealthy-falls-back",
        "f",
        [node("f", healthy=False), node("c", tier="cloud")],
        ["c"],
    ),
    (
        "hinted-node-full-falls-back",
        "f",
        [node("f", sessions=10, capacity=10), node("c", tier="cloud")],
        ["c"],
    ),
    (
        "unhealthy-skipped",
        None,
        [node("sick", healthy=False, rtt_ms=1.0), node("well", rtt_ms=50.0), node("c", tier="cloud")],
        ["well", "c"],
    ),
    (
        "full-skipped",
        None,
        [node("full", sessions=10, capacity=10, rtt_ms=1.0), node("room", sessions=9, capacity=10)],
        ["room"],
    ),
    (
        "over-capacity-skipped",
        None,
        [node("over", sessions=12, capacity=10), node("ok", tier="cloud")],
        ["ok"],
    ),
]


@pytest.mark.parametrize(
    ("hint", "nodes", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in RANKING_CASES],
)
def test_place_ranking(hint, nodes, expected):
    """place ranks the usable nodes in the expected order; the candidates are the full ranking."""
    placement = place(hint, nodes)
    assert order(placement) == expected
    assert placement.best is placement.candidates[0]
    assert placement.best.node.id == expected[0]


def test_place_accepts_tuple():
    """place accepts a tuple of nodes as well as a list."""
    assert order(place(None, (node("c", tier="cloud"), node("f")))) == ["f", "c"]


REASON_CASES = [
    # id, hint, node, expected reasons
    ("fog-no-rtt", None, node("f"), ("fog-preferred", "healthy", "capacity-ok")),
    ("cloud-no-rtt", None, node("c", tier="cloud"), ("cloud-fallback", "healthy", "capacity-ok")),
    ("fog-rtt", None, node("f", rtt_ms=12.34), ("fog-preferred", "healthy", "capacity-ok", "rtt=12.3")),
    ("cloud-rtt-integer", None, node("c", tier="cloud", rtt_ms=7), ("cloud-fallback", "healthy", "capacity-ok", "rtt=7.0")),
    ("rtt-zero", None, node("f", rtt_ms=0.0), ("fog-preferred", "healthy", "capacity-ok", "rtt=0.0")),
    ("hint-node-cloud", "c", node("c", tier="cloud"), ("hint-node", "cloud-fallback", "healthy", "capacity-ok")),
    ("hint-node-fog", "f", node("f", rtt_ms=3.0), ("hint-node", "fog-preferred", "healthy", "capacity-ok", "rtt=3.0")),
    ("hint-region", "r1", node("f", region="r1"), ("hint-region", "fog-preferred", "healthy", "capacity-ok")),
    ("hint-unmatched", "zz", node("f"), ("hint-unmatched", "fog-preferred", "healthy", "capacity-ok")),
]


@pytest.mark.parametrize(
    ("hint", "the_node", "reasons"),
    [pytest.param(*case[1:], id=case[0]) for case in REASON_CASES],
)
def test_place_reasons(hint, the_node, reasons):
    """The chosen candidate's reasons say what decided, in order."""
    assert place(hint, [the_node]).best.reasons == reasons


def test_place_reasons_for_every_candidate():
    """Each fallback candidate carries its own reasons."""
    placement = place(
        "f2",
        [node("c", tier="cloud", rtt_ms=2.0), node("f1", rtt_ms=1.0), node("f2", rtt_ms=9.0)],
    )
    reasons = {c.node.id: c.reasons for c in placement.candidates}
    assert order(placement) == ["f2", "f1", "c"]
    assert reasons["f2"] == ("hint-node", "fog-preferred", "healthy", "capacity-ok", "rtt=9.0")
    assert reasons["f1"] == ("hint-unmatched", "fog-preferred", "healthy", "capacity-ok", "rtt=1.0")
    assert reasons["c"] == ("hint-unmatched", "cloud-fallback", "healthy", "capacity-ok", "rtt=2.0")


@pytest.mark.parametrize(
    ("nodes", "needles"),
    [
        pytest.param([], ("No runtime nodes are configured",), id="no-nodes"),
        pytest.param((), ("No runtime nodes are configured",), id="no-nodes-tuple"),
        pytest.param(
            [node("a", healthy=False), node("b", healthy=False, tier="cloud")],
            ("None of the 2 runtime nodes is healthy",),
            id="none-healthy",
        ),
        pytest.param(
            [node("a", sessions=10, capacity=10), node("b", sessions=3, capacity=3), node("c", healthy=False)],
            ("All 2 healthy runtime nodes are at capacity",),
            id="all-full",
        ),
    ],
)
def test_place_no_capacity(nodes, needles):
    """With no usable node place raises NoCapacity with a sentence saying why."""
    with pytest.raises(NoCapacity) as info:
        place(None, nodes)
    message = str(info.value)
    for needle in needles:
        assert needle in message
    assert message.endswith(".")
    assert "\n" not in message


def test_place_no_capacity_with_hint():
    """A hint does not change the NoCapacity outcome when nothing is usable."""
    with pytest.raises(NoCapacity):
        place("a", [node("a", healthy=False)])


def test_place_does_not_change_input():
    """place leaves the caller's list as it was."""
    nodes = [node("c", tier="cloud"), node("f")]
    before = list(nodes)
    place(None, nodes)
    assert nodes == before
