"""Hardware abstraction layer: the MuJoCo backend, real arm drivers, the safety layer
every robot goes through, and the conformance checker ``check_robot``."""
