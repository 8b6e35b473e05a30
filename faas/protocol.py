"""The wire format between clients, the endpoint and its worker loops.

A message is a ZeroMQ multipart message: one JSON header frame followed by
opaque binary frames (pickled functions, arguments, results). Every header is
one of the typed messages below, validated (pydantic, strict types) on
receipt; the frames after it are counted against what the header announces.
The endpoint reads headers only: it never unpickles a frame, so garbage from a
peer can at worst earn an error reply.

Hops and their messages:

- client -> endpoint: ``ping``, ``status``, ``submit``, ``watch``, ``cancel``,
  ``fleet`` (``faas dashboard``'s view)
- endpoint -> client: ``pong``, ``ack``, ``running``, ``results``, ``tasks``,
  ``status_reply``, ``fleet_reply``, ``error``
- worker loop -> endpoint: ``ready``, ``progress`` (invocations started and
  outcomes, streamed as they happen), ``hb``, ``locate`` (who holds a
  context's files)
- endpoint -> worker loop: ``batch``, ``revoke`` (cancel or take back
  invocations), ``hb``, ``retire``, ``peers`` (the answer to ``locate``),
  ``load_ack`` (it knows a context is about to load), ``preload`` (load a
  context before work comes), ``keep`` (contexts not to release for idleness)

Worker loops also talk to each other: each serves its node's cache of context
files to the others' fetchers (:mod:`faas.warm_pool.fileserver`, its own
CurveZMQ channel and messages).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

import zmq
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from faas.errors import ProtocolError

VERSION = 2
MAX_ID_LEN = 64
MAX_RETRIES = 100

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN)]
Text = Annotated[str, StringConstraints(max_length=1 << 20)]
# what an invocation wrote, in order: (stream, text); logged records go to stderr. The worker keeps
# the last OUTPUT_BYTES of it (faas.warm_pool.output)
Output = list[tuple[Literal["stdout", "stderr"], Text]]


class Kind(str, enum.Enum):
    """How one invocation's run on a worker ended."""

    OK = "ok"                  # payload: the pickled result
    ERROR = "error"            # the user's code raised; payload: the pickled exception
    INIT_ERROR = "init_error"  # the context's loader raised; the code never ran
    TIMEOUT = "timeout"        # it overran its timeout and was interrupted
    CANCELLED = "cancelled"    # a client cancelled it
    RETURNED = "returned"      # taken back unstarted (the worker was busy or retiring): run it elsewhere


def retryable(kind: Kind, attempts: int, retries: int) -> bool:
    """Whether an invocation whose attempt ended with ``kind`` runs again: the
    user's own errors (and timeouts) only while it has ``retries`` left."""
    return kind in (Kind.ERROR, Kind.TIMEOUT) and attempts <= retries


# Lists and dicts default by factory: pydantic deep-copies a literal default for every instance,
# which doubled the cost of an outcome's model.
class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    v: int = VERSION

    def frame_count(self) -> int:
        """How many data frames follow the header."""
        return 0


# -- client -> endpoint ----------------------------------------------------------
class FunctionInfo(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    id: Id
    name: Annotated[str, StringConstraints(max_length=256)]
    context_key: Id
    context: Text
    retries: Annotated[int, Field(ge=0, le=MAX_RETRIES)] = 0
    batch_size: Annotated[int, Field(ge=1, le=1 << 16)] = 1


class InvocationRef(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    id: Id
    function: Id


class Ping(_Message):
    type: Literal["ping"] = "ping"


class StatusRequest(_Message):
    type: Literal["status"] = "status"


class Submit(_Message):
    """Frames: one body per new function (in order), then one per invocation."""

    type: Literal["submit"] = "submit"
    group: Id
    functions: list[FunctionInfo]
    invocations: list[InvocationRef]

    def frame_count(self) -> int:
        return len(self.functions) + len(self.invocations)

    @model_validator(mode="after")
    def _ids_once(self) -> Submit:
        """An id named twice would be one row for two invocations: refused before anything is written."""
        seen: set[str] = set()
        for inv in self.invocations:
            if inv.id in seen:
                raise ValueError(f"invocation id {inv.id} appears more than once")
            seen.add(inv.id)
        return self


class Watch(_Message):
    """``ids``: acknowledged invocations the client still waits for (after a
    reconnect); those the store has no record of are answered ``lost``."""

    type: Literal["watch"] = "watch"
    group: Id
    ids: list[Id] = Field(default_factory=list)


class Cancel(_Message):
    type: Literal["cancel"] = "cancel"
    ids: list[Id]


class FleetRequest(_Message):
    """What ``faas dashboard`` shows (:mod:`faas.endpoint.fleetview`): the stream's
    events after ``after`` (the last one the viewer has), or with ``invocation``
    that invocation's record (error, attempt history) alone."""

    type: Literal["fleet"] = "fleet"
    after: Annotated[int, Field(ge=0)] = 0
    invocation: Id | None = None


# -- endpoint -> client ----------------------------------------------------------
class Pong(_Message):
    type: Literal["pong"] = "pong"
    max_payload_bytes: int | None = None
    max_message_bytes: int | None = None  # a larger message is refused: the client splits its submissions


class Ack(_Message):
    type: Literal["ack"] = "ack"
    ids: list[Id]


class Running(_Message):
    type: Literal["running"] = "running"
    ids: list[Id]


class ResultItem(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    id: Id
    state: Literal["succeeded", "failed", "cancelled"]
    error: str | None = None  # remote traceback text, or why the platform gave up
    output: Output = Field(default_factory=list)
    worker: Annotated[str, StringConstraints(max_length=256)] | None = None  # host:pid that ran it


class Results(_Message):
    """Frames: one payload per item (pickled result or exception; may be empty)."""

    type: Literal["results"] = "results"
    items: list[ResultItem]

    def frame_count(self) -> int:
        return len(self.items)


class Tasks(_Message):
    type: Literal["tasks"] = "tasks"
    group: Id
    ids: list[Id]


class StatusReply(_Message):
    type: Literal["status_reply"] = "status_reply"
    status: dict[str, Any]


class FleetReply(_Message):
    type: Literal["fleet_reply"] = "fleet_reply"
    view: dict[str, Any]  # see faas.endpoint.fleetview.FleetView.view


class Error(_Message):
    type: Literal["error"] = "error"
    message: Text
    ids: list[Id] = Field(default_factory=list)  # the invocations it concerns; none: the whole request
    # "not_authorised": the client's key was revoked; "store_unavailable": the store could not record it;
    # "reload": messages for this client were dropped (it fell behind), so it asks again (watch its
    # groups, resend what was not acknowledged); "too_large": the message was over max_message_bytes;
    # "lost": its store has no record of these invocations; "stopped": the endpoint stops for good
    code: str | None = None


# -- worker loop -> endpoint -------------------------------------------------------
Address = Annotated[str, StringConstraints(min_length=1, max_length=300)]


class FilesState(BaseModel):
    """A loop's view of its node cache of context files (faas.warm_pool.node_cache)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    address: Address | None = None  # this loop's file server, tcp://HOST:PORT; None: it serves nothing
    node: Annotated[str, StringConstraints(max_length=1024)] = ""  # its node cache: loops of one node share it
    staged: list[Id] = Field(default_factory=list)  # context keys whose files are complete (verified) in the node cache
    staging: list[Id] = Field(default_factory=list)  # context keys whose files are being copied in now
    serving: Annotated[int, Field(ge=0)] = 0  # copies it is serving now
    # cumulative bytes read from the source, and copied from peers, per context
    source_bytes: dict[Id, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    peer_bytes: dict[Id, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


class Ready(_Message):
    type: Literal["ready"] = "ready"
    host: Annotated[str, StringConstraints(max_length=256)]
    pid: int
    contexts: dict[str, dict[str, Any]]
    prewarm: dict[str, Any] = Field(default_factory=dict)  # what the worker imported/initialised at start, with timings
    files: FilesState | None = None  # its node cache and file server
    resources: dict[str, Any] = Field(default_factory=dict)  # its memory and GPU (faas.warm_pool.resources.sample)


class OutcomeInfo(BaseModel):
    """One invocation's end on a worker; its payload travels as a frame."""

    model_config = ConfigDict(strict=True, extra="ignore")
    id: Id
    kind: Kind
    error: str | None = None  # traceback text
    started: float = 0.0
    finished: float = 0.0
    output: Output = Field(default_factory=list)


class InitInfo(BaseModel):
    """One context initialisation in the worker (see faas.warm_pool.registry.InitEvent)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    context_key: Id
    description: Text
    started_at: float
    seconds: float
    error: str | None = None


class Progress(_Message):
    """Streamed by a worker loop: invocations it started and outcomes as they
    finish. Frames: one payload per outcome."""

    type: Literal["progress"] = "progress"
    started: list[Id] = Field(default_factory=list)
    outcomes: list[OutcomeInfo] = Field(default_factory=list)
    inits: list[InitInfo] = Field(default_factory=list)
    contexts: dict[str, dict[str, Any]] | None = None  # the warm pool's statistics, when they changed
    # bodies the loop evicted: the endpoint sends them again when needed
    dropped_functions: list[Id] = Field(default_factory=list)
    files: FilesState | None = None  # its node cache, when it changed
    # a context the loop is about to load: its loader runs once the endpoint acknowledges (LoadAck) what it was
    # told up to here, so that a loader that takes the process down is blamed, not what ran before it
    loading: Id | None = None
    preloaded: list[Id] = Field(default_factory=list)  # contexts whose preload (see Preload) ended, loaded or failed

    def frame_count(self) -> int:
        return len(self.outcomes)


class Locate(_Message):
    """Every peer the loop was told of failed or stays busy: who holds (or is
    staging) the files of ``context_key`` now? Answered with :class:`Peers`."""

    type: Literal["locate"] = "locate"
    context_key: Id


class Heartbeat(_Message):
    """Both ways: the endpoint's beat, and the loop's answer to it (with its
    process's memory and GPU, :func:`faas.warm_pool.resources.sample`)."""

    type: Literal["hb"] = "hb"
    resources: dict[str, Any] | None = None


# -- endpoint -> worker loop -------------------------------------------------------
class WorkerSettings(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    idle_timeout: float | None = None
    memory_budget: int | None = None
    timeout: float | None = None  # default per-invocation timeout (a function's own wins)
    timeout_grace: float = 10.0  # after an interrupt is ignored this long, the worker process is replaced
    max_result_bytes: int | None = None  # a larger result fails its invocation (PayloadTooLarge)
    function_cache_bytes: int | None = None  # function bodies kept by the loop (least recently used go)
    output_log_level: int = 30  # log records at or above it are part of an invocation's output (30: WARNING)
    host_budget: int | None = None  # bytes of parked contexts (None: a share of the node's memory; 0: none)


class Batch(_Message):
    """Frames: one body per function the loop has not been sent yet, then one
    argument blob per item."""

    type: Literal["batch"] = "batch"
    batch: int
    functions: list[Id]
    items: list[tuple[Id, Id]]  # (invocation id, function id)
    settings: WorkerSettings
    # context key -> file servers of loops that hold (or are staging) its files, best first; a key absent
    # or empty: no peer has it, read the source
    peers: dict[Id, list[Address]] = Field(default_factory=dict)

    def frame_count(self) -> int:
        return len(self.functions) + len(self.items)


class Revoke(_Message):
    """Cancel these invocations (``reason`` "cancel": interrupt or drop them),
    or take them back if they have not started (``reason`` "reclaim")."""

    type: Literal["revoke"] = "revoke"
    ids: list[Id]
    reason: Literal["cancel", "reclaim"] = "cancel"


class Retire(_Message):
    type: Literal["retire"] = "retire"


class Preload(_Message):
    """Load the context of function ``function`` now, before any of its work
    arrives, and say so in ``Progress.preloaded``. Frames: the bodies of
    ``functions`` (``function``'s, when the loop has not been sent it)."""

    type: Literal["preload"] = "preload"
    context_key: Id
    function: Id
    functions: list[Id] = Field(default_factory=list)
    peers: dict[Id, list[Address]] = Field(default_factory=dict)  # as Batch.peers

    def frame_count(self) -> int:
        return len(self.functions)


class Keep(_Message):
    """The contexts the loop's warm pool must not release for idleness (the
    endpoint's last holders of contexts with work); replaces the last list."""

    type: Literal["keep"] = "keep"
    contexts: list[Id]


class Peers(_Message):
    """The answer to :class:`Locate`: fresh holders of the context's files, best
    first; empty: none, read the source."""

    type: Literal["peers"] = "peers"
    context_key: Id
    addresses: list[Address]


class LoadAck(_Message):
    """The endpoint has read the report that ``context_key`` is about to load (Progress.loading)."""

    type: Literal["load_ack"] = "load_ack"
    context_key: Id


def _adapter(*models: type[_Message]) -> TypeAdapter:
    return TypeAdapter(Annotated[Union[models], Field(discriminator="type")])  # noqa: UP007


CLIENT_REQUESTS = _adapter(Ping, StatusRequest, Submit, Watch, Cancel, FleetRequest)
CLIENT_REPLIES = _adapter(Pong, Ack, Running, Results, Tasks, StatusReply, FleetReply, Error)
WORKER_REPORTS = _adapter(Ready, Progress, Heartbeat, Locate)
WORKER_ORDERS = _adapter(Batch, Revoke, Heartbeat, Retire, Peers, LoadAck, Preload, Keep)
ANY = _adapter(Ping, StatusRequest, Submit, Watch, Cancel, FleetRequest, Pong, Ack, Running, Results, Tasks,
               StatusReply, FleetReply, Error, Ready, Progress, Heartbeat, Locate, Batch, Revoke, Retire, Peers,
               LoadAck, Preload, Keep)
_KNOWN = {m.model_fields["type"].default for m in _Message.__subclasses__()}


def encode(msg: _Message, frames: Sequence[bytes] = ()) -> list[bytes]:
    return [msg.model_dump_json().encode(), *frames]


# pyzmq's send_multipart/recv_multipart combine its flag enums for every frame (a result, an argument, an
# outcome is a frame): ~2.5 us per frame sent and read, ~1 us with plain ints. The same frames on the wire.
_SNDMORE, _RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)


def send(sock: zmq.Socket, frames: Sequence[bytes], flags: int = 0) -> None:
    """``sock.send_multipart(frames, flags)``: the same message, cheaper per frame."""
    more = int(flags) | _SNDMORE
    for frame in frames[:-1]:
        sock.send(frame, more)
    sock.send(frames[-1], int(flags))


def recv(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """``sock.recv_multipart(flags)`` (raises zmq.Again as it does), cheaper per frame."""
    frames = [sock.recv(int(flags))]
    while sock.getsockopt(_RCVMORE):
        frames.append(sock.recv())
    return frames


def decode(frames: Sequence[bytes], expect: TypeAdapter = ANY) -> tuple[Any, list[bytes]]:
    """Parse and validate a message of one of the ``expect`` types; raises
    ProtocolError, naming the field, on anything else."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        msg = expect.validate_json(bytes(frames[0]))
    except ValidationError as e:
        raise _explain(e, bytes(frames[0])) from None
    body = [bytes(f) for f in frames[1:]]
    if len(body) != msg.frame_count():
        raise ProtocolError(f"{msg.type}: {len(body)} data frames where the header announces {msg.frame_count()}")
    if msg.v != VERSION:
        raise ProtocolError(f"protocol version {msg.v!r} is not {VERSION}")
    return msg, body


def _explain(e: ValidationError, header: bytes) -> ProtocolError:
    err = e.errors(include_url=False, include_input=False)[0]
    kind, loc = err["type"], err["loc"]
    if kind == "json_invalid":
        return ProtocolError(f"header is not JSON: {err['msg'][:200]}")
    if not loc and kind in ("model_attributes_type", "model_type", "dict_type"):
        return ProtocolError("header is not a JSON object")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = err.get("ctx", {}).get("tag")
        if tag in _KNOWN:
            return ProtocolError(f"{tag!r} is not expected here")
        return ProtocolError(f"unknown message type {tag!r}" if tag is not None else "message type missing")
    if kind == "value_error" and len(loc) == 1:  # a message's own check (Submit._ids_once)
        return ProtocolError(f"{loc[0]}: {err['ctx']['error']}")
    where = ".".join(str(p) for p in loc[1:]) or "header"
    return ProtocolError(f"{loc[0] if loc else 'message'}: field {where!r}: {err['msg'][:200]}")
