"""
Real OIDC end to end: an issuer served over HTTP on loopback by a small
twisted.web site (discovery, JWKS, introspection), keys made here, tokens
signed with them, and the gateway verifying them.
"""

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from support import SECRET, Gateway, in_thread

AUDIENCE = "cloudshell"
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Issuer(Resource):
    """A standards-shaped provider: discovery, JWKS and RFC 7662 introspection."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.down = False
        self.keys = {"rsa-1": _RSA, "ec-1": _EC}  # kid -> private key
        self.active_tokens: dict[str, dict] = {}
        self.jwks_fetches = 0
        self.port = reactor.listenTCP(0, Site(self), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/realms/test"

    def jwk(self, kid, key) -> dict:
        loader = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
        body = loader.to_jwk(key.public_key(), as_dict=True)
        body.update(kid=kid, use="sig")
        return body

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        if self.down:
            request.setResponseCode(503)
            return b'{"error":"down"}'
        path = request.path.decode()
        if path == "/realms/test/.well-known/openid-configuration":
            body = {"issuer": self.url, "jwks_uri": self.url + "/certs",
                    "introspection_endpoint": self.url + "/introspect"}
        elif path == "/realms/test/certs":
            self.jwks_fetches += 1
            body = {"keys": [self.jwk(kid, key) for kid, key in self.keys.items()]
                    + [{"kty": "oct", "kid": "hmac", "k": _b64(b"x" * 32)}]}
        elif path == "/realms/test/introspect" and request.method == b"POST":
            expected = "Basic " + base64.b64encode(b"gateway:client-secret").decode()
            if request.getHeader(b"authorization") != expected.encode():
                request.setResponseCode(401)
                return b'{"error":"invalid_client"}'
            token = request.args.get(b"token", [b""])[0].decode()
            body = self.active_tokens.get(token, {"active": False})
        else:
            request.setResponseCode(404)
            return b"{}"
        return json.dumps(body).encode()

    def token(self, kid="rsa-1", algorithm=None, key=None, headers=None, **claims) -> str:
        now = int(time.time())
        payload = {"iss": self.url, "aud": AUDIENCE, "sub": "alice@example", "iat": now, "exp": now + 300,
                   "groups": ["users"]}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        key = key or self.keys[kid]
        algorithm = algorithm or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(payload, key, algorithm=algorithm,
                          headers={"kid": kid, "typ": "at+jwt", **(headers or {})})


@pytest_twisted.async_yield_fixture
async def issuer():
    idp = Issuer()
    try:
        yield idp
    finally:
        await idp.port.stopListening()


def oidc_env(idp, **extra) -> dict:
    return {"OIDC_ISSUER_URL": idp.url, "OIDC_AUDIENCE": AUDIENCE, **extra}


@pytest_twisted.async_yield_fixture
async def oidc_gateway(tmp_path, issuer):
    gw = Gateway(tmp_path, env=oidc_env(issuer))
    gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def assert_refused(gw, token, code, status=401):
    response = await gw.request("GET", "/v1/sessions", token=token)
    assert response.status == status, response
    assert response.json["error"]["code"] == code
    if status == 401:
        challenge = response.header("WWW-Authenticate")
        assert challenge.startswith('Bearer realm="cloudshell-fog", error="invalid_token", error_description="')
    return response


@pytest_twisted.ensureDeferred
async def test_rs256_token_creates_attaches_and_echoes(oidc_gateway, issuer):
    """The whole flow with a real signed RS256 token: create, attach, echo, exit."""
    token = issuer.token()
    created = await oidc_gateway.create(token=token)
    ws = await oidc_gateway.attach(created)
    await in_thread(ws.type, "echo oidc-$((20+1)); exit 5\n")
    assert await in_thread(ws.wait_exit) == (5, 1000)
    listed = await oidc_gateway.request("GET", "/v1/sessions", token=token)
    assert [s["session_id"] for s in listed.json["sessions"]] == [created["session_id"]]
    audit = oidc_gateway.audit_events()
    assert audit[0]["subject"] == "alice@example"
    assert token not in oidc_gateway.audit_path.read_text()


@pytest_twisted.ensureDeferred
async def test_es256_token_is_accepted(oidc_gateway, issuer):
    """An ES256 token signed by the provider's EC key is accepted."""
    response = await oidc_gateway.request("GET", "/v1/sessions", token=issuer.token(kid="ec-1"))
    assert response.status == 200


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda i: i.token(exp=int(time.time()) - 600), "token_expired"),
        (lambda i: i.token(nbf=int(time.time()) + 600), "token_not_yet_valid"),
        (lambda i: i.token(iss="https://evil.example/realms/test"), "wrong_issuer"),
        (lambda i: i.token(aud="another-service"), "wrong_audience"),
        (lambda i: i.token(aud=["another-service", "third"]), "wrong_audience"),
        (lambda i: i.token(exp=None), "missing_claim"),
        (lambda i: i.token(sub=None), "missing_claim"),
        (lambda i: i.token(key=_RSA_OTHER), "bad_signature"),  # another key under the same kid
        (lambda i: i.token(kid="ec-1", key=_RSA), "unknown_key"),  # RS256 naming the EC key: types differ
        (lambda i: i.token(headers={"typ": "id+jwt"}), "invalid_token_type"),
        (lambda i: jwt.encode({"iss": i.url, "aud": AUDIENCE, "sub": "a", "exp": int(time.time()) + 60},
                              None, algorithm="none"), "unsupported_algorithm"),
        (lambda i: _tampered(i.token()), "bad_signature"),
        (lambda i: _hs256_with_public_key(i), "unsupported_algorithm"),
        (lambda i: jwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256", headers={"kid": "hmac"}),
         "unsupported_algorithm"),
        (lambda i: "any-development-token", "invalid_token"),
        (lambda i: "a.b.c", "invalid_token"),
    ],
    ids=["expired", "nbf-future", "wrong-iss", "wrong-aud", "wrong-aud-list", "no-exp", "no-sub",
         "other-key-same-kid", "key-type-mismatch", "typ-id-token", "alg-none", "tampered",
         "hs256-rsa-public-key", "hs256-jwks-oct-key", "dev-token", "garbage-jwt"],
)
@pytest_twisted.ensureDeferred
async def test_forged_expired_and_misaddressed_tokens_are_401(oidc_gateway, issuer, make, code):
    """Every bad token is refused with 401, its reason, and an RFC 6750 challenge."""
    await assert_refused(oidc_gateway, make(issuer), code)


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "root@example"
    return ".".join([header, _b64(json.dumps(claims).encode()), signature])


def _hs256_with_public_key(idp) -> str:
    """Algorithm confusion: HS256 keyed with the provider's RSA public key, which anyone has."""
    pem = _RSA.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"iss": idp.url, "aud": AUDIENCE, "sub": "mallory",
                               "exp": int(time.time()) + 60}).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


@pytest_twisted.ensureDeferred
async def test_unknown_kid_refreshes_at_most_every_30_seconds(oidc_gateway, issuer):
    """A new kid is refused until the provider publishes it; refreshes for unknown kids are rate limited."""
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = issuer.token(kid="rsa-2", key=new_key)
    assert (await oidc_gateway.request("GET", "/v1/sessions", token=issuer.token())).status == 200
    fetches = issuer.jwks_fetches
    await assert_refused(oidc_gateway, token, "unknown_key")
    assert issuer.jwks_fetches == fetches  # the first fetch was just now: no refresh yet
    issuer.keys["rsa-2"] = new_key  # the provider rotates the key in
    for _ in range(20):  # a flood of forged kids within 30 s makes no fetch
        await assert_refused(oidc_gateway, issuer.token(kid="forged", key=new_key), "unknown_key")
    assert issuer.jwks_fetches == fetches
    oidc_gateway.clock.advance(30)
    assert (await oidc_gateway.request("GET", "/v1/sessions", token=token)).status == 200
    assert issuer.jwks_fetches == fetches + 1


@pytest_twisted.ensureDeferred
async def test_groups_decide_policy(tmp_path, issuer):
    """Missing groups are denied by policy (403); a nested groups claim admits."""
    gw = Gateway(tmp_path, env=oidc_env(issuer, OIDC_GROUPS_CLAIM="realm_access.roles"))
    gw.start()
    try:
        body = {"profile": "admins", "ttl_seconds": 60}
        denied = await gw.request("POST", "/v1/sessions", body, token=issuer.token(groups=["admins"]))
        assert (denied.status, denied.json["error"]["rule_id"]) == (403, "profile.allowed_groups")
        nested = issuer.token(realm_access={"roles": ["admins", "users"]})
        created = await gw.request("POST", "/v1/sessions", body, token=nested)
        assert created.status == 201, created
        spaced = issuer.token(realm_access={"roles": "users admins"})
        profiles = await gw.request("GET", "/v1/profiles", token=spaced)
        assert "admins" in [p["name"] for p in profiles.json["profiles"]]
        await gw.request("DELETE", f"/v1/sessions/{created.json['session_id']}", token=nested)
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_provider_down_at_start_then_recovers(oidc_gateway, issuer):
    """While the keys cannot be fetched: 503 idp_unavailable with Retry-After; then it recovers by itself."""
    issuer.down = True
    oidc_gateway.parts.verifier.start()
    oidc_gateway.clock.advance(0)  # the start-up fetch fails
    response = await assert_refused(oidc_gateway, issuer.token(), "idp_unavailable", status=503)
    assert 1 <= int(response.header("Retry-After")) <= 30
    issuer.down = False
    oidc_gateway.clock.advance(30)  # the background retry
    created = await oidc_gateway.create(token=issuer.token())
    await oidc_gateway.request("DELETE", f"/v1/sessions/{created['session_id']}", token=issuer.token())
    oidc_gateway.parts.verifier.stop()


@pytest_twisted.ensureDeferred
async def test_opaque_tokens_are_introspected_and_cached(tmp_path, issuer):
    """Opaque tokens: active ones pass, inactive and expired ones are 401; results are cached."""
    gw = Gateway(tmp_path, env=oidc_env(issuer, OIDC_INTROSPECTION_URL=issuer.url + "/introspect",
                                        OIDC_CLIENT_ID="gateway", OIDC_CLIENT_SECRET="client-secret"))
    gw.start()
    now = int(time.time())
    issuer.active_tokens = {
        "opaque-ok": {"active": True, "aud": [AUDIENCE], "sub": "bob", "exp": now + 300, "groups": "admins"},
        "opaque-expired": {"active": True, "aud": AUDIENCE, "sub": "bob", "exp": now - 600},
        "opaque-elsewhere": {"active": True, "aud": "other", "sub": "bob", "exp": now + 300},
    }
    try:
        response = await gw.request("POST", "/v1/sessions", {"profile": "admins", "ttl_seconds": 60},
                                    token="opaque-ok")
        assert response.status == 201, response
        await assert_refused(gw, "opaque-unknown", "token_inactive")
        await assert_refused(gw, "opaque-expired", "token_expired")
        await assert_refused(gw, "opaque-elsewhere", "wrong_audience")
        issuer.active_tokens["opaque-ok"] = {"active": False}  # revoked, but still cached
        assert (await gw.request("GET", "/v1/sessions", token="opaque-ok")).status == 200
        gw.clock.advance(301)  # the cache ends at the token's exp
        await assert_refused(gw, "opaque-ok", "token_inactive")
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_production_pins_images_and_refuses_dev_tokens(tmp_path, issuer):
    """Production: development tokens are refused, tag-only images are 403, pinned ones are admitted."""
    gw = Gateway(tmp_path, env=oidc_env(issuer, CLOUDSHELL_ENV="production", SESSION_TOKEN_SECRET=SECRET))
    gw.start()
    try:
        await assert_refused(gw, "dev-token", "invalid_token")
        token = issuer.token()
        body = {"profile": "default", "ttl_seconds": 60, "image_ref": "ghcr.io/acme/shell:latest"}
        denied = await gw.request("POST", "/v1/sessions", body, token=token)
        assert (denied.status, denied.json["error"]["rule_id"]) == (403, "images.require_digest")
        body["image_ref"] = "ghcr.io/acme/shell@sha256:" + "a" * 64
        admitted = await gw.request("POST", "/v1/sessions", body, token=token)
        # Admitted by policy; these local nodes run no images, so no node can keep that promise.
        assert (admitted.status, admitted.json["error"]["code"]) == (500, "no_capacity")
        assert "container nodes" in admitted.json["error"]["message"]
        del body["image_ref"]
        created = await gw.request("POST", "/v1/sessions", body, token=token)
        assert created.status == 201, created
        await gw.request("DELETE", f"/v1/sessions/{created.json['session_id']}", token=token)
    finally:
        await gw.stop()


@pytest.mark.parametrize(
    "claims, path, groups",
    [
        ({"groups": ["a", "b"]}, "groups", {"a", "b"}),
        ({"groups": "a b  c"}, "groups", {"a", "b", "c"}),
        ({"realm_access": {"roles": ["x"]}}, "realm_access.roles", {"x"}),
        ({"realm_access": ["x"]}, "realm_access.roles", set()),
        ({"groups": [1, None, "ok", ""]}, "groups", {"ok"}),
        ({"groups": {"a": 1}}, "groups", set()),
        ({}, "groups", set()),
    ],
)
def test_groups_claim_shapes(claims, path, groups):
    """Groups come from a list or a space-separated string at a dotted path; anything else is none."""
    from cloudshell_fog.auth.oidc import groups_of

    assert groups_of(claims, path) == frozenset(groups)


def test_jwks_parsing_keeps_only_public_signing_keys():
    """HMAC, private, encryption and malformed keys in a JWKS are never used to verify."""
    from cloudshell_fog.auth.oidc import parse_jwks

    public = RSAAlgorithm.to_jwk(_RSA.public_key(), as_dict=True)
    private = RSAAlgorithm.to_jwk(_RSA, as_dict=True)
    keys = parse_jwks({"keys": [
        {**public, "kid": "good"},
        {**private, "kid": "private"},
        {**public, "kid": "enc", "use": "enc"},
        {"kty": "oct", "kid": "hmac", "k": _b64(b"x" * 32)},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a key",
    ]})
    assert [k.kid for k in keys] == ["good"]
    with pytest.raises(ValueError):
        parse_jwks({"no": "keys"})
