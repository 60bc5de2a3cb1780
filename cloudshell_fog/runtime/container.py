"""
Sessions in OCI containers: C{podman run --rm -it} of the session's image under
a PTY, so resize, exit codes, flow control, scrollback and re-attach behave
exactly as for a local shell (the PTY side is L{LocalPtyStream}).

- The image is used by digest: C{image_ref} (or the profile's default image)
  is resolved to the local image's digest, which the container is started
  from and the audit records; a missing image is pulled only from registries
  the policy allows, bounded by C{pull_timeout}, else the session fails at
  once with a message naming the image.
- Limits from the profile (C{--memory}, C{--cpus}, C{--pids-limit}),
  C{--network none} for C{network: none}, no capabilities, no new
  privileges, a read-only root with a writable per-session home volume.
- Containers are named C{cloudshell-<session id>} and labelled, so terminate
  (C{podman rm -f}), reconciliation after a restart and leak checks find them.

Host facts measured on this kind of machine (root, cgroup v1/v2 hybrid):
podman 4.3 runs containers with C{runc} (C{crun} fails in hybrid mode), and
C{--ulimit nofile/nproc} must be given explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.internet import threads
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from cloudshell_fog.images import parse_image_ref
from cloudshell_fog.runtime.interface import RuntimeUnavailable, TerminalSize
from cloudshell_fog.runtime.local import LocalPtyConnector

PODMAN = shutil.which("podman") or "/usr/bin/podman"
LABEL = "cloudshell-fog.session"
HOME = "/home/cloudshell"
_log = Logger()


def podman(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)


def runtime_works(runtime: str) -> bool:
    """Whether podman is here and answers with C{runtime} as its OCI runtime."""
    if not os.access(PODMAN, os.X_OK):
        return False
    try:
        return podman("--runtime", runtime, "info", "--format", "{{.Host.OCIRuntime.Name}}").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def session_containers() -> list[tuple[str, str]]:
    """(container name, session id) of every container this gateway ever started and left."""
    # Not --format json nor --filter label=: podman 4.3 returned [] for running -it containers with both.
    result = podman("ps", "-a", "--format", '{{.Names}} {{index .Labels "' + LABEL + '"}}')
    if result.returncode != 0:
        return []
    found = []
    for line in result.stdout.splitlines():
        name, _, session = line.strip().partition(" ")
        if session and session != "<no value>":
            found.append((name, session))
    return found


def remove_containers(names: list[str]) -> None:
    if names:
        podman("rm", "-f", "-t", "1", *names, timeout=60)


class ContainerConnector(LocalPtyConnector):
    """Starts each session's shell in a container of its image, on this host."""

    def __init__(self, node, reactor, clock=None, policy=None, runtime: str = "runc", **kw):
        super().__init__(node, reactor, clock, **kw)
        self._policy, self._runtime = policy, runtime
        self._container = node.container

    def allocate(self, session_id, profile, image_ref, size: TerminalSize = TerminalSize(), subject=None):
        image = image_ref or (profile.image_ref if profile is not None else None)
        if image is None:
            return fail(RuntimeUnavailable("no-image", f"Node {self.node_id} runs containers: the request or the "
                                                       "profile must name an image_ref."))
        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.resolve, image)
        d.addCallback(lambda digest_ref: self._start(session_id, profile, size, digest_ref))
        return d

    def probe(self):
        """The node can start containers while podman answers (no network: no RTT)."""
        def check():
            try:
                ok = podman("--runtime", self._runtime, "info", "--format", "{{.Host.OCIRuntime.Name}}",
                            timeout=10).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if not ok:
                raise RuntimeUnavailable("podman-unavailable", f"podman with {self._runtime} does not answer")
            return None

        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), check)

    def supports(self, profile, image_ref=None) -> bool:
        """Containers run images; a container is the sandbox, and --network none honours network: none."""
        return image_ref is not None

    def resolve(self, image: str) -> str:
        """C{name@sha256:...} of the local image for C{image}, pulling it first when allowed."""
        ref = parse_image_ref(image)
        digest = self._inspect(image)
        if digest is None:
            allowed = self._policy().images.allowed_registries if self._policy is not None else ()
            if not allowed or ref.registry not in allowed:
                raise RuntimeUnavailable("image-missing", f"Image {image} is not on node {self.node_id}, and "
                                                          f"{ref.registry} is not a registry the policy allows "
                                                          "pulling from; load it with podman load/import.")
            try:
                pulled = podman("pull", "--quiet", image, timeout=self._container.pull_timeout)
            except subprocess.TimeoutExpired:
                raise RuntimeUnavailable("pull-timeout", f"Pulling {image} took longer than "
                                                         f"{self._container.pull_timeout:g} s.") from None
            if pulled.returncode != 0:
                last = (pulled.stderr.strip().splitlines() or ["unknown error"])[-1]
                raise RuntimeUnavailable("pull-failed", f"Cannot pull {image}: {last}")
            digest = self._inspect(image)
        if digest is None:
            raise RuntimeUnavailable("image-missing", f"Image {image} has no digest on node {self.node_id}.")
        if ref.digest is not None and ref.digest != digest and not self._has_digest(image, ref.digest):
            raise RuntimeUnavailable("digest-mismatch", f"Image {image} resolves to {digest}, not {ref.digest}.")
        return f"{ref.registry}/{ref.path}@{ref.digest or digest}"

    @staticmethod
    def _inspect(image: str) -> str | None:
        result = podman("image", "inspect", "--format", "{{.Digest}}", image)
        digest = result.stdout.strip()
        return digest if result.returncode == 0 and digest.startswith("sha256:") else None

    @staticmethod
    def _has_digest(image: str, digest: str) -> bool:
        result = podman("image", "inspect", "--format", "{{json .RepoDigests}}", image)
        return result.returncode == 0 and digest in result.stdout

    def argv(self, session_id: str, profile, digest_ref: str, home: str) -> list[str]:
        name = f"cloudshell-{session_id}"
        argv = [PODMAN, "--runtime", self._runtime, "run", "--rm", "-it", "--name", name,
                "--label", f"{LABEL}={session_id}", "--hostname", "cloudshell",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "--read-only", "--tmpfs", "/tmp", "-v", f"{home}:{HOME}", "--workdir", HOME,
                "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
                "-e", "TERM=xterm-256color", "-e", f"HOME={HOME}", "-e", f"CLOUDSHELL_SESSION_ID={session_id}"]
        if profile is not None:
            memory = f"{profile.memory_mb}m"
            argv += ["--memory", memory, "--memory-swap", memory, "--cpus", f"{profile.cpu:g}",
                     "--pids-limit", str(profile.pids)]
            if profile.network == "none":
                argv += ["--network", "none"]
        return argv + [digest_ref, *self._node.shell]

    def _start(self, session_id, profile, size, digest_ref):
        workdir = self._make_workdir(session_id)  # the home volume
        env = {"PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
               "TERM": "xterm-256color", "CLOUDSHELL_SESSION_ID": session_id, "HOME": workdir}
        stream = self._spawn_on_pty(session_id, self.argv(session_id, profile, digest_ref, workdir), env,
                                    workdir, size, workdir, None)
        stream.image_digest = digest_ref.rsplit("@", 1)[1]
        stream.on_end = lambda: self._remove(f"cloudshell-{session_id}")
        return stream

    def _remove(self, name: str) -> Deferred:
        """podman rm -f, off the reactor thread (the client process alone does not stop a container)."""
        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), remove_containers, [name])
        d.addErrback(lambda f: _log.failure("removing container {name} failed", f, name=name))
        return d
