"""
OIDC access-token verification (RFC 9068 JWT access tokens, RFC 8725
practices, RFC 7662 introspection for opaque tokens).

Keys: the discovery document C{<issuer>/.well-known/openid-configuration}
(whose C{issuer} must equal the configured one) names C{jwks_uri}; the key
set is fetched with treq, cached, refreshed periodically, and refreshed on an
unknown C{kid} at most once per L{MIN_REFRESH_SECONDS}.  The gateway starts
while the provider is down: requests then fail with 503 C{idp_unavailable}
and C{Retry-After}, and a background retry recovers by itself.

Signatures: only asymmetric algorithms (L{ALLOWED_ALGORITHMS}), each matched
to the type (and curve) of the key it is checked with; never C{none}, never
HMAC.  Claims: C{iss} exact, C{aud} contains the audience, C{exp} required,
C{nbf}/C{iat} honoured with a small leeway, C{typ} C{at+jwt} or C{JWT}.
Every refusal is an L{AuthError} whose message says what to do; no message
or log line ever contains a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import OrderedDict
from urllib.parse import quote_plus
from dataclasses import dataclass

import jwt
import treq
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from zope.interface import implementer

from cloudshell_fog.auth import AuthError, IAccessTokenVerifier, Principal

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
ALLOWED_TYPES = ("at+jwt", "application/at+jwt", "jwt")
MIN_REFRESH_SECONDS = 30.0  # unknown-kid refreshes, and retries while the provider is down
MAX_INTROSPECTION_CACHE = 10000
INACTIVE_CACHE_SECONDS = 30.0

_log = Logger()


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    groups_claim: str = "groups"
    subject_claim: str = "sub"
    leeway_seconds: int = 60
    refresh_seconds: int = 900
    http_timeout_seconds: float = 10.0
    introspection_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None


def _key_fits(algorithm: str, key) -> bool:
    """True when C{key}'s type (and curve) is the one C{algorithm} signs with."""
    if algorithm[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if algorithm == "ES384":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
    if algorithm == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


@dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str | None  # the JWK's own "alg", when it names one
    key: object


def parse_jwks(document) -> list[_Key]:
    """The usable public signing keys of a JWK set; others (HMAC, private, encryption) are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("the JWKS document has no 'keys' list")
    keys = []
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
            continue
        loader = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}.get(jwk.get("kty"))
        if loader is None:
            continue  # "oct" (HMAC) keys never verify access tokens
        try:
            key = loader.from_jwk(json.dumps(jwk))
        except (jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        keys.append(_Key(jwk.get("kid"), jwk.get("alg"), key))
    return keys


def _looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def claim_path(claims: dict, path: str):
    """C{claims["a"]["b"]} for C{"a.b"} (Keycloak's C{realm_access.roles}); None when absent."""
    value = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def groups_of(claims: dict, path: str) -> frozenset[str]:
    """Groups from a list of strings or a space-separated string; nothing else counts."""
    value = claim_path(claims, path)
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str) and v)
    return frozenset()


def _invalid(code: str, message: str) -> AuthError:
    return AuthError(code, message, 401)


@implementer(IAccessTokenVerifier)
class OidcVerifier:
    def __init__(self, settings: OidcSettings, clock, http=treq):
        self.settings = settings
        self._clock = clock
        self._http = http
        self._keys: list[_Key] | None = None
        self._last_attempt = float("-inf")
        self._failures = 0
        self._lock = DeferredLock()
        self._timer = None
        self._introspected: OrderedDict[str, tuple[float, object]] = OrderedDict()
        self._running = False

    # -- key set lifecycle

    def start(self) -> None:
        """Fetch the keys in the background; never fails start-up."""
        self._running = True
        self._schedule(0)

    def stop(self) -> None:
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float) -> None:
        if not self._running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._background_refresh)

    def _background_refresh(self) -> None:
        d = Deferred.fromCoroutine(self.refresh())
        d.addErrback(lambda f: _log.failure("refreshing the OIDC keys failed", f))

    async def refresh(self) -> bool:
        """Fetch discovery and keys once (serialised); return whether it worked."""
        await self._lock.acquire()
        try:
            self._last_attempt = self._clock.seconds()
            try:
                keys = await self._fetch_keys()
            except Exception as e:  # any failure of the provider: keep the old keys
                self._failures += 1
                _log.warn("cannot fetch the OIDC keys from {issuer}: {why}", issuer=self.settings.issuer,
                          why=str(e) or e.__class__.__name__)
                retry = min(MIN_REFRESH_SECONDS, 2.0 ** min(self._failures, 5))
                # Without keys, retry soon; with keys, they stay in use and we retry within a minute.
                self._schedule(retry if self._keys is None else min(60.0, self.settings.refresh_seconds))
                return False
            if self._keys is None or self._failures:
                _log.info("OIDC keys loaded from {issuer}: {count} signing keys",
                          issuer=self.settings.issuer, count=len(keys))
            self._keys, self._failures = keys, 0
            self._schedule(self.settings.refresh_seconds)
            return True
        finally:
            self._lock.release()

    async def _get_json(self, url: str, what: str):
        response = await self._http.get(url, timeout=self.settings.http_timeout_seconds,
                                        headers={"Accept": "application/json"})
        body = await self._http.content(response)
        if response.code != 200:
            raise RuntimeError(f"{what} answered HTTP {response.code}")
        try:
            return json.loads(body)
        except ValueError:
            raise RuntimeError(f"{what} is not JSON") from None

    async def _fetch_keys(self) -> list[_Key]:
        issuer = self.settings.issuer
        discovery = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration",
                                         "the discovery document")
        if not isinstance(discovery, dict):
            raise RuntimeError("the discovery document is not a JSON object")
        if discovery.get("issuer") != issuer:
            raise RuntimeError(f"the discovery document names issuer {str(discovery.get('issuer'))[:200]!r}, "
                               f"not {issuer!r}")
        jwks_uri = discovery.get("jwks_uri")
        schemes = ("https://",) if issuer.startswith("https://") else ("https://", "http://")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(schemes):
            raise RuntimeError("the discovery document has no usable jwks_uri (an https issuer needs an "
                               "https jwks_uri)")
        keys = parse_jwks(await self._get_json(jwks_uri, "the JWKS"))
        if not keys:
            raise RuntimeError("the JWKS has no usable public signing key")
        return keys

    def _unavailable(self) -> AuthError:
        """503 with Retry-After: when the next background retry is due."""
        now = self._clock.seconds()
        due = self._timer.getTime() if self._timer is not None and self._timer.active() else (
            self._last_attempt + MIN_REFRESH_SECONDS)
        wait = min(int(MIN_REFRESH_SECONDS), max(1, int(due - now + 0.999)))
        return AuthError("idp_unavailable",
                         "The identity provider's keys cannot be fetched right now; try again shortly.", 503,
                         retry_after=wait)

    async def _key_set(self, force: bool = False) -> list[_Key]:
        """
        The cached keys.  With none cached (or C{force}: an unknown kid), fetch
        now, unless a fetch is under way (then wait for it) or the last one was
        less than L{MIN_REFRESH_SECONDS} ago (a flood of forged kids cannot
        hammer the provider).
        """
        if self._keys is None or force:
            if self._lock.locked:
                await self._lock.acquire()
                self._lock.release()
            elif self._clock.seconds() - self._last_attempt >= MIN_REFRESH_SECONDS:
                await self.refresh()
        if self._keys is None:
            raise self._unavailable()
        return self._keys

    # -- verification

    async def verify(self, token: str) -> Principal:
        if not token:
            raise _invalid("missing_token", "Send an access token as Authorization: Bearer <token>.")
        if _looks_like_jwt(token):
            return await self._verify_jwt(token)
        if self.settings.introspection_url:
            return await self._introspect(token)
        raise _invalid("invalid_token", "The bearer token is not a JWT access token from the identity provider.")

    async def _verify_jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _invalid("invalid_token", "The access token is malformed.") from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise _invalid("unsupported_algorithm",
                           "The access token's signing algorithm is not accepted; the provider must sign "
                           f"with one of {', '.join(ALLOWED_ALGORITHMS)}.")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ALLOWED_TYPES):
            raise _invalid("invalid_token_type", "This is not an access token (its typ is neither at+jwt nor JWT).")
        kid = header.get("kid")
        key = self._find_key(await self._key_set(), kid, algorithm)
        if key is None and kid is not None:
            key = self._find_key(await self._key_set(force=True), kid, algorithm)
        if key is None and kid is None:
            raise _invalid("unknown_key", "The access token names no key (kid) and the provider publishes "
                                          "more than one that could fit; the provider must set kid.")
        if key is None:
            raise _invalid("unknown_key", "The access token was signed with a key the identity provider "
                                          "does not publish; get a new token.")
        s = self.settings
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=s.audience, issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={"require": ["exp", "iss", "aud"], "verify_sub": False, "verify_jti": False},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("token_expired", "The access token has expired; get a new one.") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("token_not_yet_valid", "The access token is not valid yet (nbf or iat is in the "
                                                  "future); check the clocks.") from None
        except jwt.InvalidAudienceError:
            raise _invalid("wrong_audience", f"The access token is not meant for this gateway (its aud "
                                             f"does not contain {s.audience!r}).") from None
        except jwt.InvalidIssuerError:
            raise _invalid("wrong_issuer", "The access token was issued by another identity provider.") from None
        except jwt.MissingRequiredClaimError as e:
            raise _invalid("missing_claim", f"The access token has no {e.claim!r} claim.") from None
        except jwt.InvalidSignatureError:
            raise _invalid("bad_signature", "The access token's signature does not verify.") from None
        except jwt.InvalidTokenError:
            raise _invalid("invalid_token", "The access token is malformed or not valid.") from None
        return self._principal(claims)

    @staticmethod
    def _find_key(keys: list[_Key], kid: str | None, algorithm: str):
        candidates = [k for k in keys if (kid is None or k.kid == kid)
                      and (k.alg is None or k.alg == algorithm) and _key_fits(algorithm, k.key)]
        if kid is None and len(candidates) != 1:
            return None  # without a kid, only an unambiguous key will do
        return candidates[0].key if candidates else None

    def _principal(self, claims: dict) -> Principal:
        subject = claim_path(claims, self.settings.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise _invalid("missing_claim",
                           f"The access token has no usable {self.settings.subject_claim!r} claim (a non-empty string).")
        return Principal(subject=subject, groups=groups_of(claims, self.settings.groups_claim))

    # -- RFC 7662 introspection of opaque tokens

    async def _introspect(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        now = self._clock.seconds()
        cached = self._introspected.get(digest)
        if cached is not None and cached[0] > now:
            self._introspected.move_to_end(digest)
            if isinstance(cached[1], AuthError):
                raise cached[1]
            return cached[1]
        s = self.settings
        try:
            # RFC 6749 2.3.1: client id and secret are form-encoded before HTTP Basic.
            response = await self._http.post(
                s.introspection_url, data={"token": token, "token_type_hint": "access_token"},
                auth=(quote_plus(s.client_id or ""), quote_plus(s.client_secret or "")),
                timeout=s.http_timeout_seconds, headers={"Accept": "application/json"})
            content = await self._http.content(response)
            if response.code != 200:
                raise RuntimeError(f"introspection answered HTTP {response.code}")
            body = json.loads(content)
            if not isinstance(body, dict):
                raise RuntimeError("introspection did not answer a JSON object")
        except Exception as e:
            _log.warn("token introspection failed: {why}", why=str(e) or e.__class__.__name__)
            raise AuthError("idp_unavailable", "The identity provider cannot check this token right now; "
                                               "try again shortly.", 503, retry_after=5) from None
        try:
            principal = self._judge(body, now)
        except AuthError as refusal:
            self._remember(digest, now + INACTIVE_CACHE_SECONDS, refusal)
            raise
        exp = body.get("exp")
        until = min(float(exp), now + s.refresh_seconds) if isinstance(exp, (int, float)) else now + 60
        self._remember(digest, until, principal)
        return principal

    def _remember(self, digest: str, until: float, result) -> None:
        """Cache an introspection result until C{until}, keeping the cache bounded (LRU)."""
        self._introspected[digest] = (until, result)
        self._introspected.move_to_end(digest)
        while len(self._introspected) > MAX_INTROSPECTION_CACHE:
            self._introspected.popitem(last=False)

    def _judge(self, body: dict, now: float) -> Principal:
        if body.get("active") is not True:
            raise _invalid("token_inactive", "The access token is not active (revoked, expired or unknown); "
                                             "get a new one.")
        exp = body.get("exp")
        if isinstance(exp, (int, float)) and exp <= now - self.settings.leeway_seconds:
            raise _invalid("token_expired", "The access token has expired; get a new one.")
        if "iss" in body and body["iss"] != self.settings.issuer:
            raise _invalid("wrong_issuer", "The access token was issued by another identity provider.")
        aud = body.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.settings.audience not in audiences:
            raise _invalid("wrong_audience", f"The access token is not meant for this gateway (its aud "
                                             f"does not contain {self.settings.audience!r}).")
        return self._principal(body)
