"""
Attach tokens: short-lived HS256 JWTs that let one WebSocket attach to one
session.

Claims: C{sid} (session id), C{sub} (owner), C{aud} (L{ATTACH_AUDIENCE}),
C{iat}, C{exp} (15 minutes later), C{jti} (random) and C{mode} (C{rw}).
Expiry is checked against the injected clock, not PyJWT's wall clock.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import jwt

from cloudshell_fog.auth import AuthError

ATTACH_AUDIENCE = "cloudshell-fog:attach"
ATTACH_TOKEN_SECONDS = 15 * 60
_ALGORITHM = "HS256"


@dataclass(frozen=True)
class AttachGrant:
    session_id: str
    subject: str
    mode: str
    jti: str
    expires_at: int


class AttachTokens:
    """Mint and verify attach tokens with one secret and one clock."""

    def __init__(self, secret: bytes, clock, lifetime: int = ATTACH_TOKEN_SECONDS):
        if len(secret) < 32:
            raise ValueError("the attach token secret must be at least 32 bytes")
        self._secret, self._clock, self._lifetime = secret, clock, lifetime

    def mint(self, session_id: str, subject: str, mode: str = "rw") -> tuple[str, int]:
        """Return C{(token, expires_at)}, C{expires_at} in POSIX seconds."""
        now = int(self._clock.seconds())
        exp = now + self._lifetime
        claims = {
            "sid": session_id,
            "sub": subject,
            "aud": ATTACH_AUDIENCE,
            "iat": now,
            "exp": exp,
            "jti": secrets.token_urlsafe(16),
            "mode": mode,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM), exp

    def verify(self, token: str) -> AttachGrant:
        """Check signature, audience and expiry; raise L{AuthError} (401) otherwise."""
        if not token:
            raise AuthError("missing_token", "Add the attach token from the create response as ?token=.")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                audience=ATTACH_AUDIENCE,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["sid", "sub", "aud", "iat", "exp", "jti"],
                },
            )
        except jwt.InvalidTokenError:
            raise AuthError(
                "invalid_token",
                "The attach token is not valid here; mint a new one with POST /v1/sessions/{id}/attach.",
            ) from None
        if not isinstance(claims["exp"], int) or not isinstance(claims["sid"], str):
            raise AuthError("invalid_token", "The attach token is malformed.")
        if claims["exp"] <= self._clock.seconds():
            raise AuthError(
                "token_expired",
                "The attach token has expired; mint a new one with POST /v1/sessions/{id}/attach.",
            )
        return AttachGrant(
            session_id=claims["sid"],
            subject=claims["sub"],
            mode=claims.get("mode", "rw"),
            jti=claims["jti"],
            expires_at=claims["exp"],
        )


def looks_like_attach_token(token: str) -> bool:
    """
    True when a bearer token claims to be an attach token (whatever its
    signature): such tokens never authenticate API calls.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return False
    aud = claims.get("aud")
    return aud == ATTACH_AUDIENCE or (isinstance(aud, list) and ATTACH_AUDIENCE in aud)
