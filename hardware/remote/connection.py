"""The client side of one connection to a robot server: greeting, signed requests, refusals, errors.

:class:`Connection` is one TCP session (the server's nonce, our sequence
number); :class:`hardware.remote.client.RemoteRobot` opens them. The errors a
user sees name the server's address and what to do about it.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from hardware.remote.protocol import (
    PROTOCOL,
    TO_CLIENT,
    TO_SERVER,
    FrameLimits,
    PeerClosed,
    ProtocolError,
    decode_arrays,
    decode_header,
    encode_frame,
    read_frame,
    verify,
)

_SERVER_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "RuntimeError": RuntimeError,
    "KeyError": KeyError,
}


class RemoteError(ConnectionError):
    """The robot server could not be used: unreachable, busy, refused us, or the connection dropped."""


class RemoteUnavailable(RemoteError):
    """Nothing that speaks the robot protocol answers at host:port."""


class RemoteAuthError(RemoteError):
    """The server refused our token (or its replies failed authentication)."""


class RemoteConnectionLost(RemoteError):
    """The connection dropped or stalled mid-session; the server's watchdog holds the arm."""


@dataclass(frozen=True)
class RemoteConfig:
    """Where the robot server is and how long to wait for it."""

    host: str = "127.0.0.1"
    """Host running ``robot serve``."""
    port: int = 8765
    """Its port."""
    connect_timeout_s: float = 3.0
    """TCP connect plus the server's greeting."""
    request_timeout_s: float = 5.0
    """Longest wait for one reply; past it the session is dropped (its replies can no longer be matched)."""
    reset_timeout_s: float = 120.0
    """Longest wait for ``reset()`` (a real arm moves home, an operator may be asked)."""
    max_reply_bytes: int = 256 << 20
    """Largest reply payload accepted (camera frames)."""
    clock_probes: int = 8
    """Time requests at connect; the shortest round trip gives the clock offset."""

    def __post_init__(self) -> None:
        if not 0 < self.port <= 65535:
            raise ValueError(f"RemoteConfig.port must be in 1..65535, got {self.port}")
        for name in ("connect_timeout_s", "request_timeout_s", "reset_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RemoteConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.max_reply_bytes > 0 or not self.clock_probes >= 1:
            raise ValueError("RemoteConfig: max_reply_bytes must be positive and clock_probes >= 1")

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Connection:
    """One TCP connection: the server's nonce and our sequence number."""

    def __init__(self, config: RemoteConfig, key: bytes):
        self.config, self.key, self.where = config, key, config.where
        self.limits = FrameLimits(max_header_bytes=1 << 20, max_payload_bytes=config.max_reply_bytes)
        hint = f"is `robot serve --port {config.port}` running on {config.host}?"
        try:
            self.sock = socket.create_connection((config.host, config.port), timeout=config.connect_timeout_s)
        except OSError as e:
            raise RemoteUnavailable(f"cannot reach the robot server at {self.where} ({e}); {hint}") from None
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            hello = read_frame(self.sock, FrameLimits(max_payload_bytes=1), config.connect_timeout_s)
            if hello is None:
                raise PeerClosed("closed before greeting")
            header = decode_header(hello)
        except (OSError, ProtocolError) as e:
            self.sock.close()
            raise RemoteUnavailable(f"{self.where} did not greet like a robot server ({e}); {hint}") from None
        if header.get("ok") is False:
            self.sock.close()
            raise _refusal(self.where, header)
        if header.get("hello") != "robot-remote" or header.get("protocol") != PROTOCOL:
            self.sock.close()
            raise RemoteUnavailable(
                f"{self.where} speaks protocol {header.get('protocol')!r}, this client {PROTOCOL}; "
                "install the same kit version on both computers"
            )
        try:
            self.nonce = bytes.fromhex(str(header.get("nonce")))
        except ValueError:
            self.sock.close()
            raise RemoteUnavailable(f"{self.where} sent a malformed greeting (nonce)") from None
        self.seq = 0

    def request(
        self, op: str, args: Mapping[str, Any], arrays: Mapping[str, np.ndarray], timeout: float
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One round trip. Server-side errors come back as ValueError/TypeError/RuntimeError/KeyError."""
        seq = self.seq + 1
        try:
            frame = encode_frame(
                {"seq": seq, "op": op, "args": dict(args)}, arrays, key=self.key, direction=TO_SERVER, nonce=self.nonce
            )
        except ProtocolError as e:
            raise TypeError(str(e)) from None  # nothing sent: the session is intact
        self.seq = seq
        self.sock.settimeout(timeout)
        self.sock.sendall(frame)
        raw = read_frame(self.sock, self.limits, timeout)
        if raw is None:
            raise PeerClosed("the server closed the connection")
        header = decode_header(raw)
        if not verify(raw, self.key, TO_CLIENT, self.nonce):
            raise _refusal(self.where, header)
        if header.get("seq") != seq:
            raise ProtocolError(f"reply for request {header.get('seq')!r} while waiting for {seq}")
        if header.get("ok") is True:
            result = header.get("result")
            return (result if isinstance(result, dict) else {}), decode_arrays(header, raw, self.limits)
        error = header.get("error") if isinstance(header.get("error"), dict) else {}
        kind = _SERVER_ERRORS.get(str(error.get("kind")), RuntimeError)
        raise kind(f"robot server {self.where}: {error.get('message', 'request failed')}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _refusal(where: str, header: Mapping[str, Any]) -> RemoteError:
    """The error for an unsigned reply: the server refused us (auth, busy, protocol) or someone else answered."""
    error = header.get("error") if header.get("ok") is False and isinstance(header.get("error"), dict) else None
    if error is None:
        return RemoteAuthError(f"a reply from {where} failed authentication; is another service on that port?")
    kind, message = str(error.get("kind")), str(error.get("message", ""))[:500]
    if kind == "auth":
        return RemoteAuthError(
            f"the robot server at {where} refused our token ({message}); use the token the server was started "
            "with (ROBOT_TOKEN, or token=...)"
        )
    if kind == "busy":
        return RemoteError(f"the robot server at {where} is busy ({message}); stop the other client first")
    return RemoteError(f"the robot server at {where} refused a request ({kind}): {message}")
