"""Unit tests for cloudshell_fog.policy.admit: a table of principals, requests, profiles and policies."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cloudshell_fog.auth import Principal
from cloudshell_fog.config import ImageRules, Policy, Profile
from cloudshell_fog.policy import (
    RULE_DIGEST,
    RULE_GROUPS,
    RULE_QUOTA,
    RULE_REGISTRY,
    RULE_TTL,
    Decision,
    SessionRequest,
    admit,
    may_use,
)

DIGEST = "sha256:" + "ab" * 32
PINNED = f"ghcr.io/org/img@{DIGEST}"
TAGGED = "ghcr.io/org/img:1.0"

PROFILE = Profile(
    name="default",
    max_ttl_seconds=3600,
    idle_timeout_seconds=0,
    cpu=1.0,
    memory_mb=1024,
    allowed_groups=(),
    image_ref=None,
)
POLICY = Policy(
    profiles={"default": PROFILE},
    max_sessions_per_subject=3,
    images=ImageRules(allowed_registries=(), require_digest=False),
)


def principal(*groups: str) -> Principal:
    """A principal with the given groups."""
    return Principal(subject="dev:0123456789abcdef", groups=frozenset(groups))


def request(ttl: int = 600, image: str | None = None) -> SessionRequest:
    """A request for the default profile."""
    return SessionRequest(profile="default", ttl_seconds=ttl, image_ref=image)


def profile(**changes) -> Profile:
    """The default profile with C{changes}."""
    return replace(PROFILE, **changes)


def policy(registries: tuple[str, ...] = (), require_digest: bool = False, quota: int = 3) -> Policy:
    """The test policy with the given image rules and quota."""
    return replace(
        POLICY,
        max_sessions_per_subject=quota,
        images=ImageRules(allowed_registries=registries, require_digest=require_digest),
    )


CASES = [
    # id, principal, request, profile, policy, active sessions, require_digest arg, allowed, rule_id, image
    ("open-profile-no-groups", principal(), request(), PROFILE, POLICY, 0, False, True, None, None),
    ("open-profile-any-groups", principal("x"), request(), PROFILE, POLICY, 0, False, True, None, None),
    ("group-member", principal("staff"), request(), profile(allowed_groups=("staff",)), POLICY, 0, False, True, None, None),
    ("one-of-several-groups", principal("a", "ops"), request(), profile(allowed_groups=("staff", "ops")), POLICY, 0, False, True, None, None),
    ("not-a-member", principal("guests"), request(), profile(allowed_groups=("staff",)), POLICY, 0, False, False, RULE_GROUPS, None),
    ("no-groups-restricted-profile", principal(), request(), profile(allowed_groups=("staff",)), POLICY, 0, False, False, RULE_GROUPS, None),
    ("group-names-are-exact", principal("Staff"), request(), profile(allowed_groups=("staff",)), POLICY, 0, False, False, RULE_GROUPS, None),
    ("ttl-below-max", principal(), request(ttl=3599), PROFILE, POLICY, 0, False, True, None, None),
    ("ttl-equal-max", principal(), request(ttl=3600), PROFILE, POLICY, 0, False, True, None, None),
    ("ttl-above-max", principal(), request(ttl=3601), PROFILE, POLICY, 0, False, False, RULE_TTL, None),
    ("quota-none-active", principal(), request(), PROFILE, policy(quota=3), 0, False, True, None, None),
    ("quota-below-limit", principal(), request(), PROFILE, policy(quota=3), 2, False, True, None, None),
    ("quota-at-limit", principal(), request(), PROFILE, policy(quota=3), 3, False, False, RULE_QUOTA, None),
    ("quota-above-limit", principal(), request(), PROFILE, policy(quota=3), 7, False, False, RULE_QUOTA, None),
    ("quota-of-one-at-limit", principal(), request(), PROFILE, policy(quota=1), 1, False, False, RULE_QUOTA, None),
    ("no-image-anywhere", principal(), request(), PROFILE, policy(registries=("ghcr.io",), require_digest=True), 0, True, True, None, None),
    ("any-registry", principal(), request(image="quay.io/a/b:1"), PROFILE, POLICY, 0, False, True, None, "quay.io/a/b:1"),
    ("registry-allowed", principal(), request(image=TAGGED), PROFILE, policy(registries=("ghcr.io",)), 0, False, True, None, TAGGED),
    ("registry-denied", principal(), request(image="quay.io/a/b:1"), PROFILE, policy(registries=("ghcr.io",)), 0, False, False, RULE_REGISTRY, None),
    ("docker-hub-implicit-allowed", principal(), request(image="busybox:1.36"), PROFILE, policy(registries=("docker.io",)), 0, False, True, None, "busybox:1.36"),
    ("docker-hub-implicit-denied", principal(), request(image="busybox"), PROFILE, policy(registries=("ghcr.io",)), 0, False, False, RULE_REGISTRY, None),
    ("registry-with-port", principal(), request(image="localhost:5000/x:1"), PROFILE, policy(registries=("localhost:5000",)), 0, False, True, None, "localhost:5000/x:1"),
    ("registry-port-must-match", principal(), request(image="localhost:5001/x:1"), PROFILE, policy(registries=("localhost:5000",)), 0, False, False, RULE_REGISTRY, None),
    ("policy-digest-tag-denied", principal(), request(image=TAGGED), PROFILE, policy(require_digest=True), 0, False, False, RULE_DIGEST, None),
    ("policy-digest-pinned-ok", principal(), request(image=PINNED), PROFILE, policy(require_digest=True), 0, False, True, None, PINNED),
    ("arg-digest-tag-denied", principal(), request(image=TAGGED), PROFILE, POLICY, 0, True, False, RULE_DIGEST, None),
    ("arg-digest-pinned-ok", principal(), request(image=PINNED), PROFILE, POLICY, 0, True, True, None, PINNED),
    ("no-digest-rule-tag-ok", principal(), request(image=TAGGED), PROFILE, POLICY, 0, False, True, None, TAGGED),
    ("profile-image-used", principal(), request(), profile(image_ref=TAGGED), POLICY, 0, False, True, None, TAGGED),
    ("request-image-wins", principal(), request(image=PINNED), profile(image_ref=TAGGED), POLICY, 0, False, True, None, PINNED),
    ("profile-image-checked-registry", principal(), request(), profile(image_ref="quay.io/a/b:1"), policy(registries=("ghcr.io",)), 0, False, False, RULE_REGISTRY, None),
    ("profile-image-checked-digest", principal(), request(), profile(image_ref=TAGGED), POLICY, 0, True, False, RULE_DIGEST, None),
    ("groups-checked-before-ttl", principal(), request(ttl=99999), profile(allowed_groups=("staff",)), POLICY, 0, False, False, RULE_GROUPS, None),
    ("ttl-checked-before-quota", principal(), request(ttl=99999), PROFILE, policy(quota=1), 5, False, False, RULE_TTL, None),
    ("quota-checked-before-image", principal(), request(image="quay.io/a/b:1"), PROFILE, policy(registries=("ghcr.io",), quota=1), 1, False, False, RULE_QUOTA, None),
    ("registry-checked-before-digest", principal(), request(image="quay.io/a/b:1"), PROFILE, policy(registries=("ghcr.io",), require_digest=True), 0, False, False, RULE_REGISTRY, None),
]


@pytest.mark.parametrize(
    ("who", "req", "prof", "pol", "active", "require_digest", "allowed", "rule_id", "image"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_admit(who, req, prof, pol, active, require_digest, allowed, rule_id, image):
    """admit decides as the table says, naming the rule and giving a one-sentence reason on denial."""
    decision = admit(who, req, prof, pol, active, require_digest=require_digest)
    assert isinstance(decision, Decision)
    assert decision.allowed is allowed
    assert decision.rule_id == rule_id
    if allowed:
        assert decision.reason is None
        assert decision.image_ref == image
    else:
        reason = decision.reason
        assert isinstance(reason, str) and len(reason) > 20
        assert reason.endswith(".")
        assert "\n" not in reason
        assert decision.image_ref is None


@pytest.mark.parametrize(
    ("rule_id", "case_id", "needles"),
    [
        (RULE_GROUPS, "not-a-member", ("'default'", "staff")),
        (RULE_TTL, "ttl-above-max", ("3601", "3600", "'default'")),
        (RULE_QUOTA, "quota-at-limit", ("3 sessions", "DELETE")),
        (RULE_REGISTRY, "registry-denied", ("quay.io", "ghcr.io")),
        (RULE_DIGEST, "policy-digest-tag-denied", ("sha256",)),
    ],
)
def test_admit_reason_names_the_facts(rule_id, case_id, needles):
    """Each denial's reason mentions the values that decided it."""
    case = next(c for c in CASES if c[0] == case_id)
    decision = admit(*case[1:6], require_digest=case[6])
    assert decision.rule_id == rule_id
    for needle in needles:
        assert needle in decision.reason


@pytest.mark.parametrize(
    ("groups", "allowed_groups", "expected"),
    [
        ((), (), True),
        (("a",), (), True),
        ((), ("a",), False),
        (("a",), ("a",), True),
        (("b",), ("a",), False),
        (("a", "b"), ("b", "c"), True),
    ],
)
def test_may_use(groups, allowed_groups, expected):
    """may_use is true when the profile is open or the groups intersect."""
    assert may_use(principal(*groups), profile(allowed_groups=allowed_groups)) is expected


def test_admit_is_pure():
    """admit gives the same answer twice and changes none of its arguments."""
    prof = profile(allowed_groups=("staff",), image_ref=TAGGED)
    pol = policy(registries=("ghcr.io",))
    who, req = principal("staff"), request()
    first = admit(who, req, prof, pol, 0)
    assert admit(who, req, prof, pol, 0) == first
    assert prof == profile(allowed_groups=("staff",), image_ref=TAGGED)
    assert pol == policy(registries=("ghcr.io",))
