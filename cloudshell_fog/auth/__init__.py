"""
Who is asking: the bearer-token seam (L{IAccessTokenVerifier}) and the
principal it yields.
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Interface


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a stable subject and the groups it belongs to."""

    subject: str
    groups: frozenset[str]


class AuthError(Exception):
    """
    A refused credential.  C{code} is the stable error code, C{message} a
    sentence the caller can act on; neither ever contains the token.
    """

    def __init__(self, code: str, message: str, status: int = 401, retry_after: int | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.retry_after = retry_after  # seconds, on 503


class IAccessTokenVerifier(Interface):
    def verify(token: str):
        """
        Check a bearer access token.

        @return: a Deferred firing with a L{Principal}, or failing with
            L{AuthError}.
        """
