"""``RobotServer``: one ``SafeRobot`` exposed over TCP to one authenticated client at a time.

What runs next to the arm for ``robot serve``. The server is a single thread
(requests are handled one by one, in order); the arm's own watchdog thread
(``SafeRobot``) holds it whenever commands stop, whatever the network does.

- It binds to loopback unless told otherwise and serves one client at a time. Every
  connection is greeted, but only one whose first request is signed with the token
  takes the slot; until then it waits among at most ``max_pending`` others (the
  oldest is dropped for a new one) for ``auth_timeout_s``, so strangers that connect,
  stay silent or reconnect in a loop never keep the token holder out. A signed first
  request while the slot is taken gets a ``busy`` error and the connection is closed.
- Sockets are read as bytes arrive, never waiting on one: a frame that has begun must
  be whole within ``frame_timeout_s`` or its connection ends, and meanwhile every
  other connection is served.
- Every request must carry the session's next sequence number and a valid MAC
  (:mod:`hardware.remote.protocol`). A frame that is oversized, malformed,
  unsigned, signed with another token, replayed or out of order gets an
  unsigned error reply and the connection is closed; the robot is not touched.
  A signed request with bad fields gets a signed error reply and the session goes on.
- The watchdog is always on: the robot runs under ``config.watchdog_timeout_s``
  (or its own, if shorter). A client may shorten it (``override_watchdog``),
  never lengthen or disable it; its overrides end with its session.
- When a session that drove the arm ends without ``disconnect`` (client killed,
  network gone), the arm holds at once and stays connected under the watchdog.
  The e-stop latches across sessions until a client clears it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from hardware.remote.protocol import (
    PROTOCOL,
    TO_CLIENT,
    TO_SERVER,
    FrameLimits,
    FrameReader,
    ProtocolError,
    check_token,
    decode_arrays,
    decode_header,
    encode_frame,
    new_nonce,
    verify,
)
from hardware.remote.handlers import RequestHandler, Session
from hardware.safety import SafeRobot

_ERROR_KINDS = (ValueError, TypeError, KeyError, RuntimeError)  # re-raised as such by the client


@dataclass(frozen=True)
class ServerConfig:
    """Where and how strictly ``robot serve`` listens."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default. Any other address exposes the arm to that network."""
    port: int = 8765
    """TCP port; 0 lets the OS pick a free one (read it back from ``RobotServer.address``)."""
    watchdog_timeout_s: float = 0.5
    """The arm holds when no command arrived for this long; clients may shorten it, never lengthen or disable it."""
    frame_timeout_s: float = 2.0
    """A frame that has started must arrive whole within this time, else the session ends."""
    auth_timeout_s: float = 5.0
    """A new connection must send its first request within this time, so idle strangers cannot hold the slot."""
    idle_timeout_s: float | None = 600.0
    """A session without a request for this long ends, freeing the one client slot; None: never."""
    max_request_bytes: int = 1 << 20
    """Largest request payload accepted (an action is a few bytes)."""
    max_pending: int = 8
    """Connections greeted but not yet authenticated, at most; a new one drops the oldest."""
    max_watchdog_overrides: int = 4
    """Most nested ``override_watchdog`` blocks one client may hold open."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServerConfig.port must be in 0..65535 (0 picks a free port), got {self.port}")
        if self.max_pending < 1:
            raise ValueError(f"ServerConfig.max_pending must be >= 1, got {self.max_pending}")
        for name in ("watchdog_timeout_s", "frame_timeout_s", "auth_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be positive, got {getattr(self, name)}")
        if self.idle_timeout_s is not None and not self.idle_timeout_s > 0:
            raise ValueError(f"ServerConfig.idle_timeout_s must be positive or None, got {self.idle_timeout_s}")
        if not self.max_request_bytes > 0 or not self.max_watchdog_overrides >= 0:
            raise ValueError("ServerConfig: max_request_bytes must be positive and max_watchdog_overrides >= 0")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RobotServer:
    """Serve ``robot`` to one authenticated client at a time.

    ``with RobotServer(robot, token) as server:`` listens and serves from a
    background thread (``server.address`` is where); ``start()`` then
    ``serve_forever()`` serves from the calling thread until :meth:`stop` or
    Ctrl-C. :meth:`close` ends the session, disconnects the robot and stops
    listening. ``on_event`` receives one line per session event.
    """

    def __init__(
        self,
        robot: SafeRobot,
        token: str | bytes | None,
        config: ServerConfig = ServerConfig(),
        on_event: Callable[[str], None] | None = None,
    ):
        self.robot, self.config = robot, config
        self._key = check_token(token, who="robot server")
        self._on_event = on_event or (lambda line: None)
        self._limits = FrameLimits(max_payload_bytes=config.max_request_bytes)
        own = robot.watchdog_timeout_s
        self.watchdog_timeout_s = config.watchdog_timeout_s if own is None else min(own, config.watchdog_timeout_s)
        self._handler = RequestHandler(robot, self.watchdog_timeout_s, config.max_watchdog_overrides)
        self.refusals: Counter[str] = Counter()  # reason (auth, protocol, sequence, busy) -> connections refused
        self.sessions = 0
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._session: Session | None = None
        self._reader: FrameReader | None = None  # the session's
        self._pending: dict[socket.socket, _Pending] = {}  # greeted, not yet authenticated
        self._watchdog = contextlib.ExitStack()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("robot server is not listening; call start() first")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def client(self) -> str | None:
        """``host:port`` of the client being served, or None."""
        session = self._session
        return None if session is None else session.peer

    def start(self) -> "RobotServer":
        """Bind, listen and put the robot under the server's watchdog."""
        host, port = self.config.host, self.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._listener = socket.create_server((host, port), family=family, backlog=4)
        except OSError as e:
            raise OSError(f"robot server cannot listen on {host}:{port}: {e}; pick another --port or --host") from e
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._watchdog.enter_context(self.robot.override_watchdog(self.watchdog_timeout_s))
        self._stopped.clear()
        return self

    def serve_forever(self, poll_s: float = 0.1) -> None:
        """Serve until :meth:`stop` (checked every ``poll_s``) or KeyboardInterrupt."""
        while not self._stopped.is_set():
            self.poll(poll_s)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` for connections and bytes, handle what arrived, then enforce the deadlines."""
        assert self._selector is not None, "call start() first"
        for key, _ in self._selector.select(timeout):
            try:
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj in self._pending:
                    self._read_pending(key.fileobj)
                elif self._session is not None and key.fileobj is self._session.sock:
                    self._read_session(self._session)
            except Exception as e:  # a bug must not take the server down; the arm's watchdog still runs
                self._on_event(f"internal error ({type(e).__name__}: {e})")
                if self._session is not None and key.fileobj is self._session.sock:
                    self._end_session("internal error")
                else:
                    self._drop_pending(key.fileobj, "internal error")
        now, frame_s, auth_s = time.monotonic(), self.config.frame_timeout_s, self.config.auth_timeout_s
        for sock, pending in list(self._pending.items()):
            if now - pending.opened > auth_s:
                self._drop_pending(sock, f"no signed request within {auth_s:g} s of connecting")
            elif pending.reader.started is not None and now - pending.reader.started > frame_s:
                self._drop_pending(sock, f"a frame did not arrive whole within {frame_s:g} s")
        s, idle = self._session, self.config.idle_timeout_s
        if s is not None and self._reader is not None and self._reader.started is not None and now - self._reader.started > frame_s:
            self._end_session(f"a frame did not arrive whole within {frame_s:g} s")
        elif s is not None and idle is not None and now - s.last_request > idle:
            self._end_session(f"idle for more than {idle:g} s")

    def stop(self) -> None:
        """Make :meth:`serve_forever` return (and wait for the background thread)."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop serving, end the session, disconnect the robot, stop listening."""
        self.stop()
        try:
            for sock in list(self._pending):
                self._drop_pending(sock, "server stopped")
            self._end_session("server stopped")
            self.robot.disconnect()
            self._watchdog.close()
        finally:
            if self._selector is not None:
                self._selector.close()
                self._selector = None
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    def __enter__(self) -> "RobotServer":
        self.start()
        self._thread = threading.Thread(target=self.serve_forever, name="robot-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ----------------------------------------------------------------------

    def _accept(self) -> None:
        """Greet a new connection; it waits among the pending ones until its first request is signed."""
        assert self._listener is not None and self._selector is not None
        try:
            sock, addr = self._listener.accept()
        except OSError:  # the client gave up between select and accept
            return
        peer = f"{addr[0]}:{addr[1]}"
        sock.settimeout(self.config.frame_timeout_s)  # for sends; reads happen only when bytes are there
        if len(self._pending) >= self.config.max_pending:
            oldest = min(self._pending, key=lambda k: self._pending[k].opened)
            self._drop_pending(oldest, f"{self.config.max_pending} connections waiting to authenticate: the oldest goes")
        nonce = new_nonce()
        hello = {"hello": "robot-remote", "protocol": PROTOCOL, "nonce": nonce.hex()}
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keepalive(sock)
            sock.sendall(encode_frame(hello, key=None, direction=TO_CLIENT, nonce=nonce))
        except OSError:
            sock.close()
            return
        self._pending[sock] = _Pending(peer, nonce, FrameReader(self._limits))
        self._selector.register(sock, selectors.EVENT_READ)

    def _read_pending(self, sock: socket.socket) -> None:
        """Bytes from a connection not yet authenticated: its first whole frame decides whether it takes the slot."""
        pending = self._pending[sock]
        try:
            data = sock.recv(1 << 16)
            frames = pending.reader.feed(data)
        except ProtocolError as e:
            return self._refuse_pending(sock, "protocol", str(e))
        except OSError as e:
            return self._drop_pending(sock, f"connection lost ({e})")
        if not data:
            return self._drop_pending(sock, "closed before a request")
        if not frames:
            return
        if not verify(frames[0], self._key, TO_SERVER, pending.nonce):
            return self._refuse_pending(sock, "auth", "authentication failed: request not signed with this server's token")
        if self._session is not None:
            return self._refuse_pending(sock, "busy", f"robot server is serving {self._session.peer}; one client at a time")
        del self._pending[sock]
        self._session, self._reader = Session(sock, pending.peer, pending.nonce, opened=pending.opened), pending.reader
        self.sessions += 1
        self._on_event(f"client {pending.peer} connected")
        self._handle_frames(self._session, frames)

    def _read_session(self, s: Session) -> None:
        try:
            data = s.sock.recv(1 << 16)
            frames = self._reader.feed(data) if self._reader is not None else []
        except ProtocolError as e:
            return self._refuse(s, "protocol", str(e))
        except OSError as e:  # reset
            return self._end_session(f"connection lost ({e})")
        if not data:
            return self._end_session("client closed the connection" + (" mid-frame" if self._reader and self._reader.started else ""))
        self._handle_frames(s, frames)

    def _handle_frames(self, s: Session, frames: list) -> None:
        for frame in frames:
            if self._session is not s:  # a refusal ended it
                return
            self._handle(s, frame)

    def _handle(self, s: Session, frame) -> None:
        """Answer one whole frame; refuse and close on anything not from the token holder."""
        if not verify(frame, self._key, TO_SERVER, s.nonce):
            return self._refuse(s, "auth", "authentication failed: request not signed with this server's token")
        try:
            header = decode_header(frame)
        except ProtocolError as e:
            return self._refuse(s, "protocol", str(e))
        seq = header.get("seq")
        if type(seq) is not int or seq != s.next_seq:
            return self._refuse(s, "sequence", f"request seq {str(seq)[:20]} is out of sequence (expected {s.next_seq})")
        s.next_seq, s.requests, s.last_request = s.next_seq + 1, s.requests + 1, time.monotonic()
        try:
            arrays = decode_arrays(header, frame, self._limits)
            result, out = self._handler.run(s, header.get("op"), header.get("args", {}), arrays)
            reply = encode_frame({"seq": seq, "ok": True, "result": result}, out, **self._signing(s))
        except Exception as e:  # a bad request or a robot error: answer it and keep serving
            kind = next((k.__name__ for k in _ERROR_KINDS if isinstance(e, k)), "RuntimeError")
            error = {"kind": kind, "message": str(e)[:2000] or type(e).__name__}
            reply = encode_frame({"seq": seq, "ok": False, "error": error}, **self._signing(s))
        try:
            s.sock.sendall(reply)
        except OSError as e:
            self._end_session(f"could not reply ({e})")

    def _refuse_pending(self, sock: socket.socket, reason: str, message: str) -> None:
        self._refuse_socket(sock, reason, message)
        self._drop_pending(sock, f"refused ({reason}): {message[:200]}")

    def _drop_pending(self, sock: Any, reason: str) -> None:
        pending = self._pending.pop(sock, None)
        if pending is not None:  # said before the close, so whoever sees the connection end can read why
            self._on_event(f"connection from {pending.peer} closed before it authenticated: {reason}")
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def _signing(self, s: Session) -> dict[str, Any]:
        return {"key": self._key, "direction": TO_CLIENT, "nonce": s.nonce}

    def _refuse(self, s: Session, reason: str, message: str) -> None:
        self._refuse_socket(s.sock, reason, message)
        self._end_session(f"refused ({reason}): {message[:200]}")

    def _refuse_socket(self, sock: socket.socket, reason: str, message: str) -> None:
        """An unsigned error reply; the caller closes: nothing the token holder did not sign gets further."""
        self.refusals[reason] += 1
        with contextlib.suppress(OSError):
            error = {"ok": False, "error": {"kind": reason, "message": message[:500]}}
            sock.sendall(encode_frame(error, key=None, direction=TO_CLIENT, nonce=b""))

    def _end_session(self, reason: str) -> None:
        s, self._session, self._reader = self._session, None, None
        if s is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s.sock)
        s.sock.close()
        note = ""
        try:
            s.end_overrides()
            if s.drove_arm and self.robot.is_connected:
                self.robot.hold()
                note = "; the arm holds under the watchdog"
        except Exception as e:  # a faulted arm: say so, keep serving (the watchdog keeps trying)
            note = f"; holding the arm failed ({type(e).__name__}: {e})"
        self._on_event(f"client {s.peer} left after {s.requests} requests: {reason}{note}")


def _keepalive(sock: socket.socket) -> None:
    """Probe an idle connection so a peer that vanished (cable, power) is noticed in about 10 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


@dataclass
class _Pending:
    """A greeted connection whose first request has not arrived whole yet."""

    peer: str
    nonce: bytes
    reader: FrameReader
    opened: float = field(default_factory=time.monotonic)
