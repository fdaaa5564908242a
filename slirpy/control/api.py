"""The API socket: slirp4netns's JSON control protocol (add/list/remove port forwards).

What this module owns:

* the sans-IO core: `parse_request` turns the bytes of one request into a validated
  request object or an `ApiError`; the `encode_*` functions produce the replies,
  byte for byte what slirp4netns clients (Podman, RootlessKit) expect;
* `handle_request`: one request in, one reply out, through an `ApiHandler` that the
  daemon implements; it never raises, whatever the bytes or the handler do;
* `HostFwdTable`: id allocation (from 1, never reused) and bookkeeping of forwards;
* `ApiServer`: the thin asyncio edge (a Unix stream socket, one request per
  connection), which works with uvloop and plain asyncio.

What it must not do: bind forwarded ports, touch the engine, or know the network
model. Binding is the daemon's business (behind `ApiHandler.add_hostfwd`), and the
only network fact needed here, the default guest address, is passed in. Nothing in
the edge may block the event loop or raise out of a transport callback: the API
shares its loop with the data path's slow path, and a bad client must never stall
or kill the daemon.

Compatibility notes (slirp4netns 1.2 api.c is the reference):

* one JSON object per connection, at most `MAX_REQUEST_SIZE` bytes, optional
  trailing newline; the reply is compact JSON without a newline, then the
  connection is closed;
* checks run in slirp4netns's order (proto, host_addr, host_port, guest_addr,
  guest_port), so the first bad field is the one reported;
* a missing ``arguments`` object, or a missing ``proto``, is reported as
  ``bad arguments.proto`` (slirp4netns dereferences NULL there and dies);
* a JSON value that is not an object is reported as ``no execute found``
  (slirp4netns says ``json_object() failed``; no client looks at the text);
* ports and ids are JSON numbers: slirp4netns reads them as doubles, so an
  integral ``8080.0`` is accepted; booleans, strings, fractions and numbers
  outside 1..65535 are rejected (slirp4netns would truncate or wrap them);
* beyond slirp4netns: IPv6 ``host_addr``/``guest_addr``, protos
  ``tcp4/tcp6/udp4/udp6`` (a ``*6`` proto defaults ``host_addr`` to ``::``),
  ``get_stats`` and ``list_flows``; ``list_hostfwd`` answers with both
  ``return.entries`` (the manual) and ``entries`` (what slirp4netns sends);
  ``add_hostfwd`` takes an optional ``"splice": true|false`` (TCP only: relay
  by splice() in the guest's namespace, see docs/architecture.md), checked
  last, listed by ``list_hostfwd`` only when true so that slirp4netns
  clients see exactly what they always saw;
* beyond slirp4netns, the egress policy (slirpy/control/policy.py):
  ``set_policy`` takes exactly one of ``arguments.preset`` (a preset's
  name), ``arguments.policy`` (the TOML file's structure as JSON) or
  ``arguments.toml`` (the file's text), validated here; a bad policy is an
  error reply and changes nothing. ``get_policy`` answers ``{"name": ...,
  "policy": {"default": ..., "rule": [...]}}``. Both go to a
  `PolicyHandler`, separate from the forwards' `ApiHandler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol, TypeAlias, cast

from slirpy.config import ConfigError
from slirpy.control.policy import PRESETS, Policy, parse_policy_text, policy_from_dict

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "MAX_REQUEST_SIZE",
    "PROTOS",
    "SUN_PATH_MAX",
    "AddHostFwd",
    "ApiError",
    "ApiHandler",
    "ApiRequest",
    "ApiServer",
    "ApiSocketError",
    "GetPolicy",
    "GetStats",
    "HostFwd",
    "HostFwdError",
    "HostFwdRequest",
    "HostFwdTable",
    "ListFlows",
    "ListHostFwd",
    "PolicyHandler",
    "RemoveHostFwd",
    "SetPolicy",
    "encode_add_reply",
    "encode_error",
    "encode_list_reply",
    "encode_policy_reply",
    "encode_remove_reply",
    "encode_return",
    "handle_request",
    "parse_request",
]

logger = logging.getLogger(__name__)

MAX_REQUEST_SIZE: Final = 4096
"""Largest accepted request, in bytes (a trailing newline included)."""

SUN_PATH_MAX: Final = 108
"""Size of `sockaddr_un.sun_path` on Linux; the path and its NUL must fit."""

DEFAULT_MAX_CONNECTIONS: Final = 32
DEFAULT_TIMEOUT: Final = 5.0
"""Seconds a client has to deliver its request before it is answered as it stands."""

DEFAULT_LINGER: Final = 1.0
"""Seconds to keep draining a connection after the reply (see `_ApiConnection`)."""

_LINGER_MAX_BYTES: Final = 1 << 20

PROTOS: Final = frozenset({"tcp", "udp", "tcp4", "tcp6", "udp4", "udp6"})

# Error descriptions, byte-exact with slirp4netns (clients show them to users).
ERR_CANNOT_PARSE: Final = "bad request: cannot parse JSON"
ERR_NO_EXECUTE: Final = "bad request: no execute found"
ERR_UNKNOWN_EXECUTE: Final = "bad request: unknown execute"
ERR_TOO_LARGE: Final = "bad request: too large message"
ERR_ADD_PROTO: Final = "bad request: add_hostfwd: bad arguments.proto"
ERR_ADD_HOST_ADDR: Final = "bad request: add_hostfwd: bad arguments.host_addr"
ERR_ADD_HOST_PORT: Final = "bad request: add_hostfwd: bad arguments.host_port"
ERR_ADD_GUEST_ADDR: Final = "bad request: add_hostfwd: bad arguments.guest_addr"
ERR_ADD_GUEST_PORT: Final = "bad request: add_hostfwd: bad arguments.guest_port"
ERR_ADD_FAILED: Final = "bad request: add_hostfwd: slirp_add_hostfwd failed"
ERR_ADD_SPLICE: Final = "bad request: add_hostfwd: bad arguments.splice"
ERR_REMOVE_ID: Final = "bad request: remove_hostfwd: bad arguments.id"
ERR_REMOVE_FAILED: Final = "bad request: remove_hostfwd: slirp_remove_hostfwd failed"
# slirpy's own (no slirp4netns equivalent).
ERR_BUSY: Final = "busy: too many concurrent API connections"
ERR_SET_POLICY: Final = "bad request: set_policy"
ERR_POLICY_ARGS: Final = (
    "bad request: set_policy: give exactly one of arguments.preset, arguments.policy, "
    "arguments.toml"
)
ERR_NO_POLICY: Final = "bad request: this slirpy cannot change its policy"


# --------------------------------------------------------------------------- data


class HostFwdError(Exception):
    """Raised by `ApiHandler.add_hostfwd` when the forward cannot be set up
    (typically: the host port is in use). Answered with ``slirp_add_hostfwd failed``."""


@dataclass(frozen=True, slots=True)
class HostFwdRequest:
    """A validated ``add_hostfwd`` request. Addresses are normalised literals."""

    proto: str  # one of PROTOS, as the client spelled it
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int
    splice: bool = False  # slirpy extension: spliced relay (TCP only)

    @property
    def transport(self) -> str:
        """``"tcp"`` or ``"udp"``, whatever the family suffix."""
        return self.proto[:3]

    @property
    def host_family(self) -> socket.AddressFamily:
        return _family(self.host_addr)

    @property
    def guest_family(self) -> socket.AddressFamily:
        return _family(self.guest_addr)


@dataclass(frozen=True, slots=True)
class HostFwd:
    """One active forward, as listed by ``list_hostfwd``."""

    id: int
    proto: str
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int
    splice: bool = False

    @classmethod
    def from_request(cls, fwd_id: int, req: HostFwdRequest) -> HostFwd:
        return cls(
            fwd_id, req.proto, req.host_addr, req.host_port, req.guest_addr, req.guest_port,
            req.splice,
        )

    @property
    def request(self) -> HostFwdRequest:
        return HostFwdRequest(
            self.proto, self.host_addr, self.host_port, self.guest_addr, self.guest_port,
            self.splice,
        )

    def to_json(self) -> dict[str, object]:
        # Key order is slirp4netns's; some clients print the entries verbatim.
        out: dict[str, object] = {
            "id": self.id,
            "proto": self.proto,
            "host_addr": self.host_addr,
            "host_port": self.host_port,
            "guest_addr": self.guest_addr,
            "guest_port": self.guest_port,
        }
        if self.splice:  # only then: slirp4netns clients see what they always saw
            out["splice"] = True
        return out


class HostFwdTable:
    """The daemon's list of forwards: ids start at 1 and are never reused.

    Only bookkeeping: call `add` once the listener is bound (slirp4netns allocates
    the id only after ``slirp_add_hostfwd`` succeeded, so a failed add uses no id)
    and `remove` once it is closed.
    """

    __slots__ = ("_entries", "_next_id")

    def __init__(self) -> None:
        self._next_id = 1
        self._entries: dict[int, HostFwd] = {}

    def add(self, req: HostFwdRequest) -> HostFwd:
        fwd = HostFwd.from_request(self._next_id, req)
        self._next_id += 1
        self._entries[fwd.id] = fwd
        return fwd

    def get(self, fwd_id: int) -> HostFwd:
        """The forward with that id; `KeyError` if there is none."""
        return self._entries[fwd_id]

    def remove(self, fwd_id: int) -> HostFwd:
        """Forget a forward and return it; `KeyError` if there is none."""
        return self._entries.pop(fwd_id)

    def entries(self) -> list[HostFwd]:
        """All forwards in id order (dicts keep insertion order, ids only grow)."""
        return list(self._entries.values())

    @property
    def next_id(self) -> int:
        return self._next_id

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, fwd_id: object) -> bool:
        return fwd_id in self._entries


class ApiHandler(Protocol):
    """What the daemon provides to answer requests. Called on the event loop: each
    method must return quickly and must not block."""

    def add_hostfwd(self, fwd: HostFwdRequest) -> int:
        """Bind and register the forward; return its id. Raise `HostFwdError` (or
        `OSError`) when it cannot be set up."""
        ...

    def list_hostfwd(self) -> list[HostFwd]: ...

    def remove_hostfwd(self, fwd_id: int) -> None:
        """Raise `KeyError` for an unknown id."""
        ...

    def get_stats(self) -> dict[str, object]: ...

    def list_flows(self) -> list[dict[str, object]]: ...


class PolicyHandler(Protocol):
    """The egress policy's side of the API (the daemon). Called on the event
    loop; must return quickly."""

    def set_policy(self, policy: Policy) -> None:
        """Replace the policy atomically (flows it denies are closed); OSError
        when the engine refuses it (then nothing changed)."""
        ...

    def get_policy(self) -> Policy | None:
        """The policy in force; None when none was ever set (all allowed)."""
        ...


# ----------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class AddHostFwd:
    execute: ClassVar[str] = "add_hostfwd"
    fwd: HostFwdRequest


@dataclass(frozen=True, slots=True)
class ListHostFwd:
    execute: ClassVar[str] = "list_hostfwd"


@dataclass(frozen=True, slots=True)
class RemoveHostFwd:
    execute: ClassVar[str] = "remove_hostfwd"
    id: int


@dataclass(frozen=True, slots=True)
class GetStats:
    execute: ClassVar[str] = "get_stats"


@dataclass(frozen=True, slots=True)
class ListFlows:
    execute: ClassVar[str] = "list_flows"


@dataclass(frozen=True, slots=True)
class SetPolicy:
    execute: ClassVar[str] = "set_policy"
    policy: Policy


@dataclass(frozen=True, slots=True)
class GetPolicy:
    execute: ClassVar[str] = "get_policy"


ApiRequest: TypeAlias = (
    AddHostFwd | ListHostFwd | RemoveHostFwd | GetStats | ListFlows | SetPolicy | GetPolicy
)


@dataclass(frozen=True, slots=True)
class ApiError:
    """A request that gets an error reply; `desc` is the full text sent."""

    desc: str

    def encode(self) -> bytes:
        return encode_error(self.desc)


# ------------------------------------------------------------------------ parsing


class _Invalid:
    """Marker for "not JSON" (``None`` is a valid JSON value)."""


_INVALID: Final = _Invalid()


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN/Infinity; JSON (and slirp4netns's parser) does not.
    raise ValueError(f"not JSON: {name}")


def _load_json(data: bytes) -> object:
    try:
        # Strict UTF-8: json.loads(bytes) would also guess UTF-16/32.
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError and UnicodeDecodeError; RecursionError
        # is what 4 KiB of "[[[[" gives.
        return _INVALID


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _parse_ip(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A plain IPv4 or IPv6 literal, as inet_pton would take it; else None."""
    if not isinstance(value, str) or "%" in value:
        # Scoped addresses (fe80::1%eth0) cannot be expressed to the engine.
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _parse_uint(value: object, lo: int, hi: int) -> int | None:
    """A JSON number with an integral value in lo..hi; else None."""
    if isinstance(value, bool):  # bool is an int subclass; true is not port 1
        return None
    if isinstance(value, float):
        if not value.is_integer():  # also rejects inf and nan
            return None
        value = int(value)
    if not isinstance(value, int) or not lo <= value <= hi:
        return None
    return value


def _parse_add(args: dict[str, object], default_guest_addr: str) -> AddHostFwd | ApiError:
    proto = args.get("proto")
    if not isinstance(proto, str) or proto not in PROTOS:
        return ApiError(ERR_ADD_PROTO)

    host_raw = args.get("host_addr")
    if host_raw is None or host_raw == "":
        host_raw = "::" if proto.endswith("6") else "0.0.0.0"
    host = _parse_ip(host_raw)
    if host is None or (proto.endswith("4") and host.version != 4):
        return ApiError(ERR_ADD_HOST_ADDR)
    if proto.endswith("6") and host.version != 6:
        return ApiError(ERR_ADD_HOST_ADDR)

    host_port = _parse_uint(args.get("host_port"), 1, 65535)
    if host_port is None:
        return ApiError(ERR_ADD_HOST_PORT)

    guest_raw = args.get("guest_addr")
    if guest_raw is None or guest_raw == "":
        guest_raw = default_guest_addr
    guest = _parse_ip(guest_raw)
    if guest is None:
        return ApiError(ERR_ADD_GUEST_ADDR)

    guest_port = _parse_uint(args.get("guest_port"), 1, 65535)
    if guest_port is None:
        return ApiError(ERR_ADD_GUEST_PORT)

    splice = args.get("splice", False)
    if splice is None:
        splice = False
    if not isinstance(splice, bool) or (splice and not proto.startswith("tcp")):
        return ApiError(ERR_ADD_SPLICE)

    return AddHostFwd(
        HostFwdRequest(proto, str(host), host_port, str(guest), guest_port, splice)
    )


def _parse_set_policy(args: dict[str, object]) -> SetPolicy | ApiError:
    given = [k for k in ("preset", "policy", "toml") if k in args]
    if len(given) != 1:
        return ApiError(ERR_POLICY_ARGS)
    value = args[given[0]]
    try:
        if given[0] == "preset":
            if not isinstance(value, str) or value not in PRESETS:
                names = ", ".join(PRESETS)
                raise ConfigError(f"unknown preset {value!r} (presets: {names})")
            return SetPolicy(PRESETS[value])
        if given[0] == "policy":
            return SetPolicy(policy_from_dict(value, "<api>"))
        if not isinstance(value, str):
            raise ConfigError("arguments.toml must be a string (the policy file's text)")
        return SetPolicy(parse_policy_text(value, "<api>"))
    except ConfigError as e:
        return ApiError(f"{ERR_SET_POLICY}: {e}")


def parse_request(data: bytes, *, default_guest_addr: str) -> ApiRequest | ApiError:
    """Validate the bytes of one request (everything the client sent).

    `default_guest_addr` is used when ``guest_addr`` is missing or empty (N+100).
    Never raises.
    """
    if len(data) > MAX_REQUEST_SIZE:
        return ApiError(ERR_TOO_LARGE)
    obj = _load_json(data)
    if obj is _INVALID:
        return ApiError(ERR_CANNOT_PARSE)
    if not isinstance(obj, dict):
        return ApiError(ERR_NO_EXECUTE)
    execute = obj.get("execute")
    if not isinstance(execute, str):
        return ApiError(ERR_NO_EXECUTE)
    args = obj.get("arguments")
    if not isinstance(args, dict):
        # A missing or non-object "arguments" is reported by the first field check.
        args = {}

    if execute == "add_hostfwd":
        return _parse_add(args, default_guest_addr)
    if execute == "list_hostfwd":
        return ListHostFwd()
    if execute == "remove_hostfwd":
        fwd_id = _parse_uint(args.get("id"), 1, 2**63 - 1)
        return ApiError(ERR_REMOVE_ID) if fwd_id is None else RemoveHostFwd(fwd_id)
    if execute == "get_stats":
        return GetStats()
    if execute == "list_flows":
        return ListFlows()
    if execute == "set_policy":
        return _parse_set_policy(args)
    if execute == "get_policy":
        return GetPolicy()
    return ApiError(ERR_UNKNOWN_EXECUTE)


# ----------------------------------------------------------------------- encoding


def _dumps(obj: object) -> bytes:
    # Compact, ASCII-only, strict JSON: what slirp4netns's parson emits.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def encode_error(desc: str) -> bytes:
    return _dumps({"error": {"desc": desc}})


def encode_return(value: dict[str, object]) -> bytes:
    return _dumps({"return": value})


def encode_add_reply(fwd_id: int) -> bytes:
    return encode_return({"id": fwd_id})


def encode_list_reply(entries: Iterable[HostFwd]) -> bytes:
    # Both shapes: slirp4netns 1.2 sends top-level "entries", its manual documents
    # "return.entries"; clients of either kind must work.
    items = [e.to_json() for e in entries]
    return _dumps({"return": {"entries": items}, "entries": items})


def encode_remove_reply() -> bytes:
    return encode_return({})


def _checked_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"add_hostfwd handler returned {value!r}, not an id >= 1")
    return value


def encode_policy_reply(policy: Policy | None) -> bytes:
    if policy is None:  # never set: everything is allowed
        return encode_return({"name": None, "policy": {"default": "allow", "rule": []}})
    return encode_return({"name": policy.name or None, "policy": policy.to_json()})


def _dispatch_policy(req: SetPolicy | GetPolicy, policy: PolicyHandler | None) -> bytes:
    if policy is None:
        return encode_error(ERR_NO_POLICY)
    if isinstance(req, GetPolicy):
        return encode_policy_reply(policy.get_policy())
    try:
        policy.set_policy(req.policy)
    except OSError as exc:
        logger.info("api: set_policy failed: %s", exc)
        return encode_error(f"{ERR_SET_POLICY}: {exc.strerror or exc}")
    return encode_return({})


def _dispatch(req: ApiRequest, handler: ApiHandler, policy: PolicyHandler | None) -> bytes:
    if isinstance(req, SetPolicy | GetPolicy):
        return _dispatch_policy(req, policy)
    if isinstance(req, AddHostFwd):
        try:
            fwd_id = handler.add_hostfwd(req.fwd)
        except (HostFwdError, OSError) as exc:
            logger.info("api: add_hostfwd %s failed: %s", req.fwd, exc)
            if req.fwd.splice and isinstance(exc, HostFwdError):
                # A slirpy extension: no slirp4netns client parses this
                # reply, so it may say why.
                return encode_error(f"bad request: add_hostfwd: {exc}")
            return encode_error(ERR_ADD_FAILED)
        return encode_add_reply(_checked_id(fwd_id))
    if isinstance(req, ListHostFwd):
        return encode_list_reply(handler.list_hostfwd())
    if isinstance(req, RemoveHostFwd):
        try:
            handler.remove_hostfwd(req.id)
        except KeyError:
            return encode_error(ERR_REMOVE_ID)
        except OSError as exc:
            logger.info("api: remove_hostfwd %d failed: %s", req.id, exc)
            return encode_error(ERR_REMOVE_FAILED)
        return encode_remove_reply()
    if isinstance(req, GetStats):
        return encode_return(dict(handler.get_stats()))
    return encode_return({"flows": list(handler.list_flows())})


def handle_request(
    data: bytes,
    handler: ApiHandler,
    *,
    default_guest_addr: str,
    policy: PolicyHandler | None = None,
) -> bytes:
    """Answer one request: bytes in, reply bytes out. Never raises (but
    BaseExceptions such as KeyboardInterrupt go through). Without `policy`,
    set_policy and get_policy are answered with an error."""
    req = parse_request(data, default_guest_addr=default_guest_addr)
    if isinstance(req, ApiError):
        return req.encode()
    try:
        return _dispatch(req, handler, policy)
    except Exception:
        # A handler bug (or an unserialisable result) must cost one reply, not the
        # daemon.
        logger.exception("api: %s failed", req.execute)
        return encode_error(f"internal error: {req.execute} failed")


def _is_complete(buf: bytes | bytearray) -> bool:
    """Whether `buf` already holds a whole JSON object (the client may wait for the
    reply without half-closing and without a newline)."""
    end = buf.rstrip()
    # An object is self-delimiting, a bare number is not ("12" may become "123"):
    # only an object ending in "}" can be complete; this also keeps parse attempts
    # rare.
    if not end.endswith(b"}"):
        return False
    return isinstance(_load_json(bytes(end)), dict)


# ---------------------------------------------------------------------- asyncio edge


class ApiSocketError(OSError):
    """The API socket cannot be set up; str() is one readable line."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


def _check_path(path: str) -> None:
    raw = os.fsencode(path)
    if not raw:
        raise ValueError("api socket path is empty")
    if b"\0" in raw:
        raise ValueError(f"api socket path {path!r} contains a NUL byte")
    if len(raw) >= SUN_PATH_MAX:
        raise ValueError(
            f"api socket path {path!r} is {len(raw)} bytes long; "
            f"it must be shorter than {SUN_PATH_MAX} bytes (the Unix socket path limit)"
        )


def _remove_stale_socket(path: str) -> None:
    """Unlink `path` if it is a socket nobody listens on; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ApiSocketError(f"api socket {path} exists and is not a socket", errno.EEXIST)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Non-blocking: a live listener with a full backlog answers EAGAIN instead
        # of making us wait.
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # stale: the file outlived its process
        except FileNotFoundError:
            return
        except BlockingIOError:
            raise ApiSocketError(f"api socket {path} is in use", errno.EADDRINUSE) from None
        else:
            raise ApiSocketError(f"api socket {path} is in use", errno.EADDRINUSE)
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):  # someone else cleaned up first
        os.unlink(path)


class ApiServer:
    """The API socket: one request, one reply, one connection.

    ``await start()`` binds and listens; ``await close()`` stops, drops open
    connections and removes the socket file (only if it is still ours). Also an
    async context manager.
    """

    def __init__(
        self,
        path: str,
        handler: ApiHandler,
        *,
        default_guest_addr: str,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = DEFAULT_TIMEOUT,
        linger: float = DEFAULT_LINGER,
        backlog: int = 64,
        policy: PolicyHandler | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.path = path
        self.handler = handler
        self.policy = policy
        self.default_guest_addr = default_guest_addr
        self.max_connections = max_connections
        self.timeout = timeout
        self.linger = linger
        self._backlog = backlog
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[_ApiConnection] = set()
        self._rejected: set[_ApiConnection] = set()  # answered "busy", lingering
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._dirfd: int | None = None

    @property
    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("api server already started")
        _check_path(self.path)
        self._loop = asyncio.get_running_loop()
        _remove_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                sock.bind(self.path)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:  # lost a race with another daemon
                    raise ApiSocketError(
                        f"api socket {self.path} is in use", errno.EADDRINUSE
                    ) from None
                raise ApiSocketError(f"api socket {self.path}: {exc.strerror}", exc.errno) from None
            # A handle on the directory: the socket file can still be removed
            # after --enable-sandbox has pivoted away from the host's tree.
            self._dirfd = os.open(
                os.path.dirname(os.path.abspath(self.path)),
                os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
            )
            st = os.stat(self.path)
            self._ident = (st.st_dev, st.st_ino)
            sock.listen(self._backlog)
            self._server = await self._loop.create_unix_server(
                lambda: _ApiConnection(self), sock=sock, backlog=self._backlog
            )
        except BaseException:
            sock.close()
            self._unlink()
            raise

    async def close(self) -> None:
        """Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in [*self._conns, *self._rejected]:
            conn.abort()
        if server is not None:
            await server.wait_closed()
        self._unlink()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _unlink(self) -> None:
        ident, self._ident = self._ident, None
        dirfd, self._dirfd = self._dirfd, None
        if ident is None or dirfd is None:
            if dirfd is not None:
                os.close(dirfd)
            return
        name = os.path.basename(self.path)
        try:
            st = os.lstat(name, dir_fd=dirfd)
            # Do not remove a socket someone else put there after us.
            if (st.st_dev, st.st_ino) == ident:
                os.unlink(name, dir_fd=dirfd)
        except OSError:
            pass
        finally:
            if dirfd is not None:
                os.close(dirfd)

    def _register(self, conn: _ApiConnection) -> bool | None:
        """True: serve it. False: over the cap, answer "busy". None: even the
        "busy" answers are over their own cap (as many again): just close."""
        if len(self._conns) < self.max_connections:
            self._conns.add(conn)
            return True
        if len(self._rejected) < self.max_connections:
            self._rejected.add(conn)
            return False
        return None

    def _unregister(self, conn: _ApiConnection) -> None:
        self._conns.discard(conn)
        self._rejected.discard(conn)

    def _respond(self, data: bytes) -> bytes:
        return handle_request(
            data, self.handler, default_guest_addr=self.default_guest_addr, policy=self.policy
        )


_READING: Final = 0
_LINGERING: Final = 1
_DONE: Final = 2


class _ApiConnection(asyncio.Protocol):
    """One API connection.

    Reads until EOF, a complete JSON object, more than `MAX_REQUEST_SIZE` bytes or
    the server's timeout; answers once; then *lingers*: it half-closes its side
    (so clients reading to EOF finish) and drains what the client still sends
    until EOF, a byte cap or `linger` seconds. Closing with unread bytes in the
    socket would make the kernel hand the client ECONNRESET instead of EOF.
    Every callback swallows its own exceptions: asyncio would only log them and
    leave the connection hanging.
    """

    __slots__ = ("_buf", "_drained", "_server", "_state", "_timer", "_transport")

    def __init__(self, server: ApiServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._state = _READING
        self._timer: asyncio.TimerHandle | None = None
        self._drained = 0

    # asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        try:
            # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
            self._transport = cast(asyncio.Transport, transport)
            admitted = self._server._register(self)
            if admitted is None:
                # Beyond both caps: drop without ceremony.
                self._state = _DONE
                self._transport.close()
            elif admitted:
                self._arm(self._server.timeout)
            else:
                # Over the cap: answer "busy" at once, then linger like any reply so
                # that the client reads the error rather than ECONNRESET.
                self._reply(encode_error(ERR_BUSY), peer_done=False)
        except Exception:
            self._fail("connection_made")

    def data_received(self, data: bytes) -> None:
        try:
            if self._state == _READING:
                self._buf += data
                if len(self._buf) > MAX_REQUEST_SIZE or _is_complete(self._buf):
                    self._answer(peer_done=False)
            elif self._state == _LINGERING:
                self._drained += len(data)
                if self._drained > _LINGER_MAX_BYTES:
                    self._close()
        except Exception:
            self._fail("data_received")

    def eof_received(self) -> bool:
        try:
            if self._state == _READING:
                self._answer(peer_done=True)
            else:
                self._close()
        except Exception:
            self._fail("eof_received")
        return True  # we close ourselves (after the reply is flushed)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._state = _DONE
            self._cancel_timer()
            self._server._unregister(self)
            self._transport = None
            self._buf = bytearray()
        except Exception:
            logger.exception("api: connection_lost failed")

    # internals -----------------------------------------------------------------

    def abort(self) -> None:
        self._state = _DONE
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def _answer(self, *, peer_done: bool) -> None:
        # Only the first MAX_REQUEST_SIZE + 1 bytes matter (more means "too large").
        data = bytes(self._buf[: MAX_REQUEST_SIZE + 1])
        self._buf = bytearray()
        self._reply(self._server._respond(data), peer_done=peer_done)

    def _reply(self, reply: bytes, *, peer_done: bool) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(reply)
        if peer_done:
            self._close()  # close() flushes the reply first
            return
        self._state = _LINGERING
        if transport.can_write_eof():
            transport.write_eof()
        self._arm(self._server.linger)

    def _on_timer(self) -> None:
        try:
            self._timer = None
            if self._state == _READING:
                # Answer what came (usually "cannot parse JSON"): a client that
                # neither finishes nor half-closes gets an error, not silence.
                self._answer(peer_done=False)
            else:
                self._close()
        except Exception:
            self._fail("timer")

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        loop = self._server._loop
        assert loop is not None
        self._timer = loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        self._state = _DONE
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _fail(self, where: str) -> None:
        logger.exception("api: connection error in %s", where)
        try:
            self.abort()
        except Exception:
            logger.exception("api: abort failed")
