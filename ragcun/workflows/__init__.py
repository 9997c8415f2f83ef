"""Workflows that sit above training and evaluation and use both: a training run with its periodic
evaluation (:mod:`~ragcun.workflows.run`), the three-run sweep, the preflight check. (The ablation engine,
``ragcun.ablation``, is one too.) Nothing below imports from here."""
