"""Wire format of the robot server: length-prefixed, authenticated frames. No pickle.

One frame (integers little-endian)::

    magic    4 bytes   b"RRB1"
    hlen     u32       header length in bytes
    plen     u32       payload length in bytes
    header   hlen      UTF-8 JSON object
    payload  plen      raw array bytes, each array starting at a multiple of 8
    mac      32 bytes  HMAC-SHA256(token, CONTEXT | direction | nonce | magic .. payload)

``header["arrays"]`` lists ``[name, dtype, shape]`` for each array of the
payload, in order; dtypes are little-endian numpy strings from :data:`DTYPES`.
Both lengths are checked against :class:`FrameLimits` before anything is
allocated, and the MAC is verified before the header is parsed, so bytes from a
party without the token never reach the JSON parser.

A session: on accept the server sends an unsigned hello ``{"hello":
"robot-remote", "protocol": 1, "nonce": <64 hex>}`` with a fresh random nonce.
Every request then carries ``"seq"`` = 1, 2, 3, ... and is signed with direction
``b"C"``; the server answers each with the same ``seq`` signed with direction
``b"S"``. A frame from another session (other nonce), a replay (old ``seq``) or a
server frame sent back (other direction) fails.

A request header is ``{"seq", "op", "args", "arrays"}`` with ``op`` one of
:data:`OPS`; a reply is ``{"seq", "ok": true, "result", "arrays"}`` or
``{"seq", "ok": false, "error": {"kind", "message"}}`` (a signed error: the
request was refused, the session goes on). Replies a server sends to a client
it could not authenticate (hello, ``busy``, ``auth``, malformed frame) are
unsigned errors: they never carry data, and a client treats them as final.
The hello is deliberately unsigned: a signed one would hand anyone who connects
a MAC to test token guesses against offline.

The channel is authenticated, not encrypted: observations cross the network in
clear. Use a private network or an SSH tunnel across untrusted links.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

PROTOCOL = 1
MAGIC = b"RRB1"
CONTEXT = b"robot-remote/1"
TO_SERVER, TO_CLIENT = b"C", b"S"
NONCE_BYTES = 32
MAC_BYTES = 32
MIN_TOKEN_CHARS = 16
DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})
MAX_DIMS = 8
# op -> (argument names it may take, array names it must carry); every other key is refused
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "describe": ((), ()),  # name, features, limits, layout, watchdog timeout
    "time": ((), ()),  # the server's monotonic clock, for the client's offset estimate
    "connect": ((), ()),
    "disconnect": ((), ()),
    "reset": (("seed",), ()),
    "get_observation": ((), ()),
    "send_action": ((), ("action",)),
    "hold": ((), ()),
    "estop": ((), ()),
    "clear_estop": ((), ()),
    "status": ((), ()),  # connected, e-stop, counters, last interventions, watchdog timeout
    "arm_state": ((), ()),
    "override_watchdog": (("timeout_s",), ()),
    "restore_watchdog": ((), ()),
}
_PREFIX = struct.Struct("<4sII")  # magic, hlen, plen
_ZERO_MAC = bytes(MAC_BYTES)


class ProtocolError(ValueError):
    """A frame that breaks the wire format (bad magic, oversize, bad JSON, bad array spec)."""


class PeerClosed(ConnectionError):
    """The other side closed the connection in the middle of a frame."""


@dataclass(frozen=True)
class FrameLimits:
    """Largest frame a reader accepts; checked on the length prefix, before allocation."""

    max_header_bytes: int = 64 << 10
    """Largest JSON header."""
    max_payload_bytes: int = 1 << 20
    """Largest array payload (a server reading actions needs little; a client reading images more)."""
    max_arrays: int = 64
    """Most arrays one frame may describe."""

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_payload_bytes", "max_arrays"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FrameLimits.{name} must be positive, got {getattr(self, name)}")
        if self.max_header_bytes + self.max_payload_bytes > 1 << 32:
            raise ValueError("FrameLimits: header and payload limits must add up to at most 4 GiB")


@dataclass(frozen=True)
class RawFrame:
    """A frame as read off the socket: checked lengths, not yet authenticated or parsed."""

    prefix: bytes
    header: memoryview
    payload: memoryview
    mac: bytes


def check_token(token: str | bytes | None, *, who: str) -> bytes:
    """The token as bytes; a clear error when it is missing or too short to resist guessing."""
    if token is None or len(token) == 0:
        raise ValueError(
            f"{who} needs a shared secret token: set ROBOT_TOKEN (or pass --token-file / token=); make one with "
            "`python -c 'import secrets; print(secrets.token_hex(16))'`"
        )
    key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    if len(key) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"{who}: the token has {len(key)} characters, fewer than {MIN_TOKEN_CHARS}; use a random one, e.g. "
            "`python -c 'import secrets; print(secrets.token_hex(16))'`"
        )
    return key


def mac(key: bytes, direction: bytes, nonce: bytes, prefix: bytes, header: bytes, payload: bytes) -> bytes:
    h = hmac.new(key, CONTEXT + direction + nonce, hashlib.sha256)
    for part in (prefix, header, payload):
        h.update(part)
    return h.digest()


def verify(frame: RawFrame, key: bytes, direction: bytes, nonce: bytes) -> bool:
    """Whether ``frame`` was signed with ``key`` for this direction and session (constant-time compare)."""
    expected = mac(key, direction, nonce, frame.prefix, frame.header, frame.payload)
    return hmac.compare_digest(expected, frame.mac)


def encode_frame(
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    key: bytes | None,
    direction: bytes,
    nonce: bytes,
    limits: FrameLimits | None = None,
) -> bytes:
    """One frame as bytes; ``key=None`` sends it unsigned (a zero MAC). ``limits`` are the reader's."""
    specs, chunks, offset = [], [], 0
    for name, value in (arrays or {}).items():
        arr = _wire_array(name, value)
        pad = _aligned(offset) - offset
        chunks += [bytes(pad), arr.tobytes()]
        offset += pad + arr.nbytes
        specs.append([name, arr.dtype.str, list(arr.shape)])
    body = json.dumps({**header, "arrays": specs}, allow_nan=False, separators=(",", ":")).encode("utf-8")
    payload = b"".join(chunks)
    if limits is not None and (len(body) > limits.max_header_bytes or len(payload) > limits.max_payload_bytes):
        raise ProtocolError(
            f"frame of {len(body)} header + {len(payload)} payload bytes exceeds the reader's limits "
            f"({limits.max_header_bytes} + {limits.max_payload_bytes}); send less per message or raise the limits"
        )
    prefix = _PREFIX.pack(MAGIC, len(body), len(payload))
    signature = _ZERO_MAC if key is None else mac(key, direction, nonce, prefix, body, payload)
    return b"".join((prefix, body, payload, signature))


def read_frame(sock: socket.socket, limits: FrameLimits, timeout: float) -> RawFrame | None:
    """Read one frame within ``timeout`` seconds; ``None`` when the peer closed before sending a byte.

    Raises :class:`ProtocolError` (bad magic, lengths over ``limits``: nothing is
    allocated for them), :class:`PeerClosed` (EOF mid-frame) or ``TimeoutError``.
    """
    deadline = time.monotonic() + timeout
    prefix = _recv_exact(sock, _PREFIX.size, deadline, eof_ok=True)
    if prefix is None:
        return None
    magic, hlen, plen = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a robot-remote frame")
    if hlen > limits.max_header_bytes or plen > limits.max_payload_bytes:
        raise ProtocolError(
            f"frame announces {hlen} header + {plen} payload bytes, over the limits "
            f"{limits.max_header_bytes} + {limits.max_payload_bytes}"
        )
    rest = memoryview(_recv_exact(sock, hlen + plen + MAC_BYTES, deadline))
    return RawFrame(bytes(prefix), rest[:hlen], rest[hlen : hlen + plen], bytes(rest[hlen + plen :]))


class FrameReader:
    """Frames out of a byte stream fed as it arrives, so a server reading many sockets never waits on one.

    ``feed`` raises :class:`ProtocolError` as soon as a prefix is bad (magic, lengths over ``limits``: nothing
    is buffered for them). ``started`` is when the frame still incomplete in the buffer began (None: none is)."""

    def __init__(self, limits: FrameLimits):
        self.limits = limits
        self._buf = bytearray()
        self.started: float | None = None

    def feed(self, data: bytes) -> list[RawFrame]:
        now = time.monotonic()
        if data and not self._buf:
            self.started = now
        self._buf += data
        frames: list[RawFrame] = []
        while len(self._buf) >= _PREFIX.size:
            magic, hlen, plen = _PREFIX.unpack_from(self._buf)
            if magic != MAGIC:
                raise ProtocolError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a robot-remote frame")
            if hlen > self.limits.max_header_bytes or plen > self.limits.max_payload_bytes:
                raise ProtocolError(
                    f"frame announces {hlen} header + {plen} payload bytes, over the limits "
                    f"{self.limits.max_header_bytes} + {self.limits.max_payload_bytes}"
                )
            end = _PREFIX.size + hlen + plen + MAC_BYTES
            if len(self._buf) < end:
                break
            raw = bytes(self._buf[:end])
            del self._buf[:end]
            body = memoryview(raw)[_PREFIX.size :]
            frames.append(RawFrame(raw[: _PREFIX.size], body[:hlen], body[hlen : hlen + plen], bytes(body[hlen + plen :])))
            self.started = now if self._buf else None  # what is left began with this read
        return frames


def decode_header(frame: RawFrame) -> dict[str, Any]:
    """The header as a dict; :class:`ProtocolError` for anything but a UTF-8 JSON object without NaN/inf."""
    try:
        header = json.loads(bytes(frame.header).decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise ProtocolError(f"header is not UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    return header


def decode_arrays(header: Mapping[str, Any], frame: RawFrame, limits: FrameLimits) -> dict[str, np.ndarray]:
    """The arrays ``header["arrays"]`` describes, as views of the payload; every spec and size is checked."""
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) > limits.max_arrays:
        raise ProtocolError(f"'arrays' must be a list of at most {limits.max_arrays} [name, dtype, shape] entries")
    payload, arrays, offset = frame.payload, {}, 0
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 3):
            raise ProtocolError(f"array spec {str(spec)[:80]} is not [name, dtype, shape]")
        name, dtype, shape = spec
        if not isinstance(name, str) or not 0 < len(name) <= 200 or name in arrays:
            raise ProtocolError(f"array name {str(name)[:80]!r} is empty, too long, repeated or not a string")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ProtocolError(f"array {name}: dtype {str(dtype)[:20]!r} is not one of {sorted(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or any(type(d) is not int or d < 0 for d in shape):
            raise ProtocolError(f"array {name}: shape {str(shape)[:80]} is not a list of <= {MAX_DIMS} sizes >= 0")
        dt = np.dtype(dtype)
        count = math.prod(shape)
        offset = _aligned(offset)
        if offset + count * dt.itemsize > len(payload):
            raise ProtocolError(f"array {name} ({dtype} {shape}) runs past the {len(payload)}-byte payload")
        arrays[name] = np.frombuffer(payload, dtype=dt, count=count, offset=offset).reshape(tuple(shape))
        offset += count * dt.itemsize
    if offset != len(payload):
        raise ProtocolError(f"payload holds {len(payload) - offset} bytes no array describes")
    return arrays


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def to_wire(value: Any) -> dict[str, Any]:
    """A frozen dataclass of numbers and tuples (``ArmLimits``, ``ActionLayout``) as a JSON-able dict."""
    return dataclasses.asdict(value)


def from_wire(cls: type, data: Any) -> Any:
    """The dataclass ``cls`` back from :func:`to_wire` output; lists become tuples; its own checks run."""
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(data, dict) or set(data) != names:
        raise ProtocolError(f"{cls.__name__} on the wire must have exactly the fields {sorted(names)}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"bad {cls.__name__} on the wire: {e}") from None


def tag_nonfinite(value: Any) -> Any:
    """``value`` with every float inf/-inf/nan replaced by the string "inf"/"-inf"/"nan" (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: tag_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tag_nonfinite(v) for v in value]
    return value


def untag_nonfinite(value: Any) -> Any:
    """The inverse of :func:`tag_nonfinite`."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: untag_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag_nonfinite(v) for v in value]
    return value


def _wire_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.str not in DTYPES or arr.ndim > MAX_DIMS:
        raise ProtocolError(f"cannot send array {name} of dtype {arr.dtype} and {arr.ndim} dims; use a numeric dtype")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d arrays 1-d)


def _aligned(offset: int) -> int:
    return (offset + 7) & ~7


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a header")


def _recv_exact(sock: socket.socket, n: int, deadline: float, *, eof_ok: bool = False) -> bytearray | None:
    """Exactly ``n`` bytes before ``deadline``; ``None`` on EOF before the first byte when ``eof_ok``."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"only {got} of {n} bytes arrived in time")
        sock.settimeout(remaining)
        k = sock.recv_into(view[got:])
        if k == 0:
            if got == 0 and eof_ok:
                return None
            raise PeerClosed(f"connection closed after {got} of {n} bytes")
        got += k
    return buf
