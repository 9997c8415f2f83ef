"""Workflows that sit above training and evaluation and use both: a training run with its periodic
evaluation (:mod:`~ragcun.workflows.run`), the preflight check. (The ablation engine, ``ragcun.ablation``,
is one too; ``ragcun sweep`` is a plan it runs.) Nothing below imports from here."""
