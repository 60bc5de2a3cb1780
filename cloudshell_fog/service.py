"""
The twistd plugin's service: C{Options} parses the command line and loads
the configuration; C{makeService} wires the parts into a MultiService.
"""

from __future__ import annotations

import ipaddress
import os
import re
import resource
import signal
import sys
from dataclasses import dataclass

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from cloudshell_fog.audit import Audit
from cloudshell_fog.auth.attach import AttachTokens
from cloudshell_fog.auth.dev import DevVerifier
from cloudshell_fog.auth.oidc import OidcVerifier
from cloudshell_fog import audit as audit_events
from cloudshell_fog.config import Config, ConfigError, _production_policy, load_config, load_nodes, load_policy
from cloudshell_fog.limits import TokenBuckets
from cloudshell_fog.metrics import Metrics
from cloudshell_fog.nodes import NodeInventory, NodeProber, NodeState
from cloudshell_fog.runtime.isolation import Accounts, Isolation, detect_cgroups, sandbox_works
from cloudshell_fog.runtime.container import ContainerConnector, remove_containers, runtime_works, \
    session_containers
from cloudshell_fog.runtime.local import LocalPtyConnector
from cloudshell_fog.runtime.ssh import SshConnector
from cloudshell_fog.runtime.procs import become_subreaper, reap_orphans
from cloudshell_fog.sessions import SessionManager
from cloudshell_fog.store import SqliteSessionStore, StoreError
from cloudshell_fog.terminal import flush_bytes_for
from cloudshell_fog.web.api import Api, Root, metrics_resource
from cloudshell_fog.web.pty import make_ws_factory
from cloudshell_fog.web.site import make_site

log = Logger()
CLOSE_WAIT_SECONDS = 3.0  # how long shutdown waits for clients to answer the close


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve the cloudshell-fog gateway. Every option defaults from its "
        "environment variable (see docs/configuration.md)."
    )
    optParameters = [
        ["policy", None, None, "policy file (default: $POLICY_FILE, else config/policy.yaml)"],
        ["nodes", None, None, "nodes file (default: $NODES_FILE, else config/nodes.yaml)"],
        ["stop-grace", None, 5.0, "seconds shells get to end when the gateway stops", float],
    ]

    def opt_listen(self, description):
        """address to listen on, repeatable (default: $LISTEN_ADDR, else :8080)"""
        self.setdefault("listen", []).append(description)

    def postOptions(self):
        try:
            self["config"] = load_config(
                os.environ, self.get("listen"), self["policy"], self["nodes"]
            )
        except ConfigError as e:
            # One line, no usage text, no traceback.
            sys.stderr.write(f"cloudshell-fog: configuration error: {e}\n")
            raise SystemExit(2) from None


class Reloader:
    """
    Reloads policy.yaml and nodes.yaml (SIGHUP, or POST /v1/admin/reload):
    a bad file is refused with its one-line reason and the old configuration
    stays in force; running sessions are unaffected either way.
    """

    def __init__(self, config: Config, sessions, inventory, prober, audit, make_connector):
        self._config, self._sessions, self._inventory = config, sessions, inventory
        self._prober, self._audit, self._make_connector = prober, audit, make_connector

    def reload(self, who: str = "SIGHUP") -> tuple[bool, str]:
        c = self._config
        try:
            policy = _production_policy(load_policy(c.policy_file), c.policy_file, c.mode)
            nodes = load_nodes(c.nodes_file)
        except ConfigError as e:
            log.error("configuration reload refused, the old one stays in force: {why}", why=str(e))
            self._audit.emit(audit_events.CONFIG_RELOAD_FAILED, subject=who, error=str(e))
            return False, str(e)
        self._sessions.policy = policy
        self._inventory.update(nodes, self._make_connector)
        self._prober.sync()
        message = f"{len(policy.profiles)} profiles and {len(nodes)} nodes in force"
        log.info("configuration reloaded: {message}", message=message)
        self._audit.emit(audit_events.CONFIG_RELOADED, subject=who, policy_file=c.policy_file,
                         nodes_file=c.nodes_file, profiles=sorted(policy.profiles), nodes=[n.id for n in nodes])
        return True, message


@dataclass
class Parts:
    config: Config
    audit: Audit
    sessions: SessionManager
    inventory: NodeInventory
    api: Api
    site: object
    verifier: object
    prober: NodeProber
    reloader: Reloader


def gateway_directories(config: Config) -> list[str]:
    """Where the gateway keeps configuration, state and keys: hidden from sandboxed shells."""
    files = [config.policy_file, config.nodes_file, config.state_db, config.audit_log, config.secret_file]
    files += [node.ssh.key_file for node in config.nodes if node.ssh is not None]
    return sorted({os.path.dirname(os.path.abspath(f)) for f in files if f and f != ":memory:"})


def make_isolation(config: Config) -> Isolation:
    """Detect what this host allows (accounts, cgroups, bubblewrap) once, at start."""
    rules = config.policy.accounts
    cgroups = detect_cgroups()
    sandbox_problem = sandbox_works()  # probed even when no profile asks: a reload may add one
    if cgroups is None:
        log.warn("resource limits are OFF: no writable cgroup (memory_mb, pids and cpu are not enforced)")
    else:
        log.info("resource limits enforced with cgroup v{version}", version=cgroups.version)
    if os.geteuid() != 0:
        log.warn("not running as root: shells run as the gateway's own user ({user})", user=Accounts.current().name)
    return Isolation(Accounts(rules.home_root, rules.uid_min, rules.uid_max), cgroups, sandbox_problem,
                     gateway_directories(config))


def build_parts(config: Config, reactor, clock=None, store=None, isolation=None) -> Parts:
    """
    Build the gateway's objects (no I/O).  C{clock} drives session lifetimes
    (TTL, idle, retention, attach-token expiry) so tests can advance it;
    everything on the data path uses C{reactor}.
    """
    clock = clock or reactor
    audit = Audit(reactor, config.audit_log, config.audit_max_bytes, config.audit_backups)
    isolation = isolation or make_isolation(config)
    metrics = Metrics()
    connectors = {"local": lambda node: LocalPtyConnector(node, reactor, isolation=isolation),
                  "ssh": lambda node: SshConnector(node, reactor),
                  "container": lambda node: ContainerConnector(node, reactor, policy=lambda: sessions.policy,
                                                               runtime=node.container.runtime)}

    def make_connector(node):
        return connectors[node.connector](node)

    inventory = NodeInventory([NodeState(node, make_connector(node)) for node in config.nodes])
    metrics.bind(inventory)
    prober = NodeProber(inventory, reactor, config.health_interval, config.health_failures)
    tokens = AttachTokens(config.session_token_secret, clock)
    sessions = SessionManager(
        config.policy,
        inventory,
        tokens,
        audit,
        clock,
        scrollback_bytes=config.scrollback_bytes,
        retention_seconds=config.terminated_retention_seconds,
        require_digest=config.require_digest,
        reactor=reactor,
        store=store,
        max_sessions=config.max_sessions,
        creation_limit=TokenBuckets(clock, config.create_rate_per_minute, config.create_burst),
        flush_bytes=flush_bytes_for(config.ws_max_message_bytes),  # the limit binds our own frames too
        metrics=metrics,
    )
    verifier = OidcVerifier(config.oidc, clock) if config.oidc else DevVerifier(config.dev_groups)
    ws_factory = make_ws_factory(config.ws_max_message_bytes, config.ws_ping_interval)
    reloader = Reloader(config, sessions, inventory, prober, audit, make_connector)
    api = Api(config, verifier, sessions, tokens, audit, ws_factory, inventory, metrics, reloader)
    site = make_site(Root(api), reactor, config.http_idle_timeout, config.http_request_timeout)
    return Parts(config, audit, sessions, inventory, api, site, verifier, prober, reloader)


class SessionsService(Service):
    """
    Opens the audit log first.  On stop (listeners already closed): ends
    every shell, which sends each attachment its exit frame and close, waits
    for those close handshakes (bounded), then closes the audit log.
    """

    def __init__(self, parts: Parts, stop_grace: float, reactor):
        self._parts, self._grace, self._reactor = parts, stop_grace, reactor

    def privilegedStartService(self):
        super().privilegedStartService()
        try:
            self._parts.audit.open()
        except OSError as e:
            sys.stderr.write(f"cloudshell-fog: configuration error: AUDIT_LOG: value: "
                             f"cannot open {self._parts.config.audit_log}: {e.strerror}\n")
            raise SystemExit(2) from None

    def startService(self):
        super().startService()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:  # two descriptors per session (PTY and socket): take all the host allows
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("file descriptor limit {limit}, pseudo-terminal limit {ptys}",
                 limit=max(soft, hard), ptys=_pty_max())
        signal.signal(signal.SIGHUP, lambda *_: self._reactor.callFromThread(self._parts.reloader.reload))
        reconciled = self._parts.sessions.restore()
        if any(n.connector == "container" for n in self._parts.config.nodes):
            # Containers outlive a crashed gateway: their sessions are terminated now, so they go.
            left = [name for name, _ in session_containers()]
            if left:
                remove_containers(left)
                log.info("removed {count} containers of sessions from before the restart", count=len(left))
        if reconciled:
            log.info("{count} sessions were running when the gateway last stopped: now terminated "
                     "(gateway-restart)", count=reconciled)
        if isinstance(self._parts.verifier, OidcVerifier):
            self._parts.verifier.start()
        if not become_subreaper():
            log.warn("could not become a child subreaper; orphans of shells go to init")
        c = self._parts.config
        log.info("cloudshell-fog starting in {mode} mode, policy {policy}, nodes {nodes}, tokens from {auth}",
                 mode=c.mode, policy=c.policy_file, nodes=c.nodes_file,
                 auth=c.oidc.issuer if c.oidc else "development mode (any non-empty token)")

    def stopService(self):
        super().stopService()
        if isinstance(self._parts.verifier, OidcVerifier):
            self._parts.verifier.stop()
        tracker = self._parts.api.ws_factory.tracker
        d = self._parts.sessions.stop(self._grace)
        d.addBoth(lambda _: [c.stop() for c in self._parts.inventory.connectors()])
        d.addBoth(lambda _: tracker.drained(self._reactor, CLOSE_WAIT_SECONDS))
        d.addBoth(lambda _: self._parts.sessions.close())
        d.addBoth(lambda _: self._parts.audit.close())
        return d


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor  # the one place we touch the global reactor
    config = options["config"]
    try:
        store = SqliteSessionStore(config.state_db)
    except StoreError as e:
        sys.stderr.write(f"cloudshell-fog: configuration error: STATE_DB: value: {e}\n")
        raise SystemExit(2) from None
    for index, node in enumerate(config.nodes):
        if node.connector == "container":
            if not runtime_works(node.container.runtime):
                sys.stderr.write(f"cloudshell-fog: configuration error: {config.nodes_file}: "
                                 f"nodes[{index}].container.runtime: podman cannot run containers with "
                                 f"{node.container.runtime} here (install podman and {node.container.runtime})\n")
                raise SystemExit(2)
            log.info("node {node_id}: containers run with podman and {runtime}", node_id=node.id,
                     runtime=node.container.runtime)
    isolation = make_isolation(config)
    if not config.development:
        problem = None
        if isolation.cgroups is None and any(n.connector == "local" for n in config.nodes):
            problem = "resource limits are configured but no cgroup is writable (run as root with cgroups)"
        elif (any(p.sandbox == "namespaces" for p in config.policy.profiles.values()) and isolation.sandbox_problem
              and any(n.connector == "local" for n in config.nodes)):  # only local shells use bubblewrap
            problem = f"a profile asks for sandbox: namespaces, but {isolation.sandbox_problem}"
        if problem:
            sys.stderr.write(f"cloudshell-fog: configuration error: CLOUDSHELL_ENV: production: {problem}\n")
            raise SystemExit(2)
    parts = build_parts(config, reactor, store=store, isolation=isolation)
    root = MultiService()
    SessionsService(parts, options.get("stop-grace", 5.0), reactor).setServiceParent(root)
    parts.prober.setServiceParent(root)
    reaper = TimerService(5, _reap)
    reaper.clock = reactor
    reaper.setServiceParent(root)
    for description in config.listen:
        ListenService(reactor, description, parts.site).setServiceParent(root)
    if config.metrics_listen:
        metrics_site = Site(metrics_resource(parts.api.metrics), reactor=reactor)
        for description in config.metrics_listen:
            ListenService(reactor, description, metrics_site).setServiceParent(root)
    # twistd re-raises the signal that stopped it once the reactor is done, so a
    # SIGTERM'd gateway would die "killed by SIGTERM" even after a clean stop.
    # Our stop is bounded and complete (exit frames sent, shells ended, store
    # closed): report it as the success it is.
    reactor.addSystemEventTrigger("after", "shutdown", _clean_exit, reactor)
    if config.oidc is None:
        exposed = [d for d in config.listen if not _loopback_only(d)]
        log.warn(
            "development mode: any non-empty bearer token is accepted{exposure}",
            exposure=f"; and {', '.join(exposed)} is reachable from other hosts" if exposed
            else " (listening on loopback only)",
        )
    return root


def _loopback_only(description: str) -> bool:
    """True when an endpoint description listens on a loopback interface or a UNIX socket."""
    if description.startswith("unix:"):
        return True
    match = re.search(r"(?:^|:)interface=((?:\\.|[^:\\])*)", description)
    if match is None:
        return False
    interface = re.sub(r"\\(.)", r"\1", match.group(1))
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface == "localhost"


class ListenService(StreamServerEndpointService):
    """Listen on one endpoint; a port that cannot be had stops start-up with one line."""

    def __init__(self, reactor, description: str, factory):
        super().__init__(endpoints.serverFromString(reactor, description), factory)
        self._description = description
        self._raiseSynchronously = True  # as strports.service(): fail start-up, not just log

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            why = e.socketError.strerror if isinstance(e.socketError, OSError) else str(e.socketError)
            sys.stderr.write(f"cloudshell-fog: cannot listen on {self._description}: {why}\n")
            raise SystemExit(1) from None


def _pty_max() -> str:
    try:
        with open("/proc/sys/kernel/pty/max") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _clean_exit(reactor) -> None:
    if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
        reactor._exitSignal = None


def _reap():
    try:
        reap_orphans()
    except Exception:
        log.failure("reaping orphaned processes failed")
