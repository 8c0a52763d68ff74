"""Offline-workflow diagnostics (Kumar et al., CoRL 2021, extended to IQL critics and diffusion fine-tuning).

- :mod:`.probes`: what each stage logs on a fixed probe batch and a held-out episode split;
- :mod:`.curves`: a run directory's stages and their curves, read back;
- :mod:`.trends`: smoothing, noise and the trend tests the rules are made of;
- :mod:`.rules`: per-stage rules that name the regime, choose a checkpoint and advise;
- :mod:`.fqe`: Fitted Q Evaluation, an OPE independent of the training critics;
- :mod:`.plots`: PNG plots and Rerun curves;
- :mod:`.diagnose`: ``robot diagnose RUN``: everything above, one table.

Importing this package imports none of them (no torch, no matplotlib at import).
"""
