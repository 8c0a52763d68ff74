"""Real-arm drivers behind the :class:`hardware.arm.Arm` protocol, one file per vendor.

- :mod:`hardware.drivers.ur`: Universal Robots through ``ur_rtde`` (extra ``ur``).
- :mod:`hardware.drivers.franka`: Franka through ``franky`` (extra ``franka``).
- :mod:`hardware.drivers.xarm`: UFactory xArm through ``xarm-python-sdk`` (extra ``xarm``).

The shared body is :mod:`hardware.drivers.cartesian` (with :mod:`~hardware.drivers.pose`
and :mod:`~hardware.drivers.signals`); :mod:`hardware.drivers.specs` builds them from
robot specs (``ur5e:HOST``, ``ur5e:standin:push``). A vendor SDK is imported only when a
driver is built without an injected one (tests inject :mod:`hardware.standins`).
"""
