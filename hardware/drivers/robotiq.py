"""A Robotiq 2F-85 / 2F-140 / Hand-E gripper on a UR arm, through the Robotiq URCap's socket.

``ur_rtde``'s Python wheel has no gripper interface. The Robotiq Grippers URCap
installed on the pendant listens on TCP port 63352 for ASCII commands:
``SET VAR value [VAR value ...]\\n`` answered by ``ack``, and ``GET VAR\\n``
answered by ``VAR value``. Variables used here: ``ACT`` (activation), ``GTO``
(go to the requested position), ``STA`` (status, 3 = activated), ``POS``
(requested and measured position, 0 open .. 255 closed), ``SPE`` (speed 0..255),
``FOR`` (force 0..255) and ``FLT`` (fault code, 0 = none).
"""

from __future__ import annotations

import socket
import threading
import time

PORT = 63352


class RobotiqGripper:
    """The URCap socket client: :meth:`activate` once, then :meth:`move` and :meth:`position`."""

    def __init__(self, hostname: str, port: int = PORT, timeout_s: float = 2.0):
        self.hostname, self.port = hostname, port
        try:
            self._socket = socket.create_connection((hostname, port), timeout=timeout_s)
        except OSError as exc:
            raise ConnectionError(
                f"Robotiq gripper at {hostname}:{port}: {exc}; install the Robotiq Grippers URCap on the pendant "
                "and check that the gripper shows as connected in its toolbar"
            ) from exc
        self._lock = threading.Lock()

    def _ask(self, line: str) -> str:
        with self._lock:
            self._socket.sendall(line.encode("ascii") + b"\n")
            return self._socket.recv(1024).decode("ascii").strip()

    def set(self, **values: int) -> None:
        """``SET`` one or more variables (``set(POS=255, SPE=128)``)."""
        answer = self._ask("SET " + " ".join(f"{k} {int(v)}" for k, v in values.items()))
        if answer != "ack":
            raise RuntimeError(f"Robotiq gripper at {self.hostname} refused SET {values}: answered {answer!r}")

    def get(self, variable: str) -> int:
        answer = self._ask(f"GET {variable}")
        name, _, value = answer.partition(" ")
        if name != variable or not value.strip().lstrip("-").isdigit():
            raise RuntimeError(f"Robotiq gripper at {self.hostname}: GET {variable} answered {answer!r}")
        return int(value)

    def activate(self, timeout_s: float = 5.0) -> None:
        """Activate (the fingers open and close once) unless already active."""
        if self.get("STA") == 3:
            return
        self.set(ACT=0)
        self.set(ACT=1)
        deadline = time.monotonic() + timeout_s
        while self.get("STA") != 3:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Robotiq gripper at {self.hostname} did not activate within {timeout_s} s "
                    f"(fault {self.fault()}); check its cable and power"
                )
            time.sleep(0.05)

    def move(self, position: int, speed: int = 255, force: int = 100) -> None:
        """Start moving to ``position`` (0 open .. 255 closed); returns at once."""
        clip = lambda v: max(0, min(255, int(v)))  # noqa: E731
        self.set(POS=clip(position), SPE=clip(speed), FOR=clip(force), GTO=1)

    def position(self) -> int:
        """Measured position, 0 open .. 255 closed."""
        return self.get("POS")

    def fault(self) -> int:
        """Fault code (``FLT``), 0 when none."""
        return self.get("FLT")

    def disconnect(self) -> None:
        self._socket.close()
