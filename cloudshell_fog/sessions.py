"""
Sessions: the record, its state machine and the manager that drives it.

States: C{pending} (placed, runtime starting) -> C{running} -> C{terminated}
(with a reason: C{deleted}, C{ttl}, C{idle}, C{exited}, C{node-lost},
C{gateway-restart}).  A session deleted by its owner is forgotten at once;
one that ended by itself stays visible for C{retention} seconds.

The manager reads time only from the clock it is given.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from cloudshell_fog import audit as events
from cloudshell_fog.audit import rfc3339
from cloudshell_fog.auth import Principal
from cloudshell_fog.config import Policy, Profile
from cloudshell_fog.errors import ApiError, not_found
from cloudshell_fog.metrics import Metrics
from cloudshell_fog.placement import NoCapacity, place
from cloudshell_fog.policy import SessionRequest, admit
from cloudshell_fog.runtime.interface import RuntimeUnavailable, TerminalSize
from cloudshell_fog.store import SqliteSessionStore
from cloudshell_fog.terminal import FLUSH_BYTES, TerminalHub

PENDING, RUNNING, TERMINATED = "pending", "running", "terminated"
TERMINATE_TIMEOUT = 15.0


@dataclass(eq=False)
class Session:
    id: str
    subject: str
    profile: Profile
    ttl_seconds: int
    image_ref: str | None
    created_at: float
    seq: int
    status: str = PENDING
    placement: dict | None = None
    last_input: float = 0.0
    hub: TerminalHub | None = None
    stream: object = None
    ending_reason: str | None = None
    termination: dict | None = None
    ended_at: float | None = None
    deleted: bool = False
    timers: list = field(default_factory=list)

    @property
    def expires_at(self) -> float:
        return self.created_at + self.ttl_seconds

    def record(self) -> dict:
        """What the store keeps of the session."""
        return {"id": self.id, "subject": self.subject, "profile": self.profile.name,
                "ttl_seconds": self.ttl_seconds, "image_ref": self.image_ref, "created_at": self.created_at,
                "seq": self.seq, "status": self.status, "placement": self.placement,
                "termination": self.termination, "ended_at": self.ended_at}

    def describe(self) -> dict:
        """The session as GET /v1/sessions/{id} shows it."""
        body = {
            "session_id": self.id,
            "status": self.status,
            "placement": self.placement,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "image_ref": self.image_ref,
        }
        if self.termination is not None:
            body["termination"] = dict(self.termination)
        return body


class SessionManager:
    _log = Logger()

    def __init__(
        self,
        policy: Policy,
        inventory,
        tokens,
        audit,
        clock,
        scrollback_bytes: int = 128 * 1024,
        retention_seconds: int = 300,
        require_digest: bool = False,
        reactor=None,
        store=None,
        max_sessions: int = 1000,
        creation_limit=None,
        flush_bytes: int = FLUSH_BYTES,
        metrics=None,
    ):
        self.policy = policy
        self._inventory = inventory
        self._tokens = tokens
        self._audit = audit
        self._clock = clock  # session lifetimes: TTL, idle, retention
        self._reactor = reactor or clock  # the data path: output coalescing, kill bounds
        self._scrollback_bytes = scrollback_bytes
        self._retention = retention_seconds
        self._require_digest = require_digest
        self._store = store if store is not None else SqliteSessionStore(":memory:")
        self._max_sessions = max_sessions
        self._flush_bytes = flush_bytes
        self._metrics = metrics or Metrics()
        self._creation_limit = creation_limit  # TokenBuckets per subject, or None
        self._sessions: dict[str, Session] = {}
        self._ending: dict[str, Deferred] = {}
        self._seq = 0

    # -- queries

    def _owned(self, principal: Principal, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None or session.deleted or session.subject != principal.subject:
            raise not_found()
        return session

    def get(self, principal: Principal, session_id: str) -> Session:
        return self._owned(principal, session_id)

    def active_count(self, subject: str) -> int:
        return sum(1 for s in self._sessions.values() if s.subject == subject and s.status != TERMINATED)

    def running(self) -> list[Session]:
        return [s for s in self._sessions.values() if s.status != TERMINATED]

    def list(self, principal: Principal, limit: int, cursor: str | None) -> tuple[list[Session], str | None]:
        """The caller's sessions, newest first, and the cursor of the next page (or None)."""
        before = None
        if cursor is not None:
            before = _decode_cursor(cursor)
        mine = sorted(
            (s for s in self._sessions.values() if s.subject == principal.subject and not s.deleted),
            key=lambda s: s.seq,
            reverse=True,
        )
        if before is not None:
            mine = [s for s in mine if s.seq < before]
        page = mine[:limit]
        more = len(mine) > limit
        return page, (_encode_cursor(page[-1].seq) if more and page else None)

    # -- creation

    async def create(self, principal: Principal, request: SessionRequest) -> tuple[Session, dict]:
        """Admit, place and start a session; return it and its attach grant."""
        started = self._reactor.seconds()
        try:
            session, grant = await self._create(principal, request)
        except ApiError as e:
            self._metrics.created.labels(e.code if e.status != 403 else "policy_denied", e.rule_id or "").inc()
            raise
        self._metrics.created.labels("ok", "").inc()
        self._metrics.start_seconds.observe(self._reactor.seconds() - started)
        placement = session.placement
        failover = any(r.startswith("failover:") for r in placement["reasons"])
        self._metrics.placements.labels(placement["tier"], "true" if failover else "false").inc()
        return session, grant

    async def _create(self, principal: Principal, request: SessionRequest) -> tuple[Session, dict]:
        if self._creation_limit is not None:
            wait = self._creation_limit.take(principal.subject)
            if wait:
                raise ApiError(429, "rate_limited", f"You are creating sessions too fast; try again in {wait} s.",
                               headers={"Retry-After": str(wait)})
        if len(self.running()) >= self._max_sessions:
            raise ApiError(503, "gateway_full", "The gateway has as many sessions as it may run; try again "
                                                "later.", headers={"Retry-After": "30"})
        profile = self.policy.profiles.get(request.profile)
        if profile is None:
            raise ApiError(
                400,
                "unknown_profile",
                f"There is no profile named {request.profile!r}; GET /v1/profiles lists the ones you may use.",
            )
        decision = admit(
            principal,
            request,
            profile,
            self.policy,
            self.active_count(principal.subject),
            require_digest=self._require_digest,
        )
        if not decision.allowed:
            self._audit.emit(
                events.POLICY_DENIED, subject=principal.subject, rule_id=decision.rule_id, profile=profile.name
            )
            raise ApiError(403, "policy_denied", decision.reason, rule_id=decision.rule_id)
        views = self._inventory.views()
        able = [v for v in views if self._inventory.connector(v.id).supports(profile, decision.image_ref)]
        if views and not able:
            what = f"image {decision.image_ref} (images run on container nodes)" if decision.image_ref else \
                f"profile {profile.name!r}'s isolation (sandbox or network: none needs a local or container node)"
            raise ApiError(500, "no_capacity", f"No node can run {what}.")
        try:
            ranking = place(request.placement_hint, able)
        except NoCapacity as e:
            raise ApiError(500, "no_capacity", str(e)) from None

        self._seq += 1
        session = Session(
            id=str(uuid.uuid4()),
            subject=principal.subject,
            profile=profile,
            ttl_seconds=request.ttl_seconds,
            image_ref=decision.image_ref,
            created_at=self._clock.seconds(),
            seq=self._seq,
        )
        session.last_input = session.created_at
        self._sessions[session.id] = session
        self._store.save(session.record())  # a crash while starting is reconciled at the next start

        failures: list[str] = []
        failover: list[str] = []
        for candidate in ranking.candidates:
            node = candidate.node
            self._inventory.reserve(node.id)
            try:
                stream = await self._inventory.connector(node.id).allocate(
                    session.id, profile, decision.image_ref, TerminalSize(), subject=principal.subject
                )
            except RuntimeUnavailable as e:
                self._inventory.release(node.id)
                failures.append(f"{node.id}: {e.message.rstrip('.')}")
                failover.append(f"failover:{node.id}:{e.why}")
                self._audit.emit(events.RUNTIME_FAILED, session.id, principal.subject, node_id=node.id, why=e.why)
                continue
            except BaseException:
                self._inventory.release(node.id)
                self._discard(session)
                raise
            session.placement = {
                "region": node.region,
                "node_id": node.id,
                "tier": node.tier,
                "reasons": failover + list(candidate.reasons),
            }
            break
        else:
            self._discard(session)
            if failover and all(reason.endswith(":pty-exhausted") for reason in failover):
                raise ApiError(503, "pty_exhausted", "No node has a pseudo-terminal or file descriptor free: "
                               + "; ".join(failures) + ".", headers={"Retry-After": "30"})
            raise ApiError(
                500, "runtime_failed", "No node could start the shell: " + "; ".join(failures) + "."
            )

        if session.deleted or session.ending_reason:
            # Ended (deleted, or the gateway stopping) while its runtime was starting.
            self._inventory.release(node.id)
            self._discard(session)
            stream.terminate(0)
            if session.ending_reason == "gateway-restart":
                raise ApiError(503, "shutting_down", "The gateway is shutting down; try again shortly.")
            raise ApiError(409, "session_ended", "The session was deleted while its shell was starting.")
        self._start(session, stream)
        self._store.save(session.record())  # committed before the client hears of the session
        self._audit.emit(events.SESSION_CREATED, session.id, session.subject, session.placement,
                         profile=profile.name, ttl_seconds=session.ttl_seconds, image_ref=session.image_ref)
        self._audit.emit(events.PLACEMENT_DECIDED, session.id, session.subject, session.placement,
                         reasons=session.placement["reasons"])
        self._audit.emit(events.RUNTIME_ALLOCATED, session.id, session.subject, session.placement,
                         node_id=session.placement["node_id"], image_ref=session.image_ref,
                         image_digest=getattr(stream, "image_digest", None))
        return session, self.grant(session)

    def _start(self, session: Session, stream) -> None:
        session.stream = stream
        session.hub = TerminalHub(
            stream,
            self._reactor,
            self._scrollback_bytes,
            on_input=lambda: self._touched(session),
            on_exit=lambda code: self._exited(session, code),
            flush_bytes=self._flush_bytes,
            metrics=self._metrics,
        )
        if session.status == TERMINATED:  # the shell died before the hub was set
            return
        session.status = RUNNING
        session.timers.append(self._clock.callLater(session.ttl_seconds, self._end, session, "ttl"))
        if session.profile.idle_timeout_seconds:
            session.timers.append(
                self._clock.callLater(session.profile.idle_timeout_seconds, self._check_idle, session)
            )

    def grant(self, session: Session) -> dict:
        token, expires = self._tokens.mint(session.id, session.subject)
        return {"token": token, "expires_at": rfc3339(expires)}

    def mint_attach(self, principal: Principal, session_id: str) -> tuple[Session, dict]:
        session = self._owned(principal, session_id)
        if session.status == TERMINATED:
            raise ApiError(
                404, "session_terminated", "The session has ended; create a new one with POST /v1/sessions."
            )
        return session, self.grant(session)

    def attachable(self, session_id: str, subject: str) -> Session | None:
        """The running session a valid attach token may open, else None."""
        session = self._sessions.get(session_id)
        if session is None or session.deleted or session.subject != subject or session.status != RUNNING:
            return None
        return session

    # -- activity and timeouts

    def _touched(self, session: Session) -> None:
        session.last_input = self._clock.seconds()

    def _check_idle(self, session: Session) -> None:
        if session.status != RUNNING:
            return
        timeout = session.profile.idle_timeout_seconds
        idle = self._clock.seconds() - session.last_input
        if idle >= timeout:
            self._end(session, "idle")
        else:
            session.timers.append(self._clock.callLater(timeout - idle, self._check_idle, session))

    # -- ending

    def _end(self, session: Session, reason: str, grace: float | None = None) -> Deferred:
        """End the session's shell; fires when it has ended (bounded)."""
        if session.status == TERMINATED:
            return succeed(None)
        if session.id in self._ending:
            return self._ending[session.id]
        session.ending_reason = session.ending_reason or reason
        if session.stream is None:  # still pending: create() ends it when the runtime is up
            return succeed(None)
        ended = session.stream.terminate(grace)
        ended.addTimeout(TERMINATE_TIMEOUT, self._reactor)
        ended.addErrback(
            lambda f: self._log.failure("session {session_id} did not end in time", f, session_id=session.id)
        )
        done = Deferred()

        def finished(_):
            self._ending.pop(session.id, None)
            done.callback(None)

        ended.addBoth(finished)
        if not done.called:
            self._ending[session.id] = done
        return done

    def _exited(self, session: Session, code: int) -> None:
        # A runtime may know better than "exited": an SSH node lost under the session.
        reason = session.ending_reason or getattr(session.stream, "end_reason", None) or "exited"
        for timer in session.timers:
            if timer.active():
                timer.cancel()
        session.timers = []
        session.status = TERMINATED
        session.termination = {"reason": reason, "exit_code": code}
        session.ended_at = self._clock.seconds()
        if session.placement is not None:
            self._inventory.release(session.placement["node_id"])
        self._audit.emit(events.SESSION_TERMINATED, session.id, session.subject, session.placement,
                         reason=reason, exit_code=code)
        self._metrics.ended.labels(reason).inc()
        if session.deleted or not self._retention:
            self._forget(session)
        else:
            self._store.save(session.record())
            session.timers.append(self._clock.callLater(self._retention, self._forget, session))

    def _forget(self, session: Session) -> None:
        if session.hub is not None:
            session.hub.close()
        self._discard(session)

    def _discard(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        self._store.remove(session.id)

    def restore(self) -> int:
        """
        Reload the store after a start.  A session that was pending or running
        lost its shell with the previous gateway (local shells die with it, and
        an SSH channel with its connection): it is terminated with reason
        C{gateway-restart}.  Ended sessions stay visible for what is left of
        their retention.  Return how many sessions were reconciled.
        """
        now, reconciled = self._clock.seconds(), 0
        for record in self._store.load():
            self._seq = max(self._seq, record["seq"])
            profile = self.policy.profiles.get(record["profile"]) or Profile(
                record["profile"], record["ttl_seconds"], 0, 1.0, 16, (), None)
            session = Session(id=record["id"], subject=record["subject"], profile=profile,
                              ttl_seconds=record["ttl_seconds"], image_ref=record["image_ref"],
                              created_at=record["created_at"], seq=record["seq"], status=TERMINATED,
                              placement=record["placement"], termination=record["termination"],
                              ended_at=record["ended_at"])
            if record["status"] != TERMINATED:
                reconciled += 1
                session.termination = {"reason": "gateway-restart", "exit_code": None}
                session.ended_at = now
                self._store.save(session.record())
                self._audit.emit(events.SESSION_TERMINATED, session.id, session.subject, session.placement,
                                 reason="gateway-restart", exit_code=None)
            left = (session.ended_at or now) + self._retention - now
            if left <= 0:
                self._store.remove(session.id)
                continue
            self._sessions[session.id] = session
            session.timers.append(self._clock.callLater(left, self._forget, session))
        return reconciled

    async def delete(self, principal: Principal, session_id: str) -> None:
        session = self._owned(principal, session_id)
        session.deleted = True
        if session.status == TERMINATED:
            self._forget(session)
            return
        await self._end(session, "deleted")
        self._discard(session)  # committed before the client is answered

    def close(self) -> None:
        """Release the store (after L{stop})."""
        self._store.close()

    def ping(self) -> bool:
        return self._store.ping()

    def stop(self, grace: float = 0.5) -> Deferred:
        """End every shell (gateway shutdown); fires when all have ended."""
        ending = [self._end(s, "gateway-restart", grace) for s in list(self._sessions.values())
                  if s.status != TERMINATED]
        return DeferredList(ending, consumeErrors=True)


def _encode_cursor(seq: int) -> str:
    raw = json.dumps({"before": seq}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))["before"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        return value
    except (ValueError, KeyError, TypeError, UnicodeEncodeError):
        raise ApiError(
            400, "invalid_cursor", "The cursor is not one this gateway gave out; start again without it."
        ) from None
