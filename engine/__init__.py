"""The engine: one training stage (trainer), runs of stages (run), evaluation with the published
protocols, the one inference path (inference), ranking, checkpoints and the resumable sampler."""
