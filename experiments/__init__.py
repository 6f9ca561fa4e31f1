"""Experiments built on the entry points: the ablation study (`python -m experiments.ablation`) and its report."""
