"""Networks only (no training loops, no I/O): encoders, denoisers, the diffusion policy,
the consistency head, critics and the latent dynamics ensemble."""
