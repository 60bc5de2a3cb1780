"""
Admission policy: pure functions of the principal, the request, the policy
and the caller's current usage.  No I/O, no clock, no logging.

Every denial names the rule that decided it (C{rule_id}); the API answers
403 with that id so an operator can find the line in policy.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudshell_fog.auth import Principal
from cloudshell_fog.config import Policy, Profile
from cloudshell_fog.images import parse_image_ref

RULE_GROUPS = "profile.allowed_groups"
RULE_TTL = "profile.max_ttl_seconds"
RULE_QUOTA = "quotas.max_sessions_per_subject"
RULE_REGISTRY = "images.allowed_registries"
RULE_DIGEST = "images.require_digest"


@dataclass(frozen=True)
class SessionRequest:
    profile: str
    ttl_seconds: int
    placement_hint: str | None = None
    image_ref: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule_id: str | None = None
    reason: str | None = None
    image_ref: str | None = None  # the image the session will use (request's or profile's)

    @classmethod
    def deny(cls, rule_id: str, reason: str) -> "Decision":
        return cls(False, rule_id, reason)


def may_use(principal: Principal, profile: Profile) -> bool:
    """True when the principal's groups admit it to the profile."""
    return not profile.allowed_groups or bool(principal.groups & set(profile.allowed_groups))


def admit(
    principal: Principal,
    request: SessionRequest,
    profile: Profile,
    policy: Policy,
    active_sessions: int,
    require_digest: bool = False,
) -> Decision:
    """
    Decide whether C{principal} may start C{request} on C{profile}.

    @param active_sessions: the principal's sessions not yet terminated.
    @param require_digest: production mode's demand for pinned images, on top
        of the policy's own C{images.require_digest}.
    """
    if not may_use(principal, profile):
        return Decision.deny(
            RULE_GROUPS,
            f"Profile {profile.name!r} is limited to the groups {', '.join(profile.allowed_groups)}; "
            "ask an administrator to add you to one of them or pick another profile.",
        )
    if request.ttl_seconds > profile.max_ttl_seconds:
        return Decision.deny(
            RULE_TTL,
            f"ttl_seconds {request.ttl_seconds} is longer than profile {profile.name!r} allows "
            f"({profile.max_ttl_seconds}); ask for {profile.max_ttl_seconds} or less.",
        )
    if active_sessions >= policy.max_sessions_per_subject:
        return Decision.deny(
            RULE_QUOTA,
            f"You already have {active_sessions} sessions, the most allowed; "
            "delete one (DELETE /v1/sessions/{id}) before creating another.",
        )
    image_ref = request.image_ref or profile.image_ref
    if image_ref is not None:
        image = parse_image_ref(image_ref)  # validated by the caller (400) or at start-up
        rules = policy.images
        if rules.allowed_registries and image.registry not in rules.allowed_registries:
            return Decision.deny(
                RULE_REGISTRY,
                f"Images from {image.registry} are not allowed; use one of "
                f"{', '.join(rules.allowed_registries)}.",
            )
        if (rules.require_digest or require_digest) and not image.pinned:
            return Decision.deny(
                RULE_DIGEST,
                "image_ref must be pinned by digest (name@sha256:<64 hex>), not only a tag.",
            )
    return Decision(True, image_ref=image_ref)
