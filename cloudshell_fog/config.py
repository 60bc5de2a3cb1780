"""
Configuration: environment variables and the two YAML files, validated into
frozen dataclasses.

Every problem raises L{ConfigError} naming where it was found (the file or the
environment variable), the key, and what is wrong, in one line, so that
start-up can stop with that line and no traceback.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml
from twisted.internet.endpoints import quoteStringArgument

from cloudshell_fog.auth.oidc import OidcSettings

PACKAGE_DEFAULTS = Path(__file__).parent / "defaults"

DEFAULT_STATE_DB = "state/cloudshell-fog.db"  # relative to the working directory
DEVELOPMENT = "development"
PRODUCTION = "production"

TIERS = ("fog", "cloud")
CONNECTORS = ("local", "ssh", "container")
# Patterns are used with fullmatch: "$" would also match before a trailing newline.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NAME_RE = _ID_RE
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(Exception):
    """
    A configuration problem, rendered as one line: C{where: key: problem}.
    """

    def __init__(self, where: str, key: str, problem: str):
        self.where, self.key, self.problem = where, key, problem
        super().__init__(f"{where}: {key}: {problem}")


@dataclass(frozen=True)
class Profile:
    name: str
    max_ttl_seconds: int
    idle_timeout_seconds: int  # 0 disables the idle timeout
    cpu: float
    memory_mb: int
    allowed_groups: tuple[str, ...]  # empty: everyone may use the profile
    image_ref: str | None  # default image when the request names none
    run_as: str | None = None  # None: per-subject when the gateway is root; an account; "per-subject"; "root"
    sandbox: str = "none"  # or "namespaces"
    network: str = "host"  # or "none" (with sandbox: namespaces)
    pids: int = 512  # most processes a session may have at once


@dataclass(frozen=True)
class ImageRules:
    allowed_registries: tuple[str, ...]  # empty: any registry
    require_digest: bool


@dataclass(frozen=True)
class AccountRules:
    home_root: str  # homes of created accounts
    uid_min: int  # per-subject accounts get stable uids in [uid_min, uid_max]
    uid_max: int


@dataclass(frozen=True)
class Policy:
    profiles: Mapping[str, Profile]
    max_sessions_per_subject: int
    images: ImageRules
    accounts: AccountRules = AccountRules("/home/cloudshell-fog", 200000, 299999)


@dataclass(frozen=True)
class SshSettings:
    host: str
    port: int
    user: str
    key_file: str  # the gateway's private key for this node
    host_key: str  # the node's public host key, "type base64"
    connect_timeout: float
    max_sessions_per_connection: int = 10  # OpenSSH's MaxSessions default


@dataclass(frozen=True)
class ContainerSettings:
    runtime: str  # the OCI runtime podman uses (runc on cgroup v1/v2 hybrid hosts)
    pull_timeout: float  # seconds a missing image may take to pull


@dataclass(frozen=True)
class NodeConfig:
    id: str
    region: str
    tier: str
    connector: str
    capacity: int
    shell: tuple[str, ...]  # local: argv of the shell; ssh: a command to exec, or () for the login shell
    work_root: str  # local: per-session working directories are created below it
    env: Mapping[str, str] = field(default_factory=dict)
    ssh: SshSettings | None = None
    container: ContainerSettings | None = None


@dataclass(frozen=True)
class Config:
    mode: str
    listen: tuple[str, ...]  # Twisted server endpoint descriptions
    public_url: str | None
    oidc: "OidcSettings | None"  # None: development tokens (development mode only)
    session_token_secret: bytes
    dev_groups: tuple[str, ...]
    policy_file: str
    nodes_file: str
    policy: Policy
    nodes: tuple[NodeConfig, ...]
    audit_log: str | None
    state_db: str
    terminated_retention_seconds: int
    allowed_origins: tuple[str, ...]
    scrollback_bytes: int
    ws_max_message_bytes: int
    secret_file: str | None = None
    health_interval: float = 10.0
    health_failures: int = 2
    max_sessions: int = 1000  # on this gateway, all subjects together
    create_rate_per_minute: int = 30  # per subject; 0: no limit
    create_burst: int = 10
    max_attachments: int = 8  # per session
    http_idle_timeout: float = 60.0
    http_request_timeout: float = 15.0
    ws_ping_interval: float = 30.0  # 0: no pings
    audit_max_bytes: int = 100 * 2**20  # rotate the audit log past this size; 0: never
    audit_backups: int = 5
    admin_groups: tuple[str, ...] = ("cloudshell-admins",)
    metrics_listen: tuple[str, ...] = ()  # a listener of their own for /metrics; () : on the API's

    @property
    def development(self) -> bool:
        return self.mode == DEVELOPMENT

    @property
    def require_digest(self) -> bool:
        """Production pins every image by digest, whatever the policy says."""
        return self.mode == PRODUCTION


# ---------------------------------------------------------------- LISTEN_ADDR


def listen_endpoint(value: str, where: str = "LISTEN_ADDR") -> str:
    """
    Map a listen address to a Twisted server endpoint description.

    Accepts the reference's forms C{:8080}, C{127.0.0.1:9000}, C{[::1]:8080},
    C{0.0.0.0:80}, and any Twisted endpoint description that names its type
    (C{tcp:...}, C{ssl:...}, C{unix:...}).
    """
    value = value.strip()
    if not value:
        raise ConfigError(where, "address", "is empty; use a form like :8080 or 127.0.0.1:8080")
    head = value.split(":", 1)[0]
    if head in ("tcp", "tcp6", "ssl", "unix", "systemd"):
        return value
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ConfigError(
            where, "address", f"{value!r} has no port; use a form like :8080 or 127.0.0.1:8080"
        )
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(where, "port", f"{port!r} is not a port number (0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ConfigError(where, "address", f"{value!r}: brackets are for IPv6 addresses only")
    elif ":" in host:
        raise ConfigError(where, "address", f"{value!r}: write an IPv6 address in brackets, as [::1]:8080")
    description = f"tcp:{int(port)}"
    if host:
        description += ":interface=" + quoteStringArgument(host)
    return description


# ---------------------------------------------------------------- helpers


def _load_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "does not exist") from None
    except OSError as e:
        raise ConfigError(path, "(file)", f"cannot be read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "(file)", "is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(path, "(file)", f"is not valid YAML{at}: {problem}") from None


class _Reader:
    """Typed access to one mapping of a YAML file, with errors naming the key."""

    def __init__(self, where: str, prefix: str, data: Any, known: tuple[str, ...]):
        if not isinstance(data, dict):
            raise ConfigError(where, prefix or "(top level)", "must be a mapping")
        self.where, self.prefix, self.data = where, prefix, data
        for key in data:
            if key not in known:
                shown = key if isinstance(key, str) and key.isprintable() else repr(key)
                raise ConfigError(where, self.key(shown), f"is not a known key (known: {', '.join(known)})")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, problem: str):
        raise ConfigError(self.where, self.key(name), problem)

    def get(self, name: str, default: Any = ...) -> Any:
        if name in self.data and self.data[name] is not None:
            return self.data[name]
        if default is ...:
            self.fail(name, "is required")
        return default

    def int(self, name: str, default: Any = ..., minimum: int = 0, maximum: int | None = None) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer, not {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.fail(name, f"must be {bound}, not {value}")
        return value

    def number(self, name: str, default: Any = ...) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.fail(name, f"must be a positive number, not {value!r}")
        return float(value)

    def str(self, name: str, default: Any = ..., pattern: re.Pattern | None = None) -> Any:
        value = self.get(name, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(name, f"must be a non-empty string, not {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, f"{value!r} must be letters, digits, '.', '_' or '-' (at most 63)")
        return value

    def bool(self, name: str, default: Any = ...) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, not {value!r}")
        return value

    def strings(self, name: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(name, default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            self.fail(name, "must be a list of non-empty strings")
        return tuple(value)


# ---------------------------------------------------------------- policy.yaml

_PROFILE_KEYS = (
    "max_ttl_seconds",
    "idle_timeout_seconds",
    "cpu",
    "memory_mb",
    "allowed_groups",
    "image_ref",
    "run_as",
    "sandbox",
    "network",
    "pids",
)
_ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def load_policy(path: str) -> Policy:
    """Load and validate a policy file; raise L{ConfigError} naming the key."""
    from cloudshell_fog.images import ImageRefError, parse_image_ref

    top = _Reader(path, "", _load_yaml(path), ("profiles", "quotas", "images", "accounts"))
    raw_profiles = top.get("profiles")
    if not isinstance(raw_profiles, dict) or not raw_profiles:
        top.fail("profiles", "must be a mapping with at least one profile")
    profiles = {}
    for name, body in raw_profiles.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            top.fail("profiles", f"profile name {name!r} must be letters, digits, '.', '_' or '-' (at most 63)")
        r = _Reader(path, f"profiles.{name}", body, _PROFILE_KEYS)
        image_ref = r.str("image_ref", None)
        if image_ref is not None:
            try:
                parse_image_ref(image_ref)
            except ImageRefError as e:
                r.fail("image_ref", str(e))
        run_as = r.str("run_as", None)
        if run_as is not None and run_as != "per-subject" and not _ACCOUNT_RE.fullmatch(run_as):
            r.fail("run_as", f"{run_as!r} must be an account name, per-subject or root")
        sandbox = r.str("sandbox", "none")
        if sandbox not in ("none", "namespaces"):
            r.fail("sandbox", f"must be none or namespaces, not {sandbox!r}")
        network = r.str("network", "host")
        if network not in ("host", "none"):
            r.fail("network", f"must be host or none, not {network!r}")
        if network == "none" and sandbox != "namespaces":
            r.fail("network", "none needs sandbox: namespaces (the shell gets its own network namespace)")
        profiles[name] = Profile(
            name=name,
            max_ttl_seconds=r.int("max_ttl_seconds", minimum=1),
            idle_timeout_seconds=r.int("idle_timeout_seconds", 0),
            cpu=r.number("cpu", 1.0),
            memory_mb=r.int("memory_mb", 1024, minimum=16),
            allowed_groups=r.strings("allowed_groups", ()),
            image_ref=image_ref,
            run_as=run_as,
            sandbox=sandbox,
            network=network,
            pids=r.int("pids", 512, minimum=8, maximum=1_000_000),
        )
    quotas = _Reader(path, "quotas", top.get("quotas", {}), ("max_sessions_per_subject",))
    images = _Reader(path, "images", top.get("images", {}), ("allowed_registries", "require_digest"))
    accounts = _Reader(path, "accounts", top.get("accounts", {}), ("home_root", "uid_min", "uid_max"))
    home_root = accounts.str("home_root", "/home/cloudshell-fog")
    if not os.path.isabs(home_root):
        accounts.fail("home_root", f"{home_root!r} must be an absolute path")
    uid_min = accounts.int("uid_min", 200000, minimum=1000, maximum=2**31 - 2)
    uid_max = accounts.int("uid_max", 299999, minimum=uid_min, maximum=2**31 - 2)
    return Policy(
        accounts=AccountRules(home_root, uid_min, uid_max),
        profiles=profiles,
        max_sessions_per_subject=quotas.int("max_sessions_per_subject", 10, minimum=1),
        images=ImageRules(
            allowed_registries=images.strings("allowed_registries", ()),
            require_digest=images.bool("require_digest", False),
        ),
    )


# ---------------------------------------------------------------- nodes.yaml

_NODE_KEYS = ("id", "region", "tier", "connector", "capacity", "shell", "work_root", "env", "ssh", "container")
_SSH_KEYS = ("host", "port", "user", "key_file", "host_key", "connect_timeout", "max_sessions_per_connection")


def _ssh_settings(path: str, prefix: str, body) -> SshSettings:
    from twisted.conch.ssh import keys

    r = _Reader(path, prefix, body, _SSH_KEYS)
    key_file = r.str("key_file")
    try:
        if keys.Key.fromFile(key_file).isPublic():
            r.fail("key_file", f"{key_file} is a public key; give the gateway's private key (the .pub goes on the node)")
    except FileNotFoundError:
        r.fail("key_file", f"{key_file} does not exist")
    except OSError as e:
        r.fail("key_file", f"{key_file} cannot be read: {e.strerror}")
    except (keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        r.fail("key_file", f"{key_file} is not an unencrypted private key ({e.__class__.__name__})")
    host_key = r.str("host_key")
    try:
        if keys.Key.fromString(host_key.encode()).isPublic() is False:
            raise keys.BadKeyError("a private key")
    except (keys.BadKeyError, ValueError, IndexError, TypeError):
        r.fail("host_key", "must be the node's public host key, as in its /etc/ssh/ssh_host_*_key.pub "
                           "(e.g. 'ssh-ed25519 AAAA...')")
    return SshSettings(
        host=r.str("host"),
        port=r.int("port", 22, minimum=1, maximum=65535),
        user=r.str("user"),
        key_file=key_file,
        host_key=host_key,
        connect_timeout=r.number("connect_timeout", 5.0),
        max_sessions_per_connection=r.int("max_sessions_per_connection", 10, minimum=1, maximum=10000),
    )


def load_nodes(path: str) -> tuple[NodeConfig, ...]:
    """Load and validate a nodes file; raise L{ConfigError} naming the key."""
    top = _Reader(path, "", _load_yaml(path), ("nodes",))
    raw = top.get("nodes")
    if not isinstance(raw, list) or not raw:
        top.fail("nodes", "must be a list with at least one node")
    nodes, seen = [], set()
    for index, body in enumerate(raw):
        r = _Reader(path, f"nodes[{index}]", body, _NODE_KEYS)
        node_id = r.str("id", pattern=_ID_RE)
        if node_id in seen:
            r.fail("id", f"{node_id!r} is used by two nodes")
        seen.add(node_id)
        tier = r.str("tier")
        if tier not in TIERS:
            r.fail("tier", f"must be one of {', '.join(TIERS)}, not {tier!r}")
        connector = r.str("connector", "local")
        if connector not in CONNECTORS:
            r.fail("connector", f"must be one of {', '.join(CONNECTORS)}, not {connector!r}")
        ssh = container = None
        if connector == "ssh":
            ssh = _ssh_settings(path, r.key("ssh"), r.get("ssh"))
            shell = r.strings("shell", ())  # empty: the login shell of the node's user
        elif connector == "container":
            c = _Reader(path, r.key("container"), r.get("container", {}), ("runtime", "pull_timeout"))
            runtime = c.str("runtime", "runc")
            if runtime not in ("runc", "crun"):
                c.fail("runtime", f"must be runc or crun, not {runtime!r}")
            container = ContainerSettings(runtime, c.number("pull_timeout", 60.0))
            shell = r.strings("shell", ("/bin/sh",))  # inside the image
        else:
            for key in ("ssh", "container"):
                if key in r.data:
                    r.fail(key, f"is only for nodes with connector: {key}")
            shell = r.strings("shell", ("/bin/bash", "-l"))
            if not shell:
                r.fail("shell", "must name a program (a list like [/bin/bash, -l])")
            if not os.path.isabs(shell[0]):
                r.fail("shell", f"the program {shell[0]!r} must be an absolute path")
            if not os.access(shell[0], os.X_OK):
                r.fail("shell", f"{shell[0]} does not exist or is not executable on this host")
        env = r.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and _ENV_NAME_RE.fullmatch(k) and isinstance(v, str) for k, v in env.items()
        ):
            r.fail("env", "must map variable names to string values")
        work_root = r.str("work_root", "/tmp/cloudshell-fog/sessions")
        if not os.path.isabs(work_root):
            r.fail("work_root", f"{work_root!r} must be an absolute path")
        nodes.append(
            NodeConfig(
                id=node_id,
                region=r.str("region", pattern=_ID_RE),
                tier=tier,
                connector=connector,
                capacity=r.int("capacity", minimum=1, maximum=100000),
                shell=shell,
                work_root=work_root,
                env=dict(env),
                ssh=ssh,
                container=container,
            )
        )
    return tuple(nodes)


# ---------------------------------------------------------------- environment


def _default_file(name: str) -> str:
    """C{config/NAME} when run from a checkout, else the copy in the package."""
    local = Path("config") / name
    return str(local) if local.exists() else str(PACKAGE_DEFAULTS / name)


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, "value", f"{raw!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, "value", f"must be between {minimum} and {maximum}, not {value}")
    return value


def _env_float(env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, "value", f"{raw!r} is not a number of seconds") from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, "value", f"must be between {minimum:g} and {maximum:g}, not {value:g}")
    return value


def _env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


def _is_url(value: str, production: bool) -> bool:
    """An https URL; plain http only outside production, or on a loopback host (tests)."""
    match = re.fullmatch(r"(https?)://([^/\s?#:]+|\[[0-9a-fA-F:]+\])(:\d+)?(/[^\s?#]*)?", value)
    if match is None:
        return False
    loopback = match[2] in ("localhost", "127.0.0.1", "[::1]")
    return match[1] == "https" or not production or loopback


def _oidc_settings(env: Mapping[str, str], mode: str) -> OidcSettings | None:
    production = mode == PRODUCTION
    issuer = env.get("OIDC_ISSUER_URL", "").strip()
    audience = env.get("OIDC_AUDIENCE", "").strip()
    if not issuer:
        if production:
            raise ConfigError("OIDC_ISSUER_URL", "value",
                              "is required in production: the URL of your identity provider's issuer")
        return None
    if not _is_url(issuer, production):
        raise ConfigError("OIDC_ISSUER_URL", "value",
                          f"{issuer!r} must be an http(s):// URL; production needs https:// (http:// only on a loopback host)")
    if not audience:
        raise ConfigError("OIDC_AUDIENCE", "value",
                          "is required with OIDC_ISSUER_URL: the audience your provider puts in this gateway's tokens")
    introspection = env.get("OIDC_INTROSPECTION_URL", "").strip() or None
    client_id = env.get("OIDC_CLIENT_ID", "").strip() or None
    client_secret = env.get("OIDC_CLIENT_SECRET", "") or None
    if introspection is not None:
        if not _is_url(introspection, production):
            raise ConfigError("OIDC_INTROSPECTION_URL", "value",
                              f"{introspection!r} must be an https:// URL (http:// only on a loopback host)")
        for name, value in (("OIDC_CLIENT_ID", client_id), ("OIDC_CLIENT_SECRET", client_secret)):
            if not value:
                raise ConfigError(name, "value", "is required with OIDC_INTROSPECTION_URL")
    return OidcSettings(
        issuer=issuer,
        audience=audience,
        groups_claim=env.get("OIDC_GROUPS_CLAIM", "").strip() or "groups",
        subject_claim=env.get("OIDC_SUBJECT_CLAIM", "").strip() or "sub",
        leeway_seconds=_env_int(env, "OIDC_LEEWAY_SECONDS", 60, 0, 300),
        refresh_seconds=_env_int(env, "OIDC_JWKS_REFRESH_SECONDS", 900, 60, 86400),
        introspection_url=introspection,
        client_id=client_id,
        client_secret=client_secret,
    )


def _production_policy(policy: Policy, path: str, mode: str) -> Policy:
    """In production every profile's default image must be pinned by digest."""
    if mode == PRODUCTION:
        from cloudshell_fog.images import parse_image_ref

        for profile in policy.profiles.values():
            if profile.run_as == "root":
                raise ConfigError(path, f"profiles.{profile.name}.run_as",
                                  "root is for development only; production shells never run as root")
            if profile.image_ref is not None and not parse_image_ref(profile.image_ref).pinned:
                raise ConfigError(path, f"profiles.{profile.name}.image_ref",
                                  "must be pinned by digest in production (name@sha256:<64 hex>)")
    return policy


def load_config(
    env: Mapping[str, str],
    listen: list[str] | None = None,
    policy_file: str | None = None,
    nodes_file: str | None = None,
) -> Config:
    """
    Build the whole configuration from the environment, with command-line
    options (C{--listen}, C{--policy}, C{--nodes}) taking precedence.
    """
    mode = env.get("CLOUDSHELL_ENV", DEVELOPMENT).strip() or DEVELOPMENT
    if mode not in (DEVELOPMENT, PRODUCTION):
        raise ConfigError("CLOUDSHELL_ENV", "value", f"must be development or production, not {mode!r}")

    addresses = listen or [env.get("LISTEN_ADDR", "").strip() or ":8080"]
    endpoints = tuple(listen_endpoint(a, "--listen" if listen else "LISTEN_ADDR") for a in addresses)

    public_url = env.get("PUBLIC_URL", "").strip().rstrip("/") or None
    if public_url and not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", public_url):
        raise ConfigError("PUBLIC_URL", "value", f"{public_url!r} must be an http:// or https:// URL")

    oidc = _oidc_settings(env, mode)

    secret_raw = env.get("SESSION_TOKEN_SECRET", "")
    secret_file = env.get("SESSION_TOKEN_SECRET_FILE", "").strip()
    if secret_file:
        if secret_raw:
            raise ConfigError("SESSION_TOKEN_SECRET_FILE", "value", "set either it or SESSION_TOKEN_SECRET, not both")
        try:
            with open(secret_file, encoding="utf-8") as f:
                secret_raw = f.read().strip()
        except OSError as e:
            raise ConfigError("SESSION_TOKEN_SECRET_FILE", "value", f"cannot read {secret_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("SESSION_TOKEN_SECRET_FILE", "value", f"{secret_file} is not UTF-8 text") from None
    if secret_raw:
        secret = secret_raw.encode("utf-8")
        if len(secret) < 32:
            raise ConfigError(
                "SESSION_TOKEN_SECRET", "value", f"must be at least 32 bytes, it has {len(secret)}"
            )
    elif mode == PRODUCTION:
        raise ConfigError("SESSION_TOKEN_SECRET", "value",
                          "is required in production: at least 32 random bytes shared by every gateway")
    else:
        secret = secrets.token_bytes(32)

    policy_path = policy_file or env.get("POLICY_FILE", "").strip() or _default_file("policy.yaml")
    nodes_path = nodes_file or env.get("NODES_FILE", "").strip() or _default_file("nodes.yaml")

    return Config(
        mode=mode,
        listen=endpoints,
        public_url=public_url,
        oidc=oidc,
        session_token_secret=secret,
        dev_groups=_env_list(env, "DEV_GROUPS"),
        policy_file=policy_path,
        nodes_file=nodes_path,
        policy=_production_policy(load_policy(policy_path), policy_path, mode),
        nodes=load_nodes(nodes_path),
        audit_log=env.get("AUDIT_LOG", "").strip() or None,
        state_db=env.get("STATE_DB", "").strip() or DEFAULT_STATE_DB,
        secret_file=secret_file or None,
        terminated_retention_seconds=_env_int(env, "TERMINATED_RETENTION_SECONDS", 300, 0, 86400 * 7),
        allowed_origins=_env_list(env, "ALLOWED_ORIGINS"),
        scrollback_bytes=_env_int(env, "SCROLLBACK_BYTES", 128 * 1024, 0, 64 * 1024 * 1024),
        ws_max_message_bytes=_env_int(env, "WS_MAX_MESSAGE_BYTES", 64 * 1024, 1024, 16 * 1024 * 1024),
        health_interval=_env_float(env, "HEALTH_INTERVAL", 10.0, 0.1, 3600.0),
        health_failures=_env_int(env, "HEALTH_FAILURES", 2, 1, 100),
        max_sessions=_env_int(env, "MAX_SESSIONS", 1000, 1, 1_000_000),
        create_rate_per_minute=_env_int(env, "CREATE_RATE_PER_MINUTE", 30, 0, 1_000_000),
        create_burst=_env_int(env, "CREATE_BURST", 10, 1, 1_000_000),
        max_attachments=_env_int(env, "MAX_ATTACHMENTS_PER_SESSION", 8, 1, 1000),
        http_idle_timeout=_env_float(env, "HTTP_IDLE_TIMEOUT", 60.0, 1.0, 86400.0),
        http_request_timeout=_env_float(env, "HTTP_REQUEST_TIMEOUT", 15.0, 1.0, 3600.0),
        ws_ping_interval=_env_float(env, "WS_PING_INTERVAL", 30.0, 0.0, 3600.0),
        audit_max_bytes=_env_int(env, "AUDIT_LOG_MAX_BYTES", 100 * 2**20, 0, 2**40),
        audit_backups=_env_int(env, "AUDIT_LOG_BACKUPS", 5, 0, 1000),
        admin_groups=_env_list(env, "ADMIN_GROUPS") or ("cloudshell-admins",),
        metrics_listen=tuple(listen_endpoint(a, "METRICS_LISTEN_ADDR") for a in _env_list(env, "METRICS_LISTEN_ADDR")),
    )
