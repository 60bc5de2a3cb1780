"""Unit tests for cloudshell_fog.config: listen addresses, the YAML files and the environment."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cloudshell_fog.config import (
    PACKAGE_DEFAULTS,
    ConfigError,
    ImageRules,
    NodeConfig,
    Policy,
    Profile,
    listen_endpoint,
    load_config,
    load_nodes,
    load_policy,
)

DIGEST = "sha256:" + "0" * 64
SECRET = "s" * 32

VALID_POLICY = """\
profiles:
  default:
    max_ttl_seconds: 3600
    idle_timeout_seconds: 900
    cpu: 1.5
    memory_mb: 512
    allowed_groups: [staff, ops]
    image_ref: ghcr.io/org/img:1.0
  tiny:
    max_ttl_seconds: 60
quotas:
  max_sessions_per_subject: 3
images:
  allowed_registries: [ghcr.io, docker.io]
  require_digest: true
"""

VALID_NODES = """\
nodes:
  - id: fog-1
    region: eu-west
    tier: fog
    connector: local
    capacity: 5
    shell: [/bin/sh, -i]
    work_root: /tmp/cs-work
    env: {LANG: C.UTF-8, TERM: xterm}
  - id: cloud-1
    region: us-east
    tier: cloud
    capacity: 100000
"""

MINIMAL_POLICY = "profiles:\n  default:\n    max_ttl_seconds: 60\n"
MINIMAL_NODES = "nodes:\n  - {id: n1, region: r1, tier: fog, capacity: 1}\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    """Write C{text} to C{tmp_path/name} and return the path."""
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def assert_one_line_error(error: ConfigError, where: str, key: str, problem: str) -> None:
    """Check that C{error} names C{where} and C{key}, contains C{problem}, and is one line."""
    assert error.where == where
    assert error.key == key
    assert problem in error.problem
    text = str(error)
    assert text.startswith(f"{where}: {key}: ")
    assert problem in text
    assert "\n" not in text and "\r" not in text


# ---------------------------------------------------------------- listen_endpoint


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":8080", "tcp:8080"),
        ("  :8080  ", "tcp:8080"),
        (":0", "tcp:0"),
        (":65535", "tcp:65535"),
        ("127.0.0.1:9000", "tcp:9000:interface=127.0.0.1"),
        ("0.0.0.0:80", "tcp:80:interface=0.0.0.0"),
        ("localhost:8080", "tcp:8080:interface=localhost"),
        ("[::1]:8080", "tcp:8080:interface=\\:\\:1"),
        ("[::]:443", "tcp:443:interface=\\:\\:"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"),
        ("tcp6:8080", "tcp6:8080"),
        ("ssl:8443:privateKey=key.pem:certKey=cert.pem", "ssl:8443:privateKey=key.pem:certKey=cert.pem"),
        ("unix:/tmp/cs.sock", "unix:/tmp/cs.sock"),
    ],
)
def test_listen_endpoint_valid(address, expected):
    """A listen address maps to the expected Twisted endpoint description."""
    assert listen_endpoint(address) == expected


@pytest.mark.parametrize(
    ("address", "key", "problem"),
    [
        ("", "address", "is empty"),
        ("   ", "address", "is empty"),
        ("8080", "address", "has no port"),
        ("localhost", "address", "has no port"),
        ("127.0.0.1:", "port", "is not a port number"),
        (":http", "port", "is not a port number"),
        (":-1", "port", "is not a port number"),
        (":70000", "port", "is not a port number"),
        (":65536", "port", "is not a port number"),
        ("127.0.0.1:80a", "port", "is not a port number"),
        ("::1:8080", "address", "in brackets"),
        ("fe80::1:8080", "address", "in brackets"),
        ("[127.0.0.1]:8080", "address", "brackets are for IPv6"),
        ("[localhost]:8080", "address", "brackets are for IPv6"),
        pytest.param(
            ":\u00b2",
            "port",
            "is not a port number",
            id="superscript-digit-port",
        ),
    ],
)
def test_listen_endpoint_invalid(address, key, problem):
    """A bad listen address raises a one-line ConfigError naming LISTEN_ADDR, the key and the problem."""
    with pytest.raises(ConfigError) as info:
        listen_endpoint(address)
    assert_one_line_error(info.value, "LISTEN_ADDR", key, problem)


def test_listen_endpoint_names_where():
    """The C{where} argument is the first part of the error."""
    with pytest.raises(ConfigError) as info:
        listen_endpoint(":99999", "--listen")
    assert str(info.value).startswith("--listen: port: ")


# ---------------------------------------------------------------- load_policy


def test_load_policy_valid(tmp_path):
    """A complete policy file loads into the dataclasses with every value."""
    path = write(tmp_path, "policy.yaml", VALID_POLICY)
    policy = load_policy(str(path))
    assert isinstance(policy, Policy)
    assert set(policy.profiles) == {"default", "tiny"}
    assert policy.profiles["default"] == Profile(
        name="default",
        max_ttl_seconds=3600,
        idle_timeout_seconds=900,
        cpu=1.5,
        memory_mb=512,
        allowed_groups=("staff", "ops"),
        image_ref="ghcr.io/org/img:1.0",
    )
    assert policy.max_sessions_per_subject == 3
    assert policy.images == ImageRules(allowed_registries=("ghcr.io", "docker.io"), require_digest=True)


def test_load_policy_defaults(tmp_path):
    """Keys left out take their documented defaults."""
    path = write(tmp_path, "policy.yaml", MINIMAL_POLICY)
    policy = load_policy(str(path))
    assert policy.profiles["default"] == Profile(
        name="default",
        max_ttl_seconds=60,
        idle_timeout_seconds=0,
        cpu=1.0,
        memory_mb=1024,
        allowed_groups=(),
        image_ref=None,
    )
    assert policy.max_sessions_per_subject == 10
    assert policy.images == ImageRules(allowed_registries=(), require_digest=False)


def test_load_policy_null_sections_use_defaults(tmp_path):
    """An explicitly empty quotas or images section means the defaults."""
    path = write(tmp_path, "policy.yaml", MINIMAL_POLICY + "quotas: ~\nimages:\n")
    policy = load_policy(str(path))
    assert policy.max_sessions_per_subject == 10
    assert policy.images.require_digest is False


def test_load_policy_single_group_string(tmp_path):
    """allowed_groups given as one string becomes a one-element tuple."""
    path = write(
        tmp_path,
        "policy.yaml",
        "profiles:\n  default:\n    max_ttl_seconds: 60\n    allowed_groups: staff\n",
    )
    assert load_policy(str(path)).profiles["default"].allowed_groups == ("staff",)


def test_load_policy_pinned_image(tmp_path):
    """A digest-pinned image_ref is accepted as the profile default."""
    ref = "localhost:5000/x@" + DIGEST
    path = write(
        tmp_path, "policy.yaml", f"profiles:\n  default:\n    max_ttl_seconds: 60\n    image_ref: {ref}\n"
    )
    assert load_policy(str(path)).profiles["default"].image_ref == ref


def _profile(body: str) -> str:
    """A policy file with one profile 'default' whose body is C{body} (YAML flow mapping)."""
    return f"profiles:\n  default: {body}\n"


BAD_POLICIES = [
    # (id, file text, dotted key, problem)
    ("empty-file", "", "(top level)", "must be a mapping"),
    ("top-list", "- a\n- b\n", "(top level)", "must be a mapping"),
    ("top-unknown-key", MINIMAL_POLICY + "extra: 1\n", "extra", "is not a known key"),
    ("profiles-missing", "quotas: {max_sessions_per_subject: 1}\n", "profiles", "is required"),
    ("profiles-empty", "profiles: {}\n", "profiles", "at least one profile"),
    ("profiles-list", "profiles: [default]\n", "profiles", "at least one profile"),
    ("profile-bad-name", "profiles:\n  'bad name': {max_ttl_seconds: 1}\n", "profiles", "profile name 'bad name'"),
    ("profile-not-mapping", _profile("[1, 2]"), "profiles.default", "must be a mapping"),
    ("profile-unknown-key", _profile("{max_ttl_seconds: 60, colour: red}"), "profiles.default.colour", "is not a known key"),
    ("ttl-missing", _profile("{cpu: 1}"), "profiles.default.max_ttl_seconds", "is required"),
    ("ttl-zero", _profile("{max_ttl_seconds: 0}"), "profiles.default.max_ttl_seconds", "must be at least 1, not 0"),
    ("ttl-negative", _profile("{max_ttl_seconds: -5}"), "profiles.default.max_ttl_seconds", "must be at least 1, not -5"),
    ("ttl-string", _profile("{max_ttl_seconds: 1h}"), "profiles.default.max_ttl_seconds", "must be an integer, not '1h'"),
    ("ttl-float", _profile("{max_ttl_seconds: 1.5}"), "profiles.default.max_ttl_seconds", "must be an integer, not 1.5"),
    ("ttl-bool", _profile("{max_ttl_seconds: true}"), "profiles.default.max_ttl_seconds", "must be an integer, not True"),
    ("idle-negative", _profile("{max_ttl_seconds: 60, idle_timeout_seconds: -1}"), "profiles.default.idle_timeout_seconds", "must be at least 0"),
    ("cpu-zero", _profile("{max_ttl_seconds: 60, cpu: 0}"), "profiles.default.cpu", "must be a positive number"),
    ("cpu-string", _profile("{max_ttl_seconds: 60, cpu: lots}"), "profiles.default.cpu", "must be a positive number"),
    ("cpu-bool", _profile("{max_ttl_seconds: 60, cpu: true}"), "profiles.default.cpu", "must be a positive number"),
    ("memory-too-small", _profile("{max_ttl_seconds: 60, memory_mb: 8}"), "profiles.default.memory_mb", "must be at least 16, not 8"),
    ("groups-numbers", _profile("{max_ttl_seconds: 60, allowed_groups: [1, 2]}"), "profiles.default.allowed_groups", "must be a list of non-empty strings"),
    ("groups-empty-string", _profile("{max_ttl_seconds: 60, allowed_groups: ['']}"), "profiles.default.allowed_groups", "must be a list of non-empty strings"),
    ("image-invalid", _profile("{max_ttl_seconds: 60, image_ref: 'Not An Image'}"), "profiles.default.image_ref", "not a valid OCI image reference"),
    ("image-bad-digest", _profile("{max_ttl_seconds: 60, image_ref: 'busybox@sha256:abc'}"), "profiles.default.image_ref", "malformed digest"),
    ("image-not-string", _profile("{max_ttl_seconds: 60, image_ref: 5}"), "profiles.default.image_ref", "must be a non-empty string"),
    ("quotas-not-mapping", MINIMAL_POLICY + "quotas: [1]\n", "quotas", "must be a mapping"),
    ("quotas-unknown-key", MINIMAL_POLICY + "quotas: {per_user: 1}\n", "quotas.per_user", "is not a known key"),
    ("quota-zero", MINIMAL_POLICY + "quotas: {max_sessions_per_subject: 0}\n", "quotas.max_sessions_per_subject", "must be at least 1, not 0"),
    ("quota-string", MINIMAL_POLICY + "quotas: {max_sessions_per_subject: many}\n", "quotas.max_sessions_per_subject", "must be an integer"),
    ("images-unknown-key", MINIMAL_POLICY + "images: {allow: [x]}\n", "images.allow", "is not a known key"),
    ("registries-not-list", MINIMAL_POLICY + "images: {allowed_registries: 5}\n", "images.allowed_registries", "must be a list of non-empty strings"),
    ("digest-not-bool", MINIMAL_POLICY + "images: {require_digest: maybe}\n", "images.require_digest", "must be true or false, not 'maybe'"),
    ("yaml-tab", "profiles:\n\tdefault: 1\n", "(file)", "is not valid YAML at line 2"),
    ("yaml-unclosed", "profiles: [\n", "(file)", "is not valid YAML"),
    pytest.param(
        "not-utf8",
        b"profiles:\n  default: {max_ttl_seconds: 60}\n# \xff\xfe\n",
        "(file)",
        "",
        id="not-utf8",
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "key", "problem"),
    [p if hasattr(p, "marks") else pytest.param(*p, id=p[0]) for p in BAD_POLICIES],
)
def test_load_policy_invalid(tmp_path, name, text, key, problem):
    """A bad policy file raises a one-line ConfigError naming the file, the dotted key and the problem."""
    path = write(tmp_path, "policy.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_policy(str(path))
    assert_one_line_error(info.value, str(path), key, problem)


def test_load_policy_unknown_key_with_newline_is_one_line(tmp_path):
    """An unknown key containing a newline is still reported on one line."""
    path = write(tmp_path, "policy.yaml", _profile('{max_ttl_seconds: 60, "bad\\nkey": 1}'))
    with pytest.raises(ConfigError) as info:
        load_policy(str(path))
    assert info.value.where == str(path)
    assert info.value.key.startswith("profiles.default.")
    assert "is not a known key" in info.value.problem
    assert "\n" not in str(info.value)


def test_load_policy_missing_file(tmp_path):
    """A missing policy file is reported as such, naming the path."""
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert_one_line_error(info.value, path, "(file)", "does not exist")


def test_load_policy_directory(tmp_path):
    """A path that is a directory is reported as unreadable."""
    with pytest.raises(ConfigError) as info:
        load_policy(str(tmp_path))
    assert_one_line_error(info.value, str(tmp_path), "(file)", "cannot be read")


# ---------------------------------------------------------------- load_nodes


def test_load_nodes_valid(tmp_path):
    """A complete nodes file loads into NodeConfig tuples, with defaults filled in."""
    path = write(tmp_path, "nodes.yaml", VALID_NODES)
    nodes = load_nodes(str(path))
    assert nodes == (
        NodeConfig(
            id="fog-1",
            region="eu-west",
            tier="fog",
            connector="local",
            capacity=5,
            shell=("/bin/sh", "-i"),
            work_root="/tmp/cs-work",
            env={"LANG": "C.UTF-8", "TERM": "xterm"},
        ),
        NodeConfig(
            id="cloud-1",
            region="us-east",
            tier="cloud",
            connector="local",
            capacity=100000,
            shell=("/bin/bash", "-l"),
            work_root="/tmp/cloudshell-fog/sessions",
            env={},
        ),
    )


def _nodes(*bodies: str) -> str:
    """A nodes file whose list items are the YAML flow mappings C{bodies}."""
    return "nodes:\n" + "".join(f"  - {b}\n" for b in bodies)


GOOD = "{id: n0, region: r, tier: fog, capacity: 1}"

BAD_NODES = [
    ("empty-file", "", "(top level)", "must be a mapping"),
    ("top-unknown-key", MINIMAL_NODES + "extra: 1\n", "extra", "is not a known key"),
    ("nodes-missing", "{}\n", "nodes", "is required"),
    ("nodes-empty", "nodes: []\n", "nodes", "at least one node"),
    ("nodes-mapping", "nodes: {a: 1}\n", "nodes", "at least one node"),
    ("node-not-mapping", _nodes("fog"), "nodes[0]", "must be a mapping"),
    ("node-unknown-key", _nodes("{id: n0, region: r, tier: fog, capacity: 1, colour: red}"), "nodes[0].colour", "is not a known key"),
    ("id-missing", _nodes("{region: r, tier: fog, capacity: 1}"), "nodes[0].id", "is required"),
    ("id-bad-chars", _nodes("{id: 'bad id', region: r, tier: fog, capacity: 1}"), "nodes[0].id", "'bad id' must be letters, digits"),
    ("id-too-long", _nodes("{id: " + "a" * 64 + ", region: r, tier: fog, capacity: 1}"), "nodes[0].id", "must be letters, digits"),
    ("id-duplicate", _nodes(GOOD, "{id: n0, region: r, tier: cloud, capacity: 1}"), "nodes[1].id", "'n0' is used by two nodes"),
    ("tier-bad", _nodes(GOOD, "{id: n1, region: r, tier: edge, capacity: 1}"), "nodes[1].tier", "must be one of fog, cloud, not 'edge'"),
    ("tier-missing", _nodes("{id: n0, region: r, capacity: 1}"), "nodes[0].tier", "is required"),
    ("connector-bad", _nodes("{id: n0, region: r, tier: fog, capacity: 1, connector: k8s}"), "nodes[0].connector", "must be one of local, ssh, container, not 'k8s'"),
    ("ssh-missing", _nodes("{id: n0, region: r, tier: fog, capacity: 1, connector: ssh}"), "nodes[0].ssh", "is required"),
    ("ssh-on-local", _nodes("{id: n0, region: r, tier: fog, capacity: 1, ssh: {host: h}}"), "nodes[0].ssh", "is only for nodes with connector: ssh"),
    ("ssh-no-key-file", _nodes("{id: n0, region: r, tier: fog, capacity: 1, connector: ssh, ssh: {host: h, user: u, key_file: /nonexistent/key, host_key: x}}"), "nodes[0].ssh.key_file", "/nonexistent/key does not exist"),
    ("shell-relative", _nodes("{id: n0, region: r, tier: fog, capacity: 1, shell: [bash, -l]}"), "nodes[0].shell", "'bash' must be an absolute path"),
    ("shell-missing-program", _nodes("{id: n0, region: r, tier: fog, capacity: 1, shell: [/nonexistent/sh]}"), "nodes[0].shell", "does not exist or is not executable"),
    ("shell-not-list", _nodes("{id: n0, region: r, tier: fog, capacity: 1, shell: 5}"), "nodes[0].shell", "must be a list of non-empty strings"),
    ("env-not-mapping", _nodes("{id: n0, region: r, tier: fog, capacity: 1, env: [A]}"), "nodes[0].env", "must map variable names to string values"),
    ("env-bad-name", _nodes("{id: n0, region: r, tier: fog, capacity: 1, env: {1BAD: x}}"), "nodes[0].env", "must map variable names"),
    ("env-non-string-value", _nodes("{id: n0, region: r, tier: fog, capacity: 1, env: {A: 1}}"), "nodes[0].env", "must map variable names"),
    ("work-root-relative", _nodes("{id: n0, region: r, tier: fog, capacity: 1, work_root: tmp/x}"), "nodes[0].work_root", "'tmp/x' must be an absolute path"),
    ("region-missing", _nodes("{id: n0, tier: fog, capacity: 1}"), "nodes[0].region", "is required"),
    ("region-bad", _nodes("{id: n0, region: 'eu west', tier: fog, capacity: 1}"), "nodes[0].region", "must be letters, digits"),
    ("capacity-missing", _nodes("{id: n0, region: r, tier: fog}"), "nodes[0].capacity", "is required"),
    ("capacity-zero", _nodes("{id: n0, region: r, tier: fog, capacity: 0}"), "nodes[0].capacity", "must be between 1 and 100000, not 0"),
    ("capacity-too-big", _nodes("{id: n0, region: r, tier: fog, capacity: 100001}"), "nodes[0].capacity", "must be between 1 and 100000, not 100001"),
    ("capacity-string", _nodes("{id: n0, region: r, tier: fog, capacity: lots}"), "nodes[0].capacity", "must be an integer"),
    pytest.param(
        "shell-empty-list",
        _nodes("{id: n0, region: r, tier: fog, capacity: 1, shell: []}"),
        "nodes[0].shell",
        "",
        id="shell-empty-list",
    ),
    pytest.param(
        "id-trailing-newline",
        _nodes('{id: "n0\\n", region: r, tier: fog, capacity: 1}'),
        "nodes[0].id",
        "must be letters, digits",
        id="id-trailing-newline",
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "key", "problem"),
    [p if hasattr(p, "marks") else pytest.param(*p, id=p[0]) for p in BAD_NODES],
)
def test_load_nodes_invalid(tmp_path, name, text, key, problem):
    """A bad nodes file raises a one-line ConfigError naming the file, the dotted key and the problem."""
    path = write(tmp_path, "nodes.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_nodes(str(path))
    assert_one_line_error(info.value, str(path), key, problem)


def test_load_nodes_missing_file(tmp_path):
    """A missing nodes file is reported as such, naming the path."""
    path = str(tmp_path / "nodes.yaml")
    with pytest.raises(ConfigError) as info:
        load_nodes(path)
    assert_one_line_error(info.value, path, "(file)", "does not exist")


def test_load_nodes_invalid_yaml(tmp_path):
    """A nodes file that is not YAML names the line of the problem."""
    path = write(tmp_path, "nodes.yaml", "nodes:\n  - id: 'unterminated\n")
    with pytest.raises(ConfigError) as info:
        load_nodes(str(path))
    assert_one_line_error(info.value, str(path), "(file)", "is not valid YAML")


# ---------------------------------------------------------------- shipped defaults


def test_shipped_policy_loads():
    """The packaged policy.yaml loads and has the default and small profiles."""
    policy = load_policy(str(PACKAGE_DEFAULTS / "policy.yaml"))
    assert {"default", "small"} <= set(policy.profiles)
    assert policy.profiles["default"].max_ttl_seconds == 3600


def test_shipped_nodes_load():
    """The packaged nodes.yaml loads with a fog node and a cloud node."""
    nodes = {n.id: n for n in load_nodes(str(PACKAGE_DEFAULTS / "nodes.yaml"))}
    assert nodes["fog-local"].tier == "fog"
    assert nodes["cloud-local"].tier == "cloud"


# ---------------------------------------------------------------- load_config


@pytest.fixture
def files(tmp_path):
    """A valid policy and nodes file in tmp_path, as an env dict pointing at them."""
    policy = write(tmp_path, "p.yaml", MINIMAL_POLICY)
    nodes = write(tmp_path, "n.yaml", MINIMAL_NODES)
    return {"POLICY_FILE": str(policy), "NODES_FILE": str(nodes)}


def test_load_config_defaults(tmp_path, monkeypatch):
    """An empty environment gives development mode on :8080 with the packaged files."""
    monkeypatch.chdir(tmp_path)  # no ./config here, so the package defaults are used
    config = load_config({})
    assert config.mode == "development"
    assert config.development is True
    assert config.listen == ("tcp:8080",)
    assert config.public_url is None
    assert config.oidc is None
    assert config.require_digest is False
    assert isinstance(config.session_token_secret, bytes)
    assert len(config.session_token_secret) == 32
    assert config.dev_groups == ()
    assert config.policy_file == str(PACKAGE_DEFAULTS / "policy.yaml")
    assert config.nodes_file == str(PACKAGE_DEFAULTS / "nodes.yaml")
    assert "default" in config.policy.profiles
    assert {n.id for n in config.nodes} == {"fog-local", "cloud-local"}
    assert config.audit_log is None
    assert config.terminated_retention_seconds == 300
    assert config.allowed_origins == ()
    assert config.scrollback_bytes == 128 * 1024
    assert config.ws_max_message_bytes == 64 * 1024


def test_load_config_random_secret_each_time(files):
    """Without SESSION_TOKEN_SECRET each load gets a fresh random secret."""
    assert load_config(files).session_token_secret != load_config(files).session_token_secret


def test_load_config_prefers_checkout_config(tmp_path, monkeypatch):
    """When ./config/policy.yaml exists it is used instead of the package copy."""
    (tmp_path / "config").mkdir()
    write(tmp_path, "config/policy.yaml", MINIMAL_POLICY)
    write(tmp_path, "config/nodes.yaml", MINIMAL_NODES)
    monkeypatch.chdir(tmp_path)
    config = load_config({})
    assert config.policy_file == str(Path("config") / "policy.yaml")
    assert config.nodes_file == str(Path("config") / "nodes.yaml")
    assert [n.id for n in config.nodes] == ["n1"]


@pytest.mark.parametrize(
    ("extra", "attribute", "expected"),
    [
        ({"LISTEN_ADDR": "127.0.0.1:9000"}, "listen", ("tcp:9000:interface=127.0.0.1",)),
        ({"LISTEN_ADDR": "[::1]:8080"}, "listen", ("tcp:8080:interface=\\:\\:1",)),
        ({"LISTEN_ADDR": "   "}, "listen", ("tcp:8080",)),
        ({"CLOUDSHELL_ENV": "development"}, "mode", "development"),
        ({"CLOUDSHELL_ENV": ""}, "mode", "development"),
        ({"SESSION_TOKEN_SECRET": SECRET}, "session_token_secret", SECRET.encode()),
        ({"SESSION_TOKEN_SECRET": "\u00e9" * 16}, "session_token_secret", ("\u00e9" * 16).encode()),
        ({"PUBLIC_URL": "https://shell.example.com/"}, "public_url", "https://shell.example.com"),
        ({"OIDC_AUDIENCE": "api"}, "oidc", None),  # without an issuer, no OIDC at all
        ({"DEV_GROUPS": "a, b,,c "}, "dev_groups", ("a", "b", "c")),
        ({"ALLOWED_ORIGINS": "https://a.example, https://b.example"}, "allowed_origins", ("https://a.example", "https://b.example")),
        ({"AUDIT_LOG": "/tmp/audit.log"}, "audit_log", "/tmp/audit.log"),
        ({"TERMINATED_RETENTION_SECONDS": "0"}, "terminated_retention_seconds", 0),
        ({"TERMINATED_RETENTION_SECONDS": " 60 "}, "terminated_retention_seconds", 60),
        ({"SCROLLBACK_BYTES": "0"}, "scrollback_bytes", 0),
        ({"WS_MAX_MESSAGE_BYTES": "1024"}, "ws_max_message_bytes", 1024),
    ],
)
def test_load_config_env(files, extra, attribute, expected):
    """Each environment variable sets its configuration attribute."""
    config = load_config({**files, **extra})
    assert getattr(config, attribute) == expected


@pytest.mark.parametrize(
    ("extra", "where", "problem"),
    [
        ({"LISTEN_ADDR": "8080"}, "LISTEN_ADDR", "has no port"),
        ({"LISTEN_ADDR": ":70000"}, "LISTEN_ADDR", "is not a port number"),
        ({"SESSION_TOKEN_SECRET": "short"}, "SESSION_TOKEN_SECRET", "must be at least 32 bytes, it has 5"),
        ({"SESSION_TOKEN_SECRET": "s" * 31}, "SESSION_TOKEN_SECRET", "it has 31"),
        ({"CLOUDSHELL_ENV": "bogus"}, "CLOUDSHELL_ENV", "must be development or production, not 'bogus'"),
        ({"CLOUDSHELL_ENV": "production"}, "OIDC_ISSUER_URL", "is required in production"),
        ({"OIDC_ISSUER_URL": "https://idp.example.com"}, "OIDC_AUDIENCE", "is required with OIDC_ISSUER_URL"),
        ({"OIDC_ISSUER_URL": "idp.example.com", "OIDC_AUDIENCE": "a"}, "OIDC_ISSUER_URL", "must be an http(s):// URL"),
        (
            {"CLOUDSHELL_ENV": "production", "OIDC_ISSUER_URL": "https://idp.example.com"},
            "OIDC_AUDIENCE",
            "is required with OIDC_ISSUER_URL",
        ),
        (
            {"CLOUDSHELL_ENV": "production", "OIDC_ISSUER_URL": "https://idp.example.com", "OIDC_AUDIENCE": "a"},
            "SESSION_TOKEN_SECRET",
            "is required in production",
        ),
        (
            {"CLOUDSHELL_ENV": "production", "OIDC_ISSUER_URL": "http://idp.example.com", "OIDC_AUDIENCE": "a",
             "SESSION_TOKEN_SECRET": SECRET},
            "OIDC_ISSUER_URL",
            "production needs https://",
        ),
        (
            {"OIDC_ISSUER_URL": "https://idp.example.com", "OIDC_AUDIENCE": "a",
             "OIDC_INTROSPECTION_URL": "https://idp.example.com/introspect"},
            "OIDC_CLIENT_ID",
            "is required with OIDC_INTROSPECTION_URL",
        ),
        ({"OIDC_ISSUER_URL": "https://i.example", "OIDC_AUDIENCE": "a", "OIDC_LEEWAY_SECONDS": "900"},
         "OIDC_LEEWAY_SECONDS", "must be between 0 and 300"),
        ({"PUBLIC_URL": "ftp://x"}, "PUBLIC_URL", "must be an http:// or https:// URL"),
        ({"TERMINATED_RETENTION_SECONDS": "5m"}, "TERMINATED_RETENTION_SECONDS", "'5m' is not an integer"),
        ({"TERMINATED_RETENTION_SECONDS": "1.5"}, "TERMINATED_RETENTION_SECONDS", "is not an integer"),
        ({"TERMINATED_RETENTION_SECONDS": "-1"}, "TERMINATED_RETENTION_SECONDS", "must be between 0 and 604800, not -1"),
        ({"SCROLLBACK_BYTES": "lots"}, "SCROLLBACK_BYTES", "is not an integer"),
        ({"WS_MAX_MESSAGE_BYTES": "10"}, "WS_MAX_MESSAGE_BYTES", "must be between 1024"),
    ],
)
def test_load_config_env_invalid(files, extra, where, problem):
    """A bad environment variable raises a one-line ConfigError naming the variable."""
    with pytest.raises(ConfigError) as info:
        load_config({**files, **extra})
    assert info.value.where == where
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_load_config_short_secret_error_hides_secret(files):
    """The too-short secret error does not repeat the secret."""
    with pytest.raises(ConfigError) as info:
        load_config({**files, "SESSION_TOKEN_SECRET": "hunter2-secret"})
    assert "hunter2" not in str(info.value)


def test_load_config_files_from_env(tmp_path, files):
    """POLICY_FILE and NODES_FILE point load_config at those files."""
    config = load_config(files)
    assert config.policy_file == files["POLICY_FILE"]
    assert config.nodes_file == files["NODES_FILE"]
    assert config.policy.profiles["default"].max_ttl_seconds == 60
    assert [n.id for n in config.nodes] == ["n1"]


def test_load_config_bad_policy_file_from_env(tmp_path, files):
    """An invalid POLICY_FILE is reported with its own path."""
    bad = write(tmp_path, "bad.yaml", "profiles: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config({**files, "POLICY_FILE": str(bad)})
    assert_one_line_error(info.value, str(bad), "profiles", "at least one profile")


def test_load_config_missing_nodes_file_from_env(tmp_path, files):
    """A NODES_FILE that does not exist is reported with its path."""
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as info:
        load_config({**files, "NODES_FILE": missing})
    assert_one_line_error(info.value, missing, "(file)", "does not exist")


def test_load_config_options_override_env(tmp_path, files):
    """--listen, --policy and --nodes take precedence over the environment."""
    policy = write(tmp_path, "p2.yaml", "profiles:\n  other:\n    max_ttl_seconds: 5\n")
    nodes = write(tmp_path, "n2.yaml", "nodes:\n  - {id: n2, region: r2, tier: cloud, capacity: 2}\n")
    config = load_config(
        {**files, "LISTEN_ADDR": ":1234"},
        listen=["127.0.0.1:9000", "[::1]:9001"],
        policy_file=str(policy),
        nodes_file=str(nodes),
    )
    assert config.listen == ("tcp:9000:interface=127.0.0.1", "tcp:9001:interface=\\:\\:1")
    assert config.policy_file == str(policy)
    assert config.nodes_file == str(nodes)
    assert set(config.policy.profiles) == {"other"}
    assert [n.id for n in config.nodes] == ["n2"]


def test_load_config_bad_listen_option_names_option(files):
    """A bad --listen value is reported as --listen, not LISTEN_ADDR."""
    with pytest.raises(ConfigError) as info:
        load_config({**files, "LISTEN_ADDR": ":1234"}, listen=["nope"])
    assert info.value.where == "--listen"


def test_oidc_settings_from_the_environment(files):
    """With an issuer and an audience, every OIDC variable reaches the verifier's settings."""
    config = load_config({**files, "OIDC_ISSUER_URL": "https://idp.example.com/realms/x", "OIDC_AUDIENCE": "shell",
                          "OIDC_GROUPS_CLAIM": "realm_access.roles", "OIDC_SUBJECT_CLAIM": "preferred_username",
                          "OIDC_LEEWAY_SECONDS": "5", "OIDC_JWKS_REFRESH_SECONDS": "120",
                          "OIDC_INTROSPECTION_URL": "https://idp.example.com/introspect",
                          "OIDC_CLIENT_ID": "gw", "OIDC_CLIENT_SECRET": "pw"})
    oidc = config.oidc
    assert (oidc.issuer, oidc.audience, oidc.groups_claim, oidc.subject_claim) == (
        "https://idp.example.com/realms/x", "shell", "realm_access.roles", "preferred_username")
    assert (oidc.leeway_seconds, oidc.refresh_seconds) == (5, 120)
    assert (oidc.introspection_url, oidc.client_id, oidc.client_secret) == (
        "https://idp.example.com/introspect", "gw", "pw")


def test_production_starts_with_oidc_and_a_secret_and_pins_images(files):
    """Production with issuer, audience and secret loads and demands pinned images."""
    config = load_config({**files, "CLOUDSHELL_ENV": "production", "OIDC_ISSUER_URL": "https://idp.example.com",
                          "OIDC_AUDIENCE": "shell", "SESSION_TOKEN_SECRET": SECRET})
    assert config.mode == "production" and config.require_digest is True
    local = load_config({**files, "CLOUDSHELL_ENV": "production", "OIDC_ISSUER_URL": "http://127.0.0.1:9/x",
                         "OIDC_AUDIENCE": "shell", "SESSION_TOKEN_SECRET": SECRET})
    assert local.oidc.issuer == "http://127.0.0.1:9/x"  # plain http only on loopback


def test_production_refuses_an_unpinned_profile_image(tmp_path):
    """A profile whose default image is only a tag stops a production start, naming the key."""
    policy = write(tmp_path, "p.yaml", "profiles:\n  dev:\n    max_ttl_seconds: 60\n    image_ref: busybox:1.36\n")
    nodes = write(tmp_path, "n.yaml", MINIMAL_NODES)
    with pytest.raises(ConfigError) as info:
        load_config({"POLICY_FILE": str(policy), "NODES_FILE": str(nodes), "CLOUDSHELL_ENV": "production",
                     "OIDC_ISSUER_URL": "https://idp.example.com", "OIDC_AUDIENCE": "a",
                     "SESSION_TOKEN_SECRET": SECRET})
    assert (info.value.where, info.value.key) == (str(policy), "profiles.dev.image_ref")
    assert "pinned by digest" in info.value.problem
