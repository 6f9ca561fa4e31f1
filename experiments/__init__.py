"""Experiments built on the entry points: the ablation study (`python -m experiments.ablation`) and its report,
and the dev/test protocol built on it (`python -m experiments.select`: choose settings on a development set,
report once on a held-out set)."""
