"""
The REST API: a plain twisted.web resource tree, every route visible in
L{Root}, L{V1}, L{SessionsRoute} and L{SessionRoute}.

Order of checks on a protected route: authentication (401) first, whatever
else is wrong; then the method (405); then the body (413, 415, 400); then the
handler.  Every error answers with the JSON body
C{{"error": {"code", "message"[, "rule_id"]}}}.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cloudshell_fog.auth import AuthError, Principal
from cloudshell_fog.auth.attach import looks_like_attach_token
from cloudshell_fog.config import Config
from cloudshell_fog.errors import ApiError, not_found
from cloudshell_fog.images import ImageRefError, parse_image_ref
from cloudshell_fog.metrics import Metrics
from cloudshell_fog.policy import SessionRequest, may_use
from cloudshell_fog.web.pty import AttachFactory

MAX_BODY_BYTES = 64 * 1024
NOT_FOUND_MESSAGE = "There is nothing at this path; see docs/api.md for the routes."
_log = Logger()


def header(request, name: bytes) -> str | None:
    """A request header as text (HTTP headers are Latin-1), or None."""
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


# Statuses Twisted has no phrase for ("429 Unknown Status" otherwise).
REASON_PHRASES = {429: b"Too Many Requests", 431: b"Request Header Fields Too Large"}


class Document:
    """A handler's non-JSON answer: bytes and their media type."""

    def __init__(self, content: bytes, media_type: bytes):
        self.content, self.media_type = content, media_type


def write_document(request, status: int, document: Document, headers: dict[str, str] | None = None) -> None:
    if request.finished or request._disconnected:
        return
    request.setResponseCode(status, REASON_PHRASES.get(status))
    request.setHeader(b"content-type", document.media_type)
    request.setHeader(b"content-length", str(len(document.content)).encode())
    for name, value in (headers or {}).items():
        request.setHeader(name.encode(), value.encode())
    if request.method != b"HEAD":
        request.write(document.content)
    request.finish()


def write_json(request, status: int, body, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    write_document(request, status, Document(data, b"application/json"), {"Cache-Control": "no-store", **(headers or {})})


def bearer_challenge(error: ApiError) -> str:
    """RFC 6750: no error code when no credentials came; else invalid_token and a description."""
    if error.code == "missing_token":
        return 'Bearer realm="cloudshell-fog"'
    description = "".join(c for c in error.message if " " <= c <= "~" and c not in '"\\')
    return f'Bearer realm="cloudshell-fog", error="invalid_token", error_description="{description}"'


def write_error(request, error: ApiError) -> None:
    headers = dict(error.headers)
    if error.status == 401:
        headers.setdefault("WWW-Authenticate", bearer_challenge(error))
    write_json(request, error.status, error.body(), headers)


class Route(Resource):
    """
    A route.  C{http_methods} names the methods it serves, each handled by
    the async method of the same name in lower case,
    C{(request, principal) -> (status, body)}.  Its children are declared in
    the route table at the end of this module (C{routes}: fixed segments;
    C{parameter}: the route for any other segment); anything else is a JSON 404.
    """

    protected = True
    http_methods: tuple[str, ...] = ()
    routes: dict = {}
    parameter = None

    def __init__(self, api: "Api"):
        super().__init__()
        self.api = api
        self.methods = {m.encode(): getattr(self, m.lower()) for m in self.http_methods}

    @classmethod
    def at(cls, parent: "Route", name: bytes, request):
        """The route for segment C{name} below C{parent}."""
        return cls(parent.api)

    def child(self, name: bytes, request):
        route = self.routes.get(name) or self.parameter
        return route.at(self, name, request) if route is not None else None

    def getChild(self, name, request):
        found = self.child(name, request)
        return found if found is not None else NotFound(self.api, self.protected)

    def render(self, request):
        d = Deferred.fromCoroutine(self._handle(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return NOT_DONE_YET

    async def _handle(self, request):
        try:
            principal = await self.api.authenticate(request) if self.protected else None
            if not self.methods:
                raise ApiError(404, "not_found", NOT_FOUND_MESSAGE)
            handler = self.methods.get(request.method)
            if handler is None and request.method == b"HEAD":
                handler = self.methods.get(b"GET")
            if handler is None:
                allowed = ", ".join(sorted(m.decode() for m in self.methods))
                raise ApiError(
                    405,
                    "method_not_allowed",
                    f"{request.method.decode('ascii', 'replace')} is not allowed here; use {allowed}.",
                    headers={"Allow": allowed},
                )
            status, body, *extra = await handler(request, principal)
            headers = extra[0] if extra else None
            if isinstance(body, Document):
                write_document(request, status, body, headers)
            else:
                write_json(request, status, body, headers)
        except ApiError as e:
            write_error(request, e)
        except CancelledError:
            pass  # the client went away
        except Exception:
            _log.failure("unexpected error answering {method} {path}",
                         method=request.method, path=request.path)
            write_error(request, ApiError(500, "internal_error",
                                          "The gateway hit an unexpected error; the gateway log has details."))


class NotFound(Route):
    """Every path below an unknown one: a JSON 404 (after authentication when protected)."""

    def __init__(self, api, protected: bool):
        super().__init__(api)
        self.protected = protected

    def getChild(self, name, request):
        return self


class ErrorPage(Resource):
    """A refusal answered before any handler runs (WebSocket upgrade checks)."""

    isLeaf = True

    def __init__(self, error: ApiError):
        super().__init__()
        self.error = error

    def render(self, request):
        write_error(request, self.error)
        return NOT_DONE_YET


# ---------------------------------------------------------------- routes


class Root(Route):
    protected = False


class Health(Route):
    protected = False
    http_methods = ("GET",)

    async def get(self, request, principal):
        return 200, {"status": "ok"}


OPENAPI_PATH = Path(__file__).parent / "openapi.yaml"
STATIC_DIR = Path(__file__).parent / "static"
# The browser terminal loads only its own files and talks only to this gateway.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "font-src 'self'; connect-src 'self' ws: wss:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_MEDIA_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
                ".css": b"text/css; charset=utf-8", ".png": b"image/png", ".svg": b"image/svg+xml",
                ".txt": b"text/plain; charset=utf-8", ".map": b"application/json", ".ico": b"image/x-icon",
                ".woff2": b"font/woff2"}


class OpenApiRoute(Route):
    """GET /v1/openapi.yaml: this API as OpenAPI 3.1 (no authentication)."""

    protected = False
    http_methods = ("GET",)

    async def get(self, request, principal):
        return 200, Document(OPENAPI_PATH.read_bytes(), b"application/yaml; charset=utf-8")


class ReadyRoute(Route):
    """GET /readyz: 200 when the store answers and a node is healthy; 503 naming what fails."""

    protected = False
    http_methods = ("GET",)

    async def get(self, request, principal):
        checks = {"store": "ok" if self.api.sessions.ping() else "the session store does not answer",
                  "nodes": "ok" if any(s.healthy for s in self.api.nodes.states()) else "no node is healthy"}
        ready = all(v == "ok" for v in checks.values())
        return (200 if ready else 503), {"status": "ready" if ready else "not_ready", "checks": checks}


class MetricsRoute:
    """GET /metrics: Prometheus text, unless metrics have a listener of their own (METRICS_LISTEN_ADDR)."""

    http_methods = ("GET",)
    protected = False

    @classmethod
    def at(cls, parent, name, request):
        if parent.api.config.metrics_listen or request.postpath:
            return None
        return metrics_resource(parent.api.metrics)


def metrics_resource(metrics):
    """prometheus_client's Twisted resource for our registry."""
    from prometheus_client.twisted import MetricsResource

    return MetricsResource(registry=metrics.registry)


class PageRoute(Route):
    """GET /: the browser terminal (no authentication: the page asks for a token itself)."""

    protected = False
    http_methods = ("GET",)

    async def get(self, request, principal):
        return 200, Document((STATIC_DIR / "index.html").read_bytes(), _MEDIA_TYPES[".html"]), PAGE_HEADERS


class StaticRoute(Route):
    """GET /static/<file>: the page's own files, from the package; nothing outside that folder."""

    protected = False
    http_methods = ("GET",)
    rest_parameter = "path"  # it takes every segment after /static

    def __init__(self, api, path: Path | None = None):
        super().__init__(api)
        self.path = path

    @classmethod
    def at(cls, parent, name, request):
        parts = list(request.postpath)  # the segments after /static
        request.prepath += parts
        request.postpath = []
        if not parts or not all(p and p not in (b".", b"..") and p.isascii() and b"\\" not in p for p in parts):
            return cls(parent.api, None)
        return cls(parent.api, STATIC_DIR.joinpath(*(p.decode() for p in parts)))

    async def get(self, request, principal):
        path = self.path
        if path is None or path.suffix not in _MEDIA_TYPES or not path.is_file() or \
                STATIC_DIR.resolve() not in path.resolve().parents:
            raise ApiError(404, "not_found", NOT_FOUND_MESSAGE)
        return 200, Document(path.read_bytes(), _MEDIA_TYPES[path.suffix]), {
            "X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"}


class V1(Route):
    pass


class AdminRoute(Route):
    pass


class ReloadRoute(Route):
    """POST /v1/admin/reload: reload policy.yaml and nodes.yaml (members of ADMIN_GROUPS only)."""

    http_methods = ("POST",)

    async def post(self, request, principal):
        if not principal.groups & set(self.api.config.admin_groups):
            raise ApiError(403, "policy_denied", "Reloading the configuration is for administrators "
                                                 f"(groups: {', '.join(self.api.config.admin_groups)}).",
                           rule_id="admin.groups")
        ok, message = self.api.reloader.reload(who=principal.subject)
        if not ok:
            raise ApiError(400, "config_invalid", f"The new configuration was refused, the old one stays: {message}")
        return 200, {"reloaded": True, "message": message}


class ProfilesRoute(Route):
    http_methods = ("GET",)

    async def get(self, request, principal):
        profiles = [
            {
                "name": p.name,
                "max_ttl_seconds": p.max_ttl_seconds,
                "idle_timeout_seconds": p.idle_timeout_seconds,
                "cpu": p.cpu,
                "memory_mb": p.memory_mb,
            }
            for p in self.api.sessions.policy.profiles.values()
            if may_use(principal, p)
        ]
        return 200, {"profiles": profiles}


class NodesRoute(Route):
    http_methods = ("GET",)

    async def get(self, request, principal):
        return 200, {"nodes": [state.describe() for state in self.api.nodes.states()]}


class SessionsRoute(Route):
    http_methods = ("GET", "POST")

    async def post(self, request, principal):
        body = read_json_object(request)
        session_request = parse_session_request(body)
        session, grant = await self.api.sessions.create(principal, session_request)
        return 201, {
            "session_id": session.id,
            "attach": {"ws_url": self.api.ws_url(request, session.id), **grant},
            "placement": session.placement,
        }

    async def get(self, request, principal):
        limit = _query(request, b"limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 200:
            raise ApiError(400, "invalid_limit", "limit must be an integer from 1 to 200.")
        cursor = request.args.get(b"cursor", [None])[0]
        cursor = cursor.decode("utf-8", "replace") if cursor is not None else None
        page, next_cursor = self.api.sessions.list(principal, int(limit), cursor)
        return 200, {"sessions": [s.describe() for s in page], "next_cursor": next_cursor}


class SessionRoute(Route):
    http_methods = ("DELETE", "GET")

    def __init__(self, api, session_id: str | None):
        super().__init__(api)
        self.session_id = session_id

    @classmethod
    def at(cls, parent, name, request):
        return cls(parent.api, _canonical_uuid(name.decode("utf-8", "replace")))

    async def get(self, request, principal):
        return 200, self.api.sessions.get(principal, _require_id(self.session_id)).describe()

    async def delete(self, request, principal):
        await self.api.sessions.delete(principal, _require_id(self.session_id))
        return 200, {"terminated": True}


class AttachRoute(Route):
    http_methods = ("POST",)

    def __init__(self, api, session_id: str | None):
        super().__init__(api)
        self.session_id = session_id

    @classmethod
    def at(cls, parent, name, request):
        return cls(parent.api, parent.session_id)

    async def post(self, request, principal):
        session, grant = self.api.sessions.mint_attach(principal, _require_id(self.session_id))
        return 200, {"session_id": session.id,
                     "attach": {"ws_url": self.api.ws_url(request, session.id), **grant}}


class PtyRoute:
    """The WebSocket attach: checked here, then handed to autobahn (see L{Api.pty_resource})."""

    http_methods = ("GET",)
    protected = False  # the attach token in the query authenticates, not a bearer token

    @classmethod
    def at(cls, parent, name, request):
        return parent.api.pty_resource(request, parent.session_id) if not request.postpath else None


# ---------------------------------------------------------------- the route table

Root.routes = {b"": PageRoute, b"healthz": Health, b"readyz": ReadyRoute, b"metrics": MetricsRoute,
               b"v1": V1, b"static": StaticRoute}
V1.routes = {b"openapi.yaml": OpenApiRoute, b"sessions": SessionsRoute, b"profiles": ProfilesRoute,
               b"nodes": NodesRoute, b"admin": AdminRoute}
AdminRoute.routes = {b"reload": ReloadRoute}
SessionsRoute.parameter = SessionRoute  # /v1/sessions/{session_id}
SessionRoute.routes = {b"attach": AttachRoute, b"pty": PtyRoute}


def requires_bearer(target: bytes) -> bool:
    """Whether the route a request target leads to asks for a bearer token (an unknown path: as its parent)."""
    route = Root
    for segment in target.split(b"?", 1)[0].strip(b"/").split(b"/"):
        found = getattr(route, "routes", {}).get(segment) or getattr(route, "parameter", None)
        if found is None:
            break
        route = found
    return route.protected


# ---------------------------------------------------------------- request parsing


def _query(request, name: bytes, default: str) -> str:
    return request.args.get(name, [default.encode()])[0].decode("utf-8", "replace")


def _require_id(session_id: str | None) -> str:
    if session_id is None:
        raise not_found()
    return session_id


def _canonical_uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def read_json_object(request) -> dict:
    """The request body as a JSON object: 415 for another media type, 400 when it is not one."""
    content_type = header(request, b"content-type")
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, "unsupported_media_type", "Send the body as JSON with Content-Type: application/json.")
    request.content.seek(0)
    raw = request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"The request body is over {MAX_BODY_BYTES // 1024} KiB.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "The request body must be a JSON object.")
    return body


def _field_error(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_field", f"{name} {problem}.")


def parse_session_request(body: dict) -> SessionRequest:
    profile = body.get("profile")
    if profile is None:
        raise _field_error("profile", "is required (a profile name from GET /v1/profiles)")
    if not isinstance(profile, str) or not profile:
        raise _field_error("profile", "must be a non-empty string")
    ttl = body.get("ttl_seconds")
    if ttl is None:
        raise _field_error("ttl_seconds", "is required (an integer number of seconds)")
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise _field_error("ttl_seconds", "must be an integer number of seconds")
    if ttl < 1:
        raise _field_error("ttl_seconds", "must be at least 1")
    hint = body.get("placement_hint")
    if hint is not None and (not isinstance(hint, str) or not 0 < len(hint) <= 253):
        raise _field_error("placement_hint", "must be a region or node id (a string of 1 to 253 characters)")
    image_ref = body.get("image_ref")
    if image_ref is not None:
        if not isinstance(image_ref, str):
            raise _field_error("image_ref", "must be a string")
        try:
            parse_image_ref(image_ref)
        except ImageRefError as e:
            raise ApiError(400, "invalid_image_ref", str(e) + ".") from None
    return SessionRequest(profile=profile, ttl_seconds=ttl, placement_hint=hint or None, image_ref=image_ref)


# ---------------------------------------------------------------- the API object


class Api:
    """What the routes share: configuration, the verifier, sessions, tokens."""

    def __init__(self, config: Config, verifier, sessions, tokens, audit, ws_factory, nodes, metrics=None,
                 reloader=None):
        self.config = config
        self.reloader = reloader
        self.nodes = nodes
        self.metrics = metrics or Metrics()
        self.verifier = verifier
        self.sessions = sessions
        self.tokens = tokens
        self.audit = audit
        self.ws_factory = ws_factory

    async def authenticate(self, request) -> Principal:
        authorization = header(request, b"authorization")
        if authorization is None:
            raise ApiError(401, "missing_token", "Send an access token as Authorization: Bearer <token>.")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "invalid_token", "The Authorization header must be 'Bearer <token>'.")
        if looks_like_attach_token(token):
            self.metrics.token_failures.labels("attach_token_not_accepted").inc()
            raise ApiError(
                401,
                "attach_token_not_accepted",
                "Attach tokens cannot create sessions or call the API; use your access token.",
            )
        try:
            return await self.verifier.verify(token)
        except AuthError as e:
            self.metrics.token_failures.labels(e.code).inc()
            raise ApiError(e.status, e.code, e.message,
                           headers={"Retry-After": str(e.retry_after)} if e.retry_after else None) from None

    def base_url(self, request) -> tuple[str, str]:
        """C{(scheme, authority + path prefix)} of this gateway as the client reached it."""
        if self.config.public_url:
            parts = urlsplit(self.config.public_url)
            return parts.scheme, parts.netloc + parts.path.rstrip("/")
        host = (header(request, b"host") or "localhost").strip()
        return ("https" if request.isSecure() else "http"), host

    def ws_url(self, request, session_id: str) -> str:
        scheme, authority = self.base_url(request)
        return f"{'wss' if scheme == 'https' else 'ws'}://{authority}/v1/sessions/{session_id}/pty"

    def origin_allowed(self, request) -> bool:
        origin = header(request, b"origin")
        if origin is None:
            return True  # not a browser: nothing cross-site to protect against
        origin = origin.strip().lower().rstrip("/")
        if origin in (o.lower().rstrip("/") for o in self.config.allowed_origins):
            return True
        scheme, authority = self.base_url(request)
        return origin == f"{scheme}://{authority.split('/', 1)[0]}".lower()

    def pty_resource(self, request, session_id: str | None):
        resource = self._pty_resource(request, session_id)
        result = resource.error.code if isinstance(resource, ErrorPage) else "ok"
        self.metrics.attaches.labels(result).inc()
        return resource

    def _pty_resource(self, request, session_id: str | None):
        token = request.args.get(b"token", [b""])[0].decode("utf-8", "replace")
        try:
            grant = self.tokens.verify(token)
        except AuthError as e:
            return ErrorPage(ApiError(401, e.code, e.message))
        if grant.session_id != session_id:
            return ErrorPage(ApiError(403, "token_wrong_session",
                                      "This attach token belongs to another session; use the one minted for this session."))
        session = self.sessions.attachable(session_id, grant.subject)
        if session is None:
            return ErrorPage(not_found())
        if session.hub.attachments >= self.config.max_attachments:
            return ErrorPage(ApiError(409, "too_many_attachments",
                                      f"This session already has {self.config.max_attachments} attachments; "
                                      "close one first."))
        if not self.origin_allowed(request):
            return ErrorPage(ApiError(403, "origin_not_allowed",
                                      "This page's origin may not attach; an operator can add it to ALLOWED_ORIGINS."))
        return WebSocketResource(AttachFactory(self.ws_factory, session, self.audit))
