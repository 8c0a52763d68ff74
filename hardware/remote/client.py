"""``RemoteRobot``: an arm served by ``robot serve`` on another computer, as a ``robot.protocols.Robot``.

- Construction opens one short authenticated session and fetches the robot's
  name, features, limits and layout, so they are readable before :meth:`connect`
  and a wrong address or token fails right there, with a message that says so.
- :meth:`connect` opens the session the robot is driven through, checks the
  server still serves the same features, estimates the clock offset and
  connects the arm; :meth:`disconnect` disconnects the arm and closes it.
- Timestamps: the server stamps observations on its own monotonic clock. At
  connect the client sends ``clock_probes`` time requests, and from the one with
  the shortest round trip (the least queueing; NTP's minimum-delay filter) takes
  ``offset = t_server - (t_sent + t_received) / 2``, good to half that round
  trip (``clock_uncertainty_s``; tens of microseconds on loopback). Observations
  come back stamped ``t_server - offset``: comparable with this process's
  ``time.monotonic()``. The offset is measured afresh on every connect.
- The safety layer's API (``estop``, ``clear_estop``, ``is_estopped``, ``hold``,
  ``counters``, ``arm_state``, ``limits``, ``layout``, ``override_watchdog``) is
  proxied: each call is one round trip and ``counters`` is a snapshot.
  ``estop``, ``clear_estop``, ``is_estopped``, ``counters`` and ``arm_state``
  also work unconnected (a short session of their own).
- One request at a time (a lock): an e-stop thread may call :meth:`estop` while
  a control loop runs; it goes out after the request in flight (the server
  handles requests in order, so a long ``reset`` delays it: keep the arm's own
  e-stop button at hand).
- A dropped or stalled connection raises :class:`RemoteConnectionLost`; the arm
  stays connected on the server, held by its watchdog, and :meth:`connect` resumes.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from typing import Any, Iterator, Mapping

import numpy as np

from hardware.arm import ActionLayout, ArmLimits, ArmState
from hardware.remote.connection import (
    Connection,
    RemoteAuthError,
    RemoteConfig,
    RemoteConnectionLost,
    RemoteError,
    RemoteUnavailable,
)
from hardware.remote.protocol import ProtocolError, from_wire, untag_nonfinite
from hardware.safety import SafetyConfig
from robot.types import SafetyCounters
from robot.protocols import Observation
from robot.types import TIMESTAMP, Feature, features_from_dict

__all__ = ["RemoteAuthError", "RemoteConfig", "RemoteConnectionLost", "RemoteError", "RemoteRobot", "RemoteUnavailable"]


class RemoteRobot:
    """A robot behind ``robot serve``; see the module docstring. Token: ``token=`` or ``ROBOT_TOKEN``."""

    def __init__(self, config: RemoteConfig = RemoteConfig(), token: str | bytes | None = None):
        self.config = config
        token = token if token is not None else os.environ.get("ROBOT_TOKEN")
        if not token:
            raise ValueError(
                f"remote robot {config.where} needs the server's token: set ROBOT_TOKEN or pass token=..."
            )
        self._key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        self._lock = threading.RLock()
        self._session: Connection | None = None
        self._connected = False
        self.clock_offset_s = 0.0  # server clock - client clock, seconds (estimated at connect)
        self.clock_uncertainty_s = math.inf  # half the round trip of the probe the offset came from
        self.last_interventions: tuple[str, ...] = ()
        self._describe()
        self.name = f"{self.remote_name}@{config.where}"

    # -- Robot contract -------------------------------------------------------------------

    @property
    def observation_features(self) -> Mapping[str, Feature]:
        return self._observation_features

    @property
    def action_features(self) -> Mapping[str, Feature]:
        return self._action_features

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        with self._lock:
            if self._connected:
                return
            self._session = Connection(self.config, self._key)
            try:
                features = (self._observation_features, self._action_features)
                self._describe()
                if (self._observation_features, self._action_features) != features:
                    raise ValueError(
                        f"the robot server at {self.config.where} now serves {self.remote_name} with other "
                        "features than when this RemoteRobot was made; make a new one"
                    )
                self._sync_clock()
                self._call("connect")
                self._connected = True
            except BaseException:
                self._drop_session()
                raise

    def disconnect(self) -> None:
        """Disconnect the arm and close the session (best effort if the connection is already gone)."""
        with self._lock:
            try:
                if self._connected and self._session is not None:
                    self._call("disconnect")
            except RemoteError:
                pass  # the server ends the session itself; its watchdog holds the arm
            finally:
                self._drop_session()

    def close(self) -> None:
        self.disconnect()

    def __enter__(self) -> "RemoteRobot":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def reset(self, seed: int | None = None) -> Observation:
        args = {"seed": None if seed is None else int(seed)}
        return self._observation(*self._call("reset", args, timeout=self.config.reset_timeout_s, connected=True))

    def get_observation(self) -> Observation:
        return self._observation(*self._call("get_observation", connected=True))

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Send one command; return the action the server's safety layer really applied."""
        command = np.asarray(action)
        if command.dtype.kind not in "iuf":
            raise TypeError(f"robot {self.name}: action dtype {command.dtype} is not a real number type")
        result, arrays = self._call("send_action", arrays={"action": command}, connected=True)
        self.last_interventions = tuple(str(r) for r in result.get("interventions", ()))
        return arrays["applied"]

    # -- the safety layer's API, proxied --------------------------------------------------

    @property
    def limits(self) -> ArmLimits:
        return self._limits

    @property
    def layout(self) -> ActionLayout:
        return self._layout

    def hold(self) -> np.ndarray:
        return self._call("hold", connected=True)[1]["applied"]

    def estop(self) -> None:
        """Latch the server's e-stop (works without connect())."""
        self._call("estop")

    def clear_estop(self) -> None:
        self._call("clear_estop")

    @property
    def is_estopped(self) -> bool:
        return bool(self._call("status")[0]["is_estopped"])

    @property
    def counters(self) -> SafetyCounters:
        """A snapshot of the server's safety counters (one round trip)."""
        counts = self._call("status")[0]["counters"]
        try:
            return SafetyCounters(**{k: int(v) for k, v in counts.items()})
        except (TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"robot server {self.config.where} sent malformed counters: {e}") from None

    @property
    def watchdog_timeout_s(self) -> float | None:
        return self._call("status")[0]["watchdog_timeout_s"]

    def arm_state(self) -> ArmState:
        arrays = self._call("arm_state")[1]
        return ArmState(arrays["ee_position"], arrays["joint_positions"], arrays["joint_velocities"])

    @contextlib.contextmanager
    def override_watchdog(self, timeout_s: float | None) -> Iterator["RemoteRobot"]:
        """Run the block under a shorter server watchdog (a client may not lengthen or disable it)."""
        if timeout_s is None or not timeout_s > 0:
            raise ValueError(
                f"robot {self.name}: the server's watchdog can only be shortened from a client, got {timeout_s}"
            )
        self._call("override_watchdog", {"timeout_s": float(timeout_s)}, connected=True)
        try:
            yield self
        finally:
            if self._session is not None:  # a dropped session took its overrides with it
                self._call("restore_watchdog")

    # -- internals ------------------------------------------------------------------------

    def _call(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        *,
        arrays: Mapping[str, np.ndarray] | None = None,
        timeout: float | None = None,
        connected: bool = False,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One request on the live session, or on a short one of its own when ``connected`` is not needed."""
        with self._lock:
            if connected and not self._connected:
                raise RuntimeError(f"robot {self.name} is not connected; call connect() first (or use `with robot:`)")
            transient = self._session is None
            session = self._session or Connection(self.config, self._key)
            try:
                return session.request(op, args or {}, arrays or {}, timeout or self.config.request_timeout_s)
            except RemoteError:
                self._drop_session(session)
                raise
            except (OSError, ProtocolError) as e:
                self._drop_session(session)
                raise RemoteConnectionLost(
                    f"connection to the robot server at {self.config.where} dropped during {op} ({e}); its "
                    "watchdog holds the arm; call connect() to go on"
                ) from None
            finally:
                if transient:
                    session.close()

    def _drop_session(self, session: Connection | None = None) -> None:
        session = session or self._session
        if session is not None:
            session.close()
        if session is self._session:
            self._session, self._connected = None, False

    def _describe(self) -> None:
        d = untag_nonfinite(self._call("describe")[0])
        try:
            self.remote_name = str(d["name"])
            self._observation_features = features_from_dict(d["observation_features"])
            self._action_features = features_from_dict(d["action_features"])
            self._limits = from_wire(ArmLimits, d["limits"])
            self._layout = from_wire(ActionLayout, d["layout"])
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteError(f"the robot server at {self.config.where} described its robot badly: {e}") from None

    def _sync_clock(self) -> None:
        best = (math.inf, 0.0)  # (round trip, offset)
        for _ in range(self.config.clock_probes):
            sent = time.monotonic()
            server = float(self._call("time")[0]["t"])
            received = time.monotonic()
            best = min(best, (received - sent, server - (sent + received) / 2))
        self.clock_uncertainty_s, self.clock_offset_s = best[0] / 2, best[1]

    def _observation(self, result: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> Observation:
        stamp = result.get("timestamp")
        if type(stamp) not in (int, float) or not math.isfinite(stamp):
            raise ProtocolError(f"robot server {self.config.where} sent an observation without a valid timestamp")
        observation: Observation = dict(arrays)
        observation[TIMESTAMP] = np.float64(stamp - self.clock_offset_s)
        return observation


def open_remote(target: str, safety: SafetyConfig, opts: dict[str, Any]) -> RemoteRobot:
    """``remote:HOST:PORT`` for ``hardware.registry``; ``opts``: ``token`` and :class:`RemoteConfig` fields."""
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"remote robot spec 'remote:{target}' needs a host and a port, e.g. remote:127.0.0.1:8765")
    if safety != SafetyConfig():
        raise ValueError(
            "a remote robot's safety layer is configured on the server (`robot serve`), not by the client; "
            "pass no SafetyConfig for remote:HOST:PORT"
        )
    opts = dict(opts)
    token = opts.pop("token", None)
    try:
        config = RemoteConfig(host=host, port=int(port), **opts)
    except TypeError as e:
        raise ValueError(f"remote robot options: {e}; known: token and the fields of RemoteConfig") from None
    return RemoteRobot(config, token=token)
