"""Development-mode verifier: any non-empty bearer token is accepted."""

from __future__ import annotations

import hashlib

from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from cloudshell_fog.auth import AuthError, IAccessTokenVerifier, Principal


@implementer(IAccessTokenVerifier)
class DevVerifier:
    """
    The subject is C{dev:<first 16 hex of sha256(token)>}, so two developers
    with different tokens are different subjects; every caller has the
    groups of C{DEV_GROUPS}.
    """

    def __init__(self, groups: tuple[str, ...] = ()):
        self._groups = frozenset(groups)

    def verify(self, token: str):
        if not token:
            return fail(AuthError("missing_token", "Send a non-empty bearer token."))
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        return succeed(Principal(subject=f"dev:{digest[:16]}", groups=self._groups))
