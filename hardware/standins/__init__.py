"""Vendor SDK stand-ins whose arm is simulated in MuJoCo, so drivers run a real closed loop in tests.

Each stand-in mimics the part of its vendor's API the driver uses (names, signatures,
units, connection errors, faults): :mod:`~hardware.standins.ur` (``ur_rtde``),
:mod:`~hardware.standins.franka` (``franky``), :mod:`~hardware.standins.xarm`
(``xarm-python-sdk``). All of them drive one :class:`~hardware.standins.servo.SceneServo`
over a :class:`sim.scene.SimScene`; :mod:`~hardware.standins.sensors` adds the cell's
object tracker and cameras.
"""
