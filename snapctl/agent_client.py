"""Talking to node agents: over HTTP(S) (``AgentTransport``, keep-alive) or in-process ("embedded").

Every call is bounded by the inventory's ``agent_timeout_s`` and raises ``AgentError``
subclasses naming the node; secrets (the token) never appear in messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from node_agent.models import (
    AgentStatus,
    CompleteResponse,
    ErrorBody,
    Health,
    LeaseInfo,
    PrepareResponse,
    TriggerResponse,
    VerifyFacts,
)
from snapctl.agent_credentials import TOKEN_HINT, AgentTokens, tls_context, warn_if_sent_in_clear
from snapctl.agent_transport import (
    MAX_BODY,
    AgentResponse,
    AgentTransport,
    AnswerTooLarge,
    ClosedUnanswered,
    TransportError,
    TransportTimeout,
)
from snapctl.config import Inventory
from snapctl.errors import (
    AgentConflict,
    AgentError,
    AgentRateLimited,
    AgentTimeout,
    AgentUnauthorized,
    AgentUnreachable,
    NotAnAgent,
)
from snapctl.ratelimit import parse_retry_after
from snapctl.timestamps import utc_text

if TYPE_CHECKING:  # imported in open_agents, only with embedded nodes: it imports this module
    from snapctl.embedded_agent import EmbeddedAgentClient

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@runtime_checkable
class AgentClient(Protocol):
    """One node's agent, as the orchestrator sees it. All methods are coroutines, and every call
    is bounded: past the client's timeout (a prepare's own ``timeout_s`` when given) it raises
    ``AgentTimeout`` naming the node, so callers need no timer of their own."""

    node: str

    async def health(self) -> Health: ...

    async def status(self) -> AgentStatus: ...

    async def prepare(self, run_id: str, lease_s: float, hold_at: datetime | None = None,
                      timeout_s: float | None = None) -> PrepareResponse:
        """Hold the engine under a lease, beginning at ``hold_at`` (UTC) if given and still ahead;
        raises ``AgentConflict`` (with the holder) on 409. ``timeout_s``: how long the answer may
        take (an engine's flush may take longer than any other request); default: the agent timeout."""
        ...

    async def renew(self, run_id: str, lease_s: float | None = None) -> LeaseInfo: ...

    async def complete(self, run_id: str) -> CompleteResponse: ...

    async def trigger(self, target: str | None = None, timeout_s: float | None = None) -> TriggerResponse:
        """``timeout_s``: how long the engine's snapshots may take (minutes on DingoDB and AresDB,
        region after region); default: the agent timeout."""
        ...

    async def restore_prepare(self, path: str | None = None, check_only: bool = False) -> None:
        """``check_only``: the agent only says whether it would take ``path`` (its 400 if not)."""
        ...

    async def verify(self) -> VerifyFacts: ...

    async def aclose(self) -> None: ...


# ---- HTTP -----------------------------------------------------------------------------------

UNREACHABLE_HINT = "is snapctl-agent running there, and listening on that address?"
# A request the agent's address took and never answered: something listens there, so "is it
# running" misleads; the agent, or its engine, is slow or stuck, and the timeout may be short.
TIMEOUT_SETTING = {"/v1/trigger": "snapctl trigger --timeout, or policy.trigger_timeout_s for a backup's",
                    "/v1/prepare": "policy.prepare_timeout_s"}
SLOW_HINT = ("the agent took the request but did not answer in time: it or its engine is slow or stuck "
             "(see the agent's log); if the work takes longer, raise {setting}")
# Said to the operator, not to the client the agent's own hint ("slow down") is for.
RATE_LIMITED_HINT = ("the agent limits requests per client address and endpoint (rate_per_s, burst in its config): "
                     "something else from this address asks it too often (a fast --watch, a script); its log names "
                     "the refused client")
# Sent again after a 429's Retry-After: the requests the agent answers alike however often they
# come, the reads and the lease's verbs, fenced by run id (a complete of a hold that ended answers
# released: false). The agent's own 429 comes before anything runs, but a proxy's in front of it
# need not: trigger (another engine snapshot each time) and restore-prepare (an etcd data dir rebuilt
# anew) are not repeated. Nor is prepare here: in a cluster backup the nodes already held wait at the
# barrier while it waits out a Retry-After (the agent's is 1 s at least), frozen for as long as
# prepare_timeout_s allows, not max_freeze_s; failing at once releases them all. A per-node backup,
# where no other node waits on it, sends it again itself (orchestrator._prepare).
_REPEATABLE_ON_429 = frozenset({"/v1/health", "/v1/status", "/v1/renew", "/v1/complete", "/v1/verify"})
_TRIES_ON_429 = 4  # in all: a limit that still refuses after three waits is no passing burst
CLOSED_MID_REQUEST = "the agent closed the connection mid-request (crashed or restarted?)"
_RETRY_AFTER_UNSAID_S = 1.0  # a 429 without a Retry-After snapctl can read (a proxy's)
# A 403 whose agent error says no hint (an agent before its 403s gave one, a proxy answering in
# its words): what the agent's own 403s would say, for the certificate or the request it refused.
REFUSED_CERT_HINT = ("the agent refused our client certificate, not our token: present one issued for one of the "
                     "agent's tls.client_names (auth.client_cert_file), or add its name there; its log names the "
                     "refused client")
REFUSED_REQUEST_HINT = ("the agent refused the request, not our token (a 403 comes whatever the token): it refuses "
                        "what a web page sends (an Origin or Sec-Fetch-Site header), so call it with snapctl, curl "
                        "or a script; check any proxy in front of it too")
_UNREADABLE_HINT = ("is a snapctl-agent listening there, of a version this snapctl speaks? its /v1/health names its "
                    "version")


class HttpAgentClient:
    """An agent over HTTP(S): ``http`` is the ``AgentTransport`` shared by every agent of its scheme.
    Whoever made it closes it; this client never does."""

    def __init__(self, node: str, base_url: str, http: AgentTransport, *, token: str | None,
                 timeout_s: float, token_hint: str | None = None, client_cert: bool = False) -> None:
        self.node = node
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token = token
        self._timeout_s = timeout_s
        self._token_hint = token_hint or TOKEN_HINT.format(env="$SNAPCTL_AGENT_TOKEN")
        self._unreachable_hint = UNREACHABLE_HINT
        self._client_cert = client_cert
        if self.base_url.startswith("https:") and not client_cert:
            # An mTLS agent drops a client without a certificate after the handshake: it looks like a dead agent.
            self._unreachable_hint += (
                " If it requires client certificates (mTLS), set auth.client_cert_file and client_key_file."
            )

    async def health(self) -> Health:
        return await self._call("GET", "/v1/health", model=Health)

    async def status(self) -> AgentStatus:
        return await self._call("GET", "/v1/status", model=AgentStatus)

    async def prepare(self, run_id: str, lease_s: float, hold_at: datetime | None = None,
                      timeout_s: float | None = None) -> PrepareResponse:
        request: dict[str, Any] = {"run_id": run_id, "lease_s": lease_s}
        if hold_at is not None:  # only when asked: an agent older than hold_at rejects the field
            request["hold_at"] = utc_text(hold_at)
        return await self._call("POST", "/v1/prepare", request, timeout_s, model=PrepareResponse)

    async def renew(self, run_id: str, lease_s: float | None = None) -> LeaseInfo:
        return await self._call("POST", "/v1/renew", {"run_id": run_id, "lease_s": lease_s}, model=LeaseInfo)

    async def complete(self, run_id: str) -> CompleteResponse:
        return await self._call("POST", "/v1/complete", {"run_id": run_id}, model=CompleteResponse)

    async def trigger(self, target: str | None = None, timeout_s: float | None = None) -> TriggerResponse:
        return await self._call("POST", "/v1/trigger", {"target": target}, timeout_s, model=TriggerResponse)

    async def restore_prepare(self, path: str | None = None, check_only: bool = False) -> None:
        request: dict[str, Any] = {"path": path}
        if check_only:  # only when asked: an agent older than check_only rejects the field
            request["check_only"] = True
        await self._call("POST", "/v1/restore-prepare", request)

    async def verify(self) -> VerifyFacts:
        return await self._call("POST", "/v1/verify", model=VerifyFacts)

    async def aclose(self) -> None:
        """Nothing to do: the shared pool is closed by whoever opened it (``open_agents``)."""

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
                    timeout_s: float | None = None, *, model: type[M] | None = None) -> Any:
        url = self.base_url + path
        timeout_s = timeout_s or self._timeout_s
        try:
            response = await self._http.call(method, url, body, self._headers, timeout_s)
        except TransportTimeout as exc:
            raise self._timed_out(path, timeout_s, delivered=exc.sent) from exc
        except TransportError as exc:
            raise self._transport_error(exc, path) from exc
        if response.status_code == 429:  # refused before the agent did anything: maybe repeated
            response = await self._after_rate_limit(method, url, path, body, timeout_s, response)
        if response.status_code == 204:
            return None
        if response.is_success:
            if model is not None:
                try:  # from the bytes, in one pass: json.loads and then the model took 2.5 times as long
                    return model.model_validate_json(response.content, extra="ignore")
                except ValidationError:
                    pass  # refused below as before, by the step that refuses it: the words say which
            try:
                data = response.json()
            except ValueError as exc:
                raise AgentError(self.node, f"the agent at {self.base_url} answered {path} with a non-JSON body",
                                 status=response.status_code) from exc
            try:
                # Fields snapctl does not know are left out: agents add fields and never repurpose
                # one (node_agent/models.py), so an agent upgraded before its control host still serves it.
                return data if model is None else model.model_validate(data, extra="ignore")
            except ValidationError as exc:  # another service on its port, or an agent of another version
                raise AgentError(self.node, f"the agent at {self.base_url} answered {path} with a document snapctl "
                                 f"cannot read ({_first_problem(exc)})", status=response.status_code,
                                 hint=_UNREADABLE_HINT) from exc
        status = response.status_code
        error = _error_body(response)
        message = self._blanked(error.error) if error else f"HTTP {status} from {self.base_url}{path}"
        hint = self._blanked(error.hint) if error else None
        if status in (401, 403):
            said = f"the agent at {self.base_url} refused us: {message}"
            if status == 403 and error is not None:
                # The agent said why, and the token is not it (a 403 comes whatever the token): a
                # certificate tls.client_names does not take, or a request it took for a web page's.
                # The token's hint would send the operator to rotate a token that is fine.
                raise AgentUnauthorized(self.node, said, status=status,
                                        hint=hint or (REFUSED_CERT_HINT if self._client_cert else REFUSED_REQUEST_HINT),
                                        refused="our client certificate" if self._client_cert else "our request")
            raise AgentUnauthorized(self.node, said, status=status, hint=self._token_hint)
        if status == 409:
            raise AgentConflict(self.node, message, status=status, hint=hint, holder=error.holder if error else None)
        if error is None and status != 429:  # a gateway's rate limit in front of an agent may say it bare
            raise NotAnAgent(self.node, f"what answers at {self.base_url} is no snapctl agent: HTTP {status} to "
                                        f"{path}, without an agent's error (another service on that port?)",
                             status=status, hint=f"point {self.node}'s agent: at the address its snapctl-agent "
                                                 "listens on (its log says it at start)")
        raise AgentError(self.node, message, status=status, hint=hint)

    async def _after_rate_limit(self, method: str, url: str, path: str, body: dict[str, Any] | None,
                                timeout_s: float, response: AgentResponse) -> AgentResponse:
        """The answer to a request the agent refused with ``response`` (429): sent again after each
        Retry-After if it is safe to repeat, while the wait ends within the call's timeout, at most
        ``_TRIES_ON_429`` times in all. A refusal that stands is raised naming the rate limit."""
        loop = asyncio.get_running_loop()
        deadline = response.deadline if response.deadline is not None else loop.time() + timeout_s
        tries, past_s = 1, None
        while path in _REPEATABLE_ON_429 and tries < _TRIES_ON_429:
            wait_s = _retry_after_s(response)
            if loop.time() + wait_s >= deadline:  # waiting it out would outlast the call: said now
                past_s = wait_s
                break
            await asyncio.sleep(wait_s)
            try:
                response = await self._http.call(method, url, body, self._headers, deadline - loop.time())
            except TransportTimeout as exc:
                raise self._timed_out(path, timeout_s, delivered=exc.sent) from exc
            except TransportError as exc:
                raise self._transport_error(exc, path) from exc
            if response.status_code != 429:
                return response
            tries += 1
        error = _error_body(response)
        said = self._blanked(error.error) if error else f"HTTP 429 from {self.base_url}{path}"
        times = "once" if tries == 1 else f"{tries} times in {loop.time() - (deadline - timeout_s):.1f}s"
        waited = (f" (it asked to wait {past_s:g}s, past the call's {timeout_s:g}s timeout)"
                  if past_s is not None else "")
        raise AgentRateLimited(self.node, f"the agent's rate limit refused {path} {times}{waited}: {said}",
                               retry_after_s=_retry_after_s(response), said=said or "", hint=RATE_LIMITED_HINT)

    def _blanked(self, said: str | None) -> str | None:
        """What the agent said, with our token blanked: a proxy or gateway in front of an agent may
        echo the request it refused, and the message goes to logs, status output and manifests."""
        return said.replace(self._token, "<token>") if said and self._token else said

    def _timed_out(self, path: str, timeout_s: float, delivered: bool = True) -> AgentTimeout:
        hint = (SLOW_HINT.format(setting=TIMEOUT_SETTING.get(path, "policy.agent_timeout_s")) if delivered
                else self._unreachable_hint)
        return AgentTimeout(self.node, f"no answer from the agent at {self.base_url} within {timeout_s:g}s "
                                       f"({path})", hint=hint, delivered=delivered)

    def _transport_error(self, exc: TransportError, path: str) -> AgentError:
        if isinstance(exc, AnswerTooLarge):
            # Not an unreachable agent, and no forcing past it: whatever answers so is no agent of ours.
            announced = f" ({exc.size} bytes announced)" if exc.size is not None else ""
            return NotAnAgent(self.node, f"the agent at {self.base_url} answered {path} with a body over snapctl's "
                                         f"limit of {MAX_BODY // (1024 * 1024)} MiB for one answer{announced}",
                              status=exc.status, hint=f"no snapctl agent answers so: check what listens at "
                                                      f"{self.base_url}, and set {self.node}'s agent: to the address "
                                                      "its snapctl-agent listens on")
        reason = str(exc) or type(exc).__name__
        tls = self.base_url.startswith("https:")
        if "mismatch, certificate is not valid for" in reason:
            # The CA is right here (the chain verified): the address snapctl dials is not one the
            # certificate names, so pointing auth.ca_file elsewhere would not help.
            host = urlsplit(self.base_url).hostname
            return AgentUnreachable(self.node, f"tls with the agent at {self.base_url} failed: {reason}",
                                    hint=f"the agent's certificate does not name {host}, the host snapctl was "
                                         "given for it (nodes[].agent, or restore.agent for a scratch agent): "
                                         "use a name the certificate was issued for, or reissue the "
                                         f"certificate with {host} in its subjectAltName",
                                    delivered=exc.sent)
        if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason.lower():
            return AgentUnreachable(self.node, f"tls with the agent at {self.base_url} failed: {reason}",
                                    hint="point auth.ca_file at the CA that signed the agent's certificate",
                                    delivered=exc.sent)
        if tls and "WRONG_VERSION_NUMBER" in reason:
            return AgentUnreachable(self.node, f"tls with the agent at {self.base_url} failed: it answers in plain "
                                    "http", hint="use http:// for it, or give the agent tls.cert_file and key_file",
                                    delivered=exc.sent)
        if isinstance(exc, ClosedUnanswered) and (exc.gone or not exc.fresh):
            # Killed mid-request, not a protocol mismatch: a mismatch ends a fresh connection only,
            # and leaves the agent listening.
            reason = CLOSED_MID_REQUEST
        elif isinstance(exc, ClosedUnanswered):  # the reason is in the reason: `snapctl status` shows no hints per node
            if not tls:
                reason += " (a tls agent does so to plain http: use https:// for it)"
            elif not self._client_cert:
                reason += (" (an agent that requires client certificates does so: set auth.client_cert_file and "
                           "client_key_file)")
        return AgentUnreachable(self.node, f"cannot reach the agent at {self.base_url}: {reason}",
                                hint=self._unreachable_hint, delivered=exc.sent)


def _retry_after_s(response: AgentResponse) -> float:
    said = (response.headers or {}).get(b"retry-after")
    seconds = parse_retry_after(said.decode("latin-1") if said else None)
    return _RETRY_AFTER_UNSAID_S if seconds is None else seconds


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "the document"
    message = str(error.get("msg", "invalid"))
    return f"{where}: {message[:1].lower() + message[1:]}"


def _error_body(response: AgentResponse) -> ErrorBody | None:
    if response.is_success:
        return None
    try:
        return ErrorBody.model_validate(response.json(), extra="ignore")  # a newer agent's fields too
    except ValueError:
        return None


# ---- the whole inventory ----------------------------------------------------------------------

# Embedded engines run in threads; more than this many at once only adds contention.
_MAX_EMBEDDED_THREADS = 64
_RECORD_WAIT_S = 5.0  # a status has an embedded node's hold record only while it looks: well under this


@asynccontextmanager
async def open_agents(inventory: Inventory, *, holds: bool = False,
                      records: bool = True) -> AsyncIterator[dict[str, AgentClient]]:
    """A client for every node of ``inventory``, connections kept alive for the whole run: the
    plain-http agents share one lean transport, the TLS agents another (one TLS context). On exit
    everything is closed; embedded agents complete whatever they still hold. ``holds``: the caller
    will hold engines (a backup), so an embedded agent waits a moment for a status that has its
    hold record to let it go, rather than holding with no record. ``records``: False (a dry run)
    keeps none, so nothing is made or written under $XDG_STATE_HOME and no hold a killed snapctl
    left is released: the engine's own status still shows it held."""
    remote = [n for n in inventory.nodes if n.agent != "embedded"]
    embedded = [n for n in inventory.nodes if n.agent == "embedded"]
    timeout_s = inventory.policy.agent_timeout_s
    clients: dict[str, AgentClient] = {}
    services: list[EmbeddedAgentClient] = []
    pools: list[AgentTransport] = []
    taken: list = []  # embedded agents' hold records, let go once their services have closed
    executor = ThreadPoolExecutor(min(len(embedded), _MAX_EMBEDDED_THREADS), thread_name_prefix="embedded-agent") \
        if embedded else None
    try:
        if remote:
            tokens = AgentTokens(inventory)
            warn_if_sent_in_clear(inventory, tokens)
            _raise_open_files_limit(len(remote) + 64)
            transports: dict[str, AgentTransport] = {}  # by scheme
            for node in remote:
                scheme = "https" if node.agent.startswith("https:") else "http"
                if scheme not in transports:
                    transports[scheme] = AgentTransport(tls_context(inventory) if scheme == "https" else None)
                    pools.append(transports[scheme])
                clients[node.name] = HttpAgentClient(node.name, node.agent, transports[scheme],
                                                     token=tokens.of(node), token_hint=tokens.hint(node),
                                                     timeout_s=timeout_s,
                                                     client_cert=bool(inventory.auth.client_cert_file))
        if embedded:
            from node_agent.engines.base import load_engine_factory
            from node_agent.service import AgentService
            from snapctl.embedded_agent import EmbeddedAgentClient
            from snapctl.embedded_records import embedded_hold_records

            for node in embedded:
                settings = inventory.engine_settings(node)  # which of many nodes' engine blocks is wrong, and where
                engine = load_engine_factory(settings.type)(settings, base_dir=inventory.base_dir)
                try:  # a hold that outlives snapctl's process is recorded, for the next one to release
                    kept = embedded_hold_records(inventory.cluster, node.name, settings.type, engine,
                                                 wait_s=_RECORD_WAIT_S if holds else 0.0, keep=records)
                except BaseException:
                    engine.close()
                    raise
                if kept is not None:
                    taken.append(kept)
                service = AgentService(node.name, engine, engine_type=settings.type, hold_records=kept)
                client = EmbeddedAgentClient(node.name, service, timeout_s=timeout_s, executor=executor)
                services.append(client)
                clients[node.name] = client
        yield {node.name: clients[node.name] for node in inventory.nodes if node.name in clients}
    finally:
        try:
            await asyncio.gather(*(c.aclose() for c in services), return_exceptions=True)
            for records in taken:
                records.unlock()
        finally:
            await asyncio.gather(*(http.aclose() for http in pools), return_exceptions=True)
            if executor is not None:
                executor.shutdown(wait=True)


def _raise_open_files_limit(wanted: int) -> None:
    """One socket per agent: a 1000-node cluster needs more descriptors than the usual soft limit."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
