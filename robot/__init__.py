"""Core of the kit: value types, contracts, episode store, sampling, normalisation,
checkpoints, metrics and the ``robot`` command line. Imports no other package of the kit."""

__version__ = "0.1.0"
