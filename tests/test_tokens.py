"""Unit tests for attach tokens (cloudshell_fog.auth.attach) and the development verifier (auth.dev)."""

from __future__ import annotations

import base64
import hashlib
import json

import jwt
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from cloudshell_fog.auth import AuthError, IAccessTokenVerifier, Principal
from cloudshell_fog.auth.attach import (
    ATTACH_AUDIENCE,
    ATTACH_TOKEN_SECONDS,
    AttachGrant,
    AttachTokens,
    looks_like_attach_token,
)
from cloudshell_fog.auth.dev import DevVerifier

NOW = 1_800_000_000
SECRET = b"k" * 32
OTHER_SECRET = b"o" * 32


def result_of(d: Deferred):
    """The result of an already-fired Deferred (a Failure if it failed)."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


@pytest.fixture
def clock() -> Clock:
    """A fake clock set to NOW."""
    c = Clock()
    c.advance(NOW)
    return c


@pytest.fixture
def tokens(clock) -> AttachTokens:
    """Attach tokens with SECRET and the fake clock."""
    return AttachTokens(SECRET, clock)


def claims(**changes) -> dict:
    """A complete, valid attach token claim set at NOW, with C{changes} (None deletes)."""
    base = {
        "sid": "s-1",
        "sub": "dev:0123456789abcdef",
        "aud": ATTACH_AUDIENCE,
        "iat": NOW,
        "exp": NOW + ATTACH_TOKEN_SECONDS,
        "jti": "jti-1",
        "mode": "rw",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWTs use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def expect_auth_error(tokens: AttachTokens, token, code: str) -> AuthError:
    """Verify C{token} and check that it is refused with C{code} and status 401."""
    with pytest.raises(AuthError) as info:
        tokens.verify(token)
    error = info.value
    assert error.code == code
    assert error.status == 401
    assert error.message and error.message.endswith(".")
    if token:
        assert token not in error.message
    return error


# ---------------------------------------------------------------- mint / verify


def test_mint_verify_round_trip(tokens):
    """A freshly minted token verifies to the session, subject, mode and expiry it was minted with."""
    token, expires_at = tokens.mint("s-1", "dev:0123456789abcdef")
    assert expires_at == NOW + 900
    grant = tokens.verify(token)
    assert isinstance(grant, AttachGrant)
    assert grant.session_id == "s-1"
    assert grant.subject == "dev:0123456789abcdef"
    assert grant.mode == "rw"
    assert grant.expires_at == NOW + 900
    assert isinstance(grant.jti, str) and len(grant.jti) >= 16


def test_minted_claims(tokens):
    """The token carries exactly the documented claims, HS256-signed."""
    token, _ = tokens.mint("s-1", "alice", mode="ro")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience=ATTACH_AUDIENCE, options={"verify_exp": False, "verify_iat": False})
    assert set(decoded) == {"sid", "sub", "aud", "iat", "exp", "jti", "mode"}
    assert decoded["aud"] == ATTACH_AUDIENCE
    assert decoded["iat"] == NOW
    assert decoded["exp"] == NOW + 900
    assert decoded["mode"] == "ro"
    assert tokens.verify(token).mode == "ro"


def test_each_mint_has_a_new_jti(tokens):
    """Two tokens for the same session differ in jti."""
    a, _ = tokens.mint("s-1", "alice")
    b, _ = tokens.mint("s-1", "alice")
    assert tokens.verify(a).jti != tokens.verify(b).jti


def test_mint_uses_injected_clock(clock, tokens):
    """Expiry follows the injected clock, not the wall clock."""
    clock.advance(100.7)
    _, expires_at = tokens.mint("s-1", "alice")
    assert expires_at == NOW + 100 + 900


def test_custom_lifetime(clock):
    """The lifetime argument sets the expiry."""
    token, expires_at = AttachTokens(SECRET, clock, lifetime=60).mint("s-1", "alice")
    assert expires_at == NOW + 60


@pytest.mark.parametrize(
    ("advance", "valid"),
    [
        (0, True),
        (899, True),
        (899.999, True),
        (900, False),
        (901, False),
        (86400, False),
    ],
)
def test_expiry(clock, tokens, advance, valid):
    """A token is valid for 900 seconds and expired from then on."""
    token, _ = tokens.mint("s-1", "alice")
    clock.advance(advance)
    if valid:
        assert tokens.verify(token).session_id == "s-1"
    else:
        expect_auth_error(tokens, token, "token_expired")


def test_other_secret_is_invalid(clock, tokens):
    """A token signed with another 32-byte secret is refused as invalid_token."""
    token, _ = AttachTokens(OTHER_SECRET, clock).mint("s-1", "alice")
    expect_auth_error(tokens, token, "invalid_token")


def test_tampered_payload_is_invalid(tokens):
    """Changing the payload without re-signing invalidates the token."""
    token, _ = tokens.mint("s-1", "alice")
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["sid"] = "s-2"
    forged = ".".join([header, b64url(json.dumps(body).encode()), signature])
    expect_auth_error(tokens, forged, "invalid_token")


def test_tampered_signature_is_invalid(tokens):
    """Changing the signature invalidates the token."""
    token, _ = tokens.mint("s-1", "alice")
    header, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    expect_auth_error(tokens, ".".join([header, payload, flipped]), "invalid_token")


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda: jwt.encode(claims(), None, algorithm="none"), id="alg-none"),
        pytest.param(
            lambda: jwt.encode(claims(), None, algorithm="none") + b64url(b"sig"), id="alg-none-with-signature"
        ),
        pytest.param(
            lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
            id="alg-hs512",
            marks=pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
        ),
        pytest.param(lambda: jwt.encode(claims(aud="cloudshell-fog:api"), SECRET, algorithm="HS256"), id="wrong-audience"),
        pytest.param(lambda: jwt.encode(claims(aud=None), SECRET, algorithm="HS256"), id="no-audience"),
        pytest.param(lambda: jwt.encode(claims(sid=None), SECRET, algorithm="HS256"), id="no-sid"),
        pytest.param(lambda: jwt.encode(claims(jti=None), SECRET, algorithm="HS256"), id="no-jti"),
        pytest.param(lambda: jwt.encode(claims(exp=None), SECRET, algorithm="HS256"), id="no-exp"),
        pytest.param(lambda: jwt.encode(claims(sid=5), SECRET, algorithm="HS256"), id="sid-not-string"),
        pytest.param(lambda: jwt.encode(claims(exp=str(NOW + 900)), SECRET, algorithm="HS256"), id="exp-string"),
        pytest.param(lambda: "not-a-jwt", id="garbage"),
        pytest.param(lambda: "a.b.c", id="three-garbage-parts"),
    ],
)
def test_invalid_tokens(tokens, make_token):
    """Tokens with a wrong algorithm, audience or claims are refused as invalid_token."""
    expect_auth_error(tokens, make_token(), "invalid_token")


def test_well_formed_foreign_token_accepted(tokens):
    """A token made by hand with the right secret and claims verifies (the format is the contract)."""
    grant = tokens.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert grant == AttachGrant("s-1", "dev:0123456789abcdef", "rw", "jti-1", NOW + 900)


def test_missing_mode_defaults_to_rw(tokens):
    """A token without a mode claim grants rw."""
    assert tokens.verify(jwt.encode(claims(mode=None), SECRET, algorithm="HS256")).mode == "rw"


@pytest.mark.parametrize("token", ["", None])
def test_missing_token(tokens, token):
    """An empty or absent token is refused as missing_token."""
    expect_auth_error(tokens, token, "missing_token")


@pytest.mark.parametrize("secret", [b"", b"x", b"x" * 31])
def test_short_secret_rejected(clock, secret):
    """A secret shorter than 32 bytes is a ValueError."""
    with pytest.raises(ValueError):
        AttachTokens(secret, clock)


def test_32_byte_secret_accepted(clock):
    """A secret of exactly 32 bytes is enough."""
    AttachTokens(b"x" * 32, clock)


# ---------------------------------------------------------------- looks_like_attach_token


@pytest.mark.parametrize(
    ("make_token", "expected"),
    [
        pytest.param(lambda t: t.mint("s-1", "alice")[0], True, id="minted"),
        pytest.param(lambda t: AttachTokens(OTHER_SECRET, Clock()).mint("s", "a")[0], True, id="wrong-signature"),
        pytest.param(lambda t: jwt.encode(claims(exp=1), OTHER_SECRET, algorithm="HS256"), True, id="expired"),
        pytest.param(lambda t: jwt.encode(claims(), None, algorithm="none"), True, id="alg-none"),
        pytest.param(
            lambda t: jwt.encode(claims(aud=["api", ATTACH_AUDIENCE]), SECRET, algorithm="HS256"),
            True,
            id="audience-list",
        ),
        pytest.param(lambda t: "", False, id="empty"),
        pytest.param(lambda t: "random-string", False, id="random-string"),
        pytest.param(lambda t: "a.b.c", False, id="three-parts"),
        pytest.param(lambda t: b64url(b"x" * 40), False, id="random-base64"),
        pytest.param(lambda t: jwt.encode({"sub": "x"}, SECRET, algorithm="HS256"), False, id="jwt-no-aud"),
        pytest.param(
            lambda t: jwt.encode({"sub": "x", "aud": "cloudshell-fog:api"}, SECRET, algorithm="HS256"),
            False,
            id="jwt-other-aud",
        ),
        pytest.param(
            lambda t: jwt.encode({"sub": "x", "aud": ["a", "b"]}, SECRET, algorithm="HS256"),
            False,
            id="jwt-other-aud-list",
        ),
    ],
)
def test_looks_like_attach_token(tokens, make_token, expected):
    """Only tokens whose audience is the attach audience look like attach tokens, whatever the signature."""
    assert looks_like_attach_token(make_token(tokens)) is expected


# ---------------------------------------------------------------- DevVerifier


def test_dev_verifier_provides_interface():
    """DevVerifier implements IAccessTokenVerifier."""
    assert IAccessTokenVerifier.providedBy(DevVerifier())


@pytest.mark.parametrize("token", ["dev-token", "another token", "\u00e9t\u00e9", "x" * 1000])
def test_dev_verifier_subject(token):
    """The subject is dev: plus the first 16 hex of sha256(token)."""
    principal = result_of(DevVerifier().verify(token))
    assert isinstance(principal, Principal)
    assert principal.subject == "dev:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
    assert len(principal.subject) == len("dev:") + 16


def test_dev_verifier_stable_and_distinct():
    """The same token gives the same subject; different tokens give different subjects."""
    verifier = DevVerifier()
    a1 = result_of(verifier.verify("alice"))
    a2 = result_of(verifier.verify("alice"))
    b = result_of(verifier.verify("bob"))
    assert a1.subject == a2.subject
    assert a1.subject != b.subject


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ((), frozenset()),
        (("staff",), frozenset({"staff"})),
        (("staff", "ops", "staff"), frozenset({"staff", "ops"})),
    ],
)
def test_dev_verifier_groups(groups, expected):
    """Every principal has the groups given to the constructor."""
    principal = result_of(DevVerifier(groups).verify("t"))
    assert principal.groups == expected
    assert isinstance(principal.groups, frozenset)


def test_dev_verifier_missing_token():
    """An empty token fails the Deferred with AuthError missing_token."""
    result = result_of(DevVerifier().verify(""))
    assert isinstance(result, Failure)
    assert result.check(AuthError)
    assert result.value.code == "missing_token"
    assert result.value.status == 401


def test_dev_verifier_surrogate_token():
    """A token with an unpaired surrogate (undecodable bytes from a header) still gets a subject."""
    principal = result_of(DevVerifier().verify("bad\udcffbyte"))
    assert principal.subject.startswith("dev:")
