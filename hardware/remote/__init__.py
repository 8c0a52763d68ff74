"""The robot server and its client: drive an arm on one computer from a policy on another.

- :mod:`hardware.remote.protocol`: the wire format (length-prefixed JSON header +
  raw little-endian arrays, HMAC-SHA256 per frame with a session nonce and a
  sequence number; no pickle).
- :mod:`hardware.remote.server`: :class:`RobotServer`, what ``robot serve`` runs
  next to the arm.
- :mod:`hardware.remote.client`: :class:`RemoteRobot`, the ``remote:HOST:PORT``
  robot of ``hardware.registry``.
"""

from hardware.remote.client import RemoteConfig, RemoteRobot
from hardware.remote.server import RobotServer, ServerConfig

__all__ = ["RemoteConfig", "RemoteRobot", "RobotServer", "ServerConfig"]
