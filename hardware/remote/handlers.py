"""What the robot server does for each request: the ops of ``protocol.OPS``, run on the ``SafeRobot``.

Every request is checked against :data:`hardware.remote.protocol.OPS` (op
name, argument names, array names) before anything touches the robot; argument
values are checked by the op. Errors raised here (or by the robot) go back to
the client as a signed error reply; the session goes on.
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass, field
from typing import Any, ContextManager

import numpy as np

from hardware.remote.protocol import OPS, PROTOCOL, tag_nonfinite, to_wire
from hardware.safety import SafeRobot
from robot.types import TIMESTAMP, features_to_dict


@dataclass
class Session:
    """One client connection: its nonce, the sequence number it must send next, what it changed."""

    sock: socket.socket
    peer: str
    nonce: bytes
    next_seq: int = 1
    requests: int = 0
    drove_arm: bool = False  # connect, reset, send_action or hold since the last disconnect
    overrides: list[ContextManager[Any]] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)
    last_request: float = field(default_factory=time.monotonic)

    def end_overrides(self) -> None:
        """Undo this client's watchdog overrides, innermost first."""
        while self.overrides:
            self.overrides.pop().__exit__(None, None, None)


class RequestHandler:
    """Runs checked requests on ``robot``. Clients may shorten the watchdog below ``watchdog_timeout_s``,
    at most ``max_overrides`` deep, never lengthen or disable it."""

    def __init__(self, robot: SafeRobot, watchdog_timeout_s: float, max_overrides: int):
        self.robot, self.watchdog_timeout_s, self.max_overrides = robot, watchdog_timeout_s, max_overrides

    def run(self, s: Session, op: Any, args: Any, arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
        """Check ``op``, its arguments and arrays against :data:`OPS`; run it; return (result, arrays)."""
        if not isinstance(op, str) or op not in OPS:
            raise ValueError(f"unknown op {str(op)[:40]!r}; known: {', '.join(OPS)}")
        names, needed = OPS[op]
        if not isinstance(args, dict) or not set(args) <= set(names):
            raise ValueError(f"op {op} takes arguments {list(names)}, got {str(args)[:80]}")
        if set(arrays) != set(needed):
            raise ValueError(f"op {op} carries arrays {list(needed)}, got {sorted(arrays)}")
        robot = self.robot
        if op == "describe":
            return tag_nonfinite({
                "name": robot.name,
                "protocol": PROTOCOL,
                "observation_features": features_to_dict(robot.observation_features),
                "action_features": features_to_dict(robot.action_features),
                "limits": to_wire(robot.limits),
                "layout": to_wire(robot.layout),
                "watchdog_timeout_s": self.watchdog_timeout_s,
            }), {}
        if op == "time":
            return {"t": time.monotonic()}, {}
        if op in ("reset", "get_observation"):
            if op == "reset":
                seed = args.get("seed")
                if seed is not None and (type(seed) is not int or not 0 <= seed < 2**32):
                    raise ValueError(f"reset seed must be an integer in [0, 2**32) or null, got {str(seed)[:40]}")
                s.drove_arm = True
                obs = robot.reset(seed)
            else:
                obs = robot.get_observation()
            return {"timestamp": float(obs[TIMESTAMP])}, {k: v for k, v in obs.items() if k != TIMESTAMP}
        if op == "send_action":
            s.drove_arm = True
            applied = robot.send_action(arrays["action"])
            return {"interventions": list(robot.last_interventions)}, {"applied": applied}
        if op == "hold":
            s.drove_arm = True
            return {}, {"applied": robot.hold()}
        if op == "arm_state":
            state = robot.arm_state()
            return {}, {k: np.asarray(getattr(state, k)) for k in ("ee_position", "joint_positions", "joint_velocities")}
        if op == "connect":
            s.drove_arm = True
            robot.connect()
        elif op == "disconnect":
            s.end_overrides()
            robot.disconnect()
            s.drove_arm = False
        elif op == "estop":
            robot.estop()
        elif op == "clear_estop":
            robot.clear_estop()
        elif op == "override_watchdog":
            self._override_watchdog(s, args.get("timeout_s"))
        elif op == "restore_watchdog":
            if not s.overrides:
                raise RuntimeError("restore_watchdog without a matching override_watchdog")
            s.overrides.pop().__exit__(None, None, None)
        return self.status(), {}

    def _override_watchdog(self, s: Session, timeout: Any) -> None:
        current = self.robot.watchdog_timeout_s
        if type(timeout) not in (int, float) or not math.isfinite(timeout) or not 0 < timeout <= (current or 0):
            raise ValueError(
                f"watchdog timeout must be a number in (0, {current}] s (a client may shorten the server's "
                f"watchdog, never lengthen or disable it), got {str(timeout)[:40]}"
            )
        if len(s.overrides) >= self.max_overrides:
            raise RuntimeError(f"more than {self.max_overrides} nested watchdog overrides")
        cm = self.robot.override_watchdog(float(timeout))
        cm.__enter__()
        s.overrides.append(cm)

    def status(self) -> dict[str, Any]:
        robot = self.robot
        return {
            "is_connected": robot.is_connected,
            "is_estopped": robot.is_estopped,
            "counters": robot.counters.as_dict(),
            "last_interventions": list(robot.last_interventions),
            "watchdog_timeout_s": robot.watchdog_timeout_s,
        }
