"""A client of a cairn cluster, over the stubs protoc generates from kv.proto.

It mirrors cairn's own client (src/cli/client.ts): it tries the endpoints in turn from
the one that answered last, moves to the leader once an answer names it (when the
leader's client address is one of the endpoints), and sends every write under a client
session (kv.proto, "Client sessions"), retrying it with the same client_id and sequence,
so a write retried after a timeout, UNAVAILABLE or a leader change is applied at most once.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, TypeVar, Union

import grpc

from .gen.cairn.kv.v1 import kv_pb2, kv_pb2_grpc

# Trailers a cairn node sets on an error (src/server/status.ts).
ERROR_CODE_TRAILER = "cairn-error-code"
LEADER_ID_TRAILER = "cairn-leader-id"

DEFAULT_TIMEOUT_SECONDS = 5.0
# Rounds over all endpoints before a call is given up (without a whole-call budget).
MAX_ROUNDS = 5
# Pause after a round in which every endpoint failed, so a cluster electing a leader is not
# hammered.
RETRY_DELAY_SECONDS = 0.2
# With a whole-call budget, the least one attempt at one endpoint is given.
MIN_ATTEMPT_SECONDS = 0.5
# A write is retried for at most this long after it was first sent. The cluster keeps a
# session's answers for at least 5 minutes of inactivity (sessionEvictionGraceMs); a retry
# after that might meet an evicted session and apply twice. cairn's CLI caps --timeout-ms
# at the same 4 minutes.
MAX_WRITE_RETRY_SECONDS = 240.0
# Largest answer accepted. gRPC's default (4 MiB) is close to what one Range may return with
# cairn's default --max-range-bytes (3 MiB of keys and values, plus bookkeeping per key).
MAX_RECEIVE_MESSAGE_BYTES = 16 * 1024 * 1024
# Longest pause before a channel reconnects to an endpoint that refused it (gRPC's default
# grows to 120 s, far longer than a node takes to restart).
MAX_RECONNECT_BACKOFF_MS = 2000

# Failures worth another endpoint or another try. Writes carry a session, so retrying them
# is safe.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# cairn's codes (src/errors.ts) after which a write may or may not have been applied.
UNKNOWN_OUTCOME_CODES = frozenset({"OUTCOME_UNKNOWN", "TIMEOUT", "STOPPED"})
SESSION_EXPIRED = "SESSION_EXPIRED"
SESSION_NOT_OWNED = "SESSION_NOT_OWNED"

# Why one attempt at one endpoint failed, from the least to the most informative: nothing
# listened, something listened but did not answer in time, something answered that is not
# cairn's client API (a peer port, another service), a cairn node answered with an error.
UNREACHABLE = "unreachable"
NO_ANSWER = "no-answer"
WRONG_SERVICE = "wrong-service"
ANSWERED = "answered"
_RANK = {UNREACHABLE: 0, NO_ANSWER: 1, WRONG_SERVICE: 2, ANSWERED: 3}

_CONSISTENCY = {
    "linearizable": kv_pb2.CONSISTENCY_LINEARIZABLE,
    "serializable": kv_pb2.CONSISTENCY_SERIALIZABLE,
}

Key = Union[bytes, str]
T = TypeVar("T")


@dataclass(frozen=True)
class AttemptFailure:
    """One endpoint's failed attempt."""

    endpoint: str
    kind: str
    code: grpc.StatusCode
    details: str
    trailers: Dict[str, str]
    # The deadline this attempt was given.
    attempt_seconds: float

    @property
    def error_code(self) -> Optional[str]:
        return self.trailers.get(ERROR_CODE_TRAILER)

    def describe(self) -> str:
        cairn_code = f" [{ERROR_CODE_TRAILER}: {self.error_code}]" if self.error_code else ""
        return f"{self.code.name} from {self.endpoint} ({self.kind}): {self.details}{cairn_code}"


class CairnError(Exception):
    """A call that failed: at every endpoint it tried, or with an answer that settles it.

    It carries the most informative failure's gRPC status code, message and trailers
    (`error_code` is cairn's own stable code from the cairn-error-code trailer, e.g.
    INVALID_ARGUMENT or NO_LEADER; `leader_id` the cairn-leader-id trailer), and every
    endpoint's last failure in `failures`. `outcome_unknown` is set on a write that may
    have been applied although no answer said so.
    """

    def __init__(self, primary: AttemptFailure, failures: Sequence[AttemptFailure], outcome_unknown: bool = False):
        self.primary = primary
        self.failures: List[AttemptFailure] = list(failures)
        self.outcome_unknown = outcome_unknown
        self.code: grpc.StatusCode = primary.code
        self.details: str = primary.details
        self.trailers: Dict[str, str] = dict(primary.trailers)
        self.endpoint: str = primary.endpoint
        super().__init__(self._message())

    @property
    def error_code(self) -> Optional[str]:
        return self.trailers.get(ERROR_CODE_TRAILER)

    @property
    def leader_id(self) -> Optional[int]:
        raw = self.trailers.get(LEADER_ID_TRAILER, "")
        return int(raw) if raw.isdigit() and int(raw) > 0 else None

    def _message(self) -> str:
        lines = [self.primary.describe()]
        lines += [f"  then {f.describe()}" for f in self.failures if f is not self.primary]
        if self.outcome_unknown:
            lines.append("  the write may or may not have been applied (an endpoint did not answer in time)")
        return "\n".join(lines)


def failure_of(error: grpc.RpcError, endpoint: str, attempt_seconds: float) -> AttemptFailure:
    """What a failed call says: its code, message and trailers, and what kind of failure it is."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (error.details() if callable(getattr(error, "details", None)) else None) or str(error)
    trailers = _text_trailers(error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None)
    return AttemptFailure(endpoint, _failure_kind(code, trailers), code, details, trailers, attempt_seconds)


def _text_trailers(metadata: Optional[Iterable]) -> Dict[str, str]:
    trailers: Dict[str, str] = {}
    for key, value in metadata or ():
        if key.endswith("-bin") or key in trailers:
            continue
        trailers[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return trailers


def _failure_kind(code: grpc.StatusCode, trailers: Dict[str, str]) -> str:
    if ERROR_CODE_TRAILER in trailers:
        return ANSWERED
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return WRONG_SERVICE
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return NO_ANSWER
    if code == grpc.StatusCode.UNAVAILABLE:
        return UNREACHABLE
    return ANSWERED


def _leaves_outcome_unknown(failure: AttemptFailure) -> bool:
    return failure.kind == NO_ANSWER or failure.error_code in UNKNOWN_OUTCOME_CODES


def _as_bytes(name: str, value: Key) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{name} must be bytes or str, not {type(value).__name__}")


def tls_credentials(cacert: Optional[str] = None, cert: Optional[str] = None, key: Optional[str] = None) -> grpc.ChannelCredentials:
    """Channel credentials from PEM files, as cairn's --cacert, --cert and --key: the CA bundle
    that verifies the nodes (None: the system's roots), and a client certificate with its key
    for nodes started with --client-ca-file."""
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together (a client certificate needs its key)")

    def read(path: Optional[str]) -> Optional[bytes]:
        if path is None:
            return None
        with open(path, "rb") as file:
            return file.read()

    return grpc.ssl_channel_credentials(root_certificates=read(cacert), private_key=read(key), certificate_chain=read(cert))


def _parse_endpoints(endpoints: Union[str, Iterable[str]]) -> List[str]:
    listed = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed = [e.strip() for e in listed if e.strip()]
    if not parsed:
        raise ValueError("no endpoints given")
    for endpoint in parsed:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'endpoint "{endpoint}" is not HOST:PORT')
    return parsed


def _consistency(value: Union[str, int]) -> int:
    if isinstance(value, int):
        return value
    try:
        return _CONSISTENCY[value]
    except KeyError:
        raise ValueError(f'consistency must be "linearizable" or "serializable", not "{value}"') from None


@dataclass
class _Session:
    """One client session: its id, the next sequence and the sequences still unanswered."""

    client_id: str = field(default_factory=lambda: f"py-{uuid.uuid4()}")
    next_sequence: int = 1
    unanswered: set = field(default_factory=set)


@dataclass(frozen=True)
class _WriteTicket:
    session: _Session
    sequence: int
    lowest_unanswered_sequence: int


class Client:
    """A client of one cairn cluster.

    endpoints: client addresses ("HOST:PORT", a list or a comma-separated string).
    timeout: longest wait for one attempt at one endpoint, in seconds.
    total_timeout: budget of a whole call, every endpoint and retry included, in seconds
      (each endpoint then gets its share, at least MIN_ATTEMPT_SECONDS). None: up to
      MAX_ROUNDS rounds of `timeout` attempts. Writes stop retrying after
      MAX_WRITE_RETRY_SECONDS whatever the budget.
    consistency: "linearizable" (default) or "serializable", for get and range.
    interceptors: gRPC client interceptors put on every channel (auth, tracing, tests).

    Safe to share between threads; each thread's writes get their own sequence.
    """

    def __init__(
        self,
        endpoints: Union[str, Iterable[str]],
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        total_timeout: Optional[float] = None,
        consistency: Union[str, int] = "linearizable",
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
        credentials: Optional[grpc.ChannelCredentials] = None,
    ):
        if not timeout > 0:
            raise ValueError("timeout must be above 0 seconds")
        if total_timeout is not None and not total_timeout > 0:
            raise ValueError("total_timeout must be above 0 seconds")
        self.endpoints = _parse_endpoints(endpoints)
        self.timeout = float(timeout)
        self.total_timeout = None if total_timeout is None else float(total_timeout)
        self.consistency = _consistency(consistency)
        options = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ]
        # TLS when given credentials (tls_credentials below); plaintext otherwise.
        if credentials is None:
            self._channels = [grpc.insecure_channel(e, options=options) for e in self.endpoints]
        else:
            self._channels = [grpc.secure_channel(e, credentials, options=options) for e in self.endpoints]
        wrapped = [grpc.intercept_channel(c, *interceptors) if interceptors else c for c in self._channels]
        self._kv = [kv_pb2_grpc.KVStub(c) for c in wrapped]
        self._cluster = [kv_pb2_grpc.ClusterStub(c) for c in wrapped]
        self._preferred = 0
        # Member id -> its client address, as the cluster reports it (MemberList).
        self._client_addrs: Dict[int, str] = {}
        self._lock = threading.Lock()
        self._session = _Session()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    # Reads and writes.

    def put(self, key: Key, value: Key, prev_kv: bool = False) -> kv_pb2.PutResponse:
        """Sets key to value; the answer's header.revision is the write's revision."""
        key, value = _as_bytes("key", key), _as_bytes("value", value)

        def send(ticket: _WriteTicket, index: int, seconds: float) -> kv_pb2.PutResponse:
            request = kv_pb2.PutRequest(key=key, value=value, prev_kv=prev_kv, **self._session_fields(ticket))
            return self._kv[index].Put(request, timeout=seconds)

        return self._write(send)

    def delete(self, key: Key, prev_kv: bool = False) -> kv_pb2.DeleteResponse:
        """Removes key; the answer's `deleted` says whether it existed."""
        key = _as_bytes("key", key)

        def send(ticket: _WriteTicket, index: int, seconds: float) -> kv_pb2.DeleteResponse:
            request = kv_pb2.DeleteRequest(key=key, prev_kv=prev_kv, **self._session_fields(ticket))
            return self._kv[index].Delete(request, timeout=seconds)

        return self._write(send)

    def get(self, key: Key, consistency: Union[str, int, None] = None) -> kv_pb2.GetResponse:
        """Reads one key. A missing key is an answer, not an error: its `kv` field is unset
        (`response.HasField("kv")` is False)."""
        request = kv_pb2.GetRequest(key=_as_bytes("key", key), consistency=self._read_consistency(consistency))
        return self._retry(lambda index, seconds: self._kv[index].Get(request, timeout=seconds))

    def range(
        self,
        key: Key,
        range_end: Key = b"",
        limit: int = 0,
        keys_only: bool = False,
        prefix: bool = False,
        consistency: Union[str, int, None] = None,
    ) -> kv_pb2.RangeResponse:
        """Keys in [key, range_end) in key order, at most `limit` (0: the server's maximum);
        `more` says whether keys follow the last one returned. See RangeRequest in kv.proto."""
        request = kv_pb2.RangeRequest(
            key=_as_bytes("key", key),
            range_end=_as_bytes("range_end", range_end),
            limit=limit,
            keys_only=keys_only,
            prefix=prefix,
            consistency=self._read_consistency(consistency),
        )
        return self._retry(lambda index, seconds: self._kv[index].Range(request, timeout=seconds))

    def list(
        self, prefix: Key = b"", limit: int = 0, keys_only: bool = False, consistency: Union[str, int, None] = None
    ) -> kv_pb2.RangeResponse:
        """Keys that start with `prefix` (every key when empty), in order, like `cairn list`."""
        return self.range(prefix, limit=limit, keys_only=keys_only, prefix=True, consistency=consistency)

    # The cluster.

    def status(self) -> kv_pb2.StatusResponse:
        """The status of the first endpoint that answers."""
        return self._retry(lambda index, seconds: self._cluster[index].Status(kv_pb2.StatusRequest(), timeout=seconds))

    def status_of(self, index: int) -> kv_pb2.StatusResponse:
        """The status of endpoint `index` alone (no other endpoint is tried: the caller asked
        about that node), within the whole-call budget."""
        seconds = self.total_timeout if self.total_timeout is not None else self.timeout
        try:
            return self._cluster[index].Status(kv_pb2.StatusRequest(), timeout=seconds)
        except grpc.RpcError as error:
            failure = failure_of(error, self.endpoints[index], seconds)
            raise CairnError(failure, [failure]) from None

    def members(self) -> kv_pb2.MemberListResponse:
        return self._retry(lambda index, seconds: self._cluster[index].MemberList(kv_pb2.MemberListRequest(), timeout=seconds))

    # Sessions.

    @staticmethod
    def _session_fields(ticket: _WriteTicket) -> dict:
        return {
            "client_id": ticket.session.client_id,
            "sequence": ticket.sequence,
            "lowest_unanswered_sequence": ticket.lowest_unanswered_sequence,
        }

    def _begin_write(self) -> _WriteTicket:
        with self._lock:
            session = self._session
            sequence = session.next_sequence
            session.next_sequence += 1
            session.unanswered.add(sequence)
            return _WriteTicket(session, sequence, min(session.unanswered))

    def _end_write(self, ticket: _WriteTicket, failed: bool) -> None:
        with self._lock:
            # Answered, or given up for good: either way this sequence is never sent again,
            # so later writes may say so through lowest_unanswered_sequence.
            ticket.session.unanswered.discard(ticket.sequence)
            # As cairn's CLI does: after a write that failed, the next one starts a new
            # session rather than go on claiming answers around one it never got.
            if failed and self._session is ticket.session:
                self._session = _Session()

    def _write(self, send: Callable[[_WriteTicket, int, float], T]) -> T:
        """Sends a write under the client's session, retried with the same sequence. A write
        refused as SESSION_EXPIRED on its first attempt (its session was evicted while idle),
        or as SESSION_NOT_OWNED (another user's session, or one from before auth was on), was
        applied nowhere, so it is sent once more under a new session."""
        renewed = False
        while True:
            ticket = self._begin_write()
            attempts = [0]
            try:
                result = self._retry(lambda index, seconds: send(ticket, index, seconds), True, attempts)
            except CairnError as error:
                self._end_write(ticket, failed=True)
                renewable = error.error_code in (SESSION_EXPIRED, SESSION_NOT_OWNED)
                if renewed or not renewable or attempts[0] != 1:
                    raise
                renewed = True
                continue
            except BaseException:
                # Interrupted (KeyboardInterrupt, an interceptor's own exception): this write
                # is never retried, so it must not hold the session's lowest unanswered
                # sequence back for good.
                self._end_write(ticket, failed=True)
                raise
            self._end_write(ticket, failed=False)
            return result

    # Endpoints.

    def _read_consistency(self, consistency: Union[str, int, None]) -> int:
        return self.consistency if consistency is None else _consistency(consistency)

    def _attempt_seconds(self, call_deadline: float, now: float) -> float:
        """One attempt's deadline: its share of the whole-call budget, never past the budget."""
        seconds = self.timeout
        if self.total_timeout is not None:
            seconds = min(seconds, max(MIN_ATTEMPT_SECONDS, self.total_timeout / len(self.endpoints)))
        return max(0.001, min(seconds, call_deadline - now))

    def _retry(self, call: Callable[[int, float], T], is_write: bool = False, attempts: Optional[List[int]] = None) -> T:
        """Tries the endpoints in turn, from the preferred one, for MAX_ROUNDS rounds or until
        the whole-call budget runs out. An endpoint that is not cairn's client API is not tried
        again. A failure reports the most informative error seen, not merely the last one."""
        attempts = attempts if attempts is not None else [0]
        count = len(self.endpoints)
        started = time.monotonic()
        call_deadline = started + self.total_timeout if self.total_timeout is not None else math.inf
        if is_write:
            call_deadline = min(call_deadline, started + MAX_WRITE_RETRY_SECONDS)
        first = self._preferred
        last_failure: Dict[int, AttemptFailure] = {}
        primary: Optional[AttemptFailure] = None
        outcome_unknown = False
        for attempt in range(MAX_ROUNDS * count):
            index = (first + attempt) % count
            if index in last_failure and last_failure[index].kind == WRONG_SERVICE:
                continue
            seconds = self._attempt_seconds(call_deadline, started if attempt == 0 else time.monotonic())
            attempts[0] += 1
            try:
                result = call(index, seconds)
            except grpc.RpcError as error:
                failure = failure_of(error, self.endpoints[index], seconds)
                last_failure[index] = failure
                if primary is None or _RANK[failure.kind] >= _RANK[primary.kind]:
                    primary = failure
                outcome_unknown = outcome_unknown or _leaves_outcome_unknown(failure)
                # A definitive answer (bad input, say) stands alone: other endpoints do not matter.
                if failure.code not in RETRYABLE_CODES:
                    raise CairnError(failure, [failure], is_write and outcome_unknown) from None
                if time.monotonic() >= call_deadline:
                    break
                if (attempt + 1) % count == 0:
                    time.sleep(max(0.0, min(RETRY_DELAY_SECONDS, call_deadline - time.monotonic())))
                if time.monotonic() >= call_deadline:
                    break
                continue
            self._preferred = index
            self._follow_leader(getattr(result, "header", None), call_deadline)
            return result
        assert primary is not None, "every endpoint was skipped before any was tried"
        failures = [last_failure[i] for i in sorted(last_failure)]
        raise CairnError(primary, failures, is_write and outcome_unknown)

    def _follow_leader(self, header: Optional[kv_pb2.ResponseHeader], call_deadline: float) -> None:
        """After an answer from a follower, prefer the leader's endpoint (when it is one of
        ours), so the next request skips the forwarding hop."""
        if header is None or not header.leader_id or header.leader_id == header.member_id:
            return
        if header.leader_id not in self._client_addrs:
            seconds = max(0.001, min(self.timeout, call_deadline - time.monotonic()))
            try:
                members = self._cluster[self._preferred].MemberList(kv_pb2.MemberListRequest(), timeout=seconds)
            except grpc.RpcError:
                return
            for member in members.members:
                if member.client_addr:
                    self._client_addrs[member.id] = member.client_addr
        address = self._client_addrs.get(header.leader_id)
        if address in self.endpoints:
            self._preferred = self.endpoints.index(address)
