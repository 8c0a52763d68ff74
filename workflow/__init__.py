"""The learning stages (imitation, offline RL, online RL, distillation), OPE and gates,
rollouts, the pipeline driver, diagnostics and the deployment runner."""
