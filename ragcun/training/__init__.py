"""Training: the loop (loop.py), its settings (config.py), checkpoints, torch.distributed helpers, GradCache,
the three-run ablation (sweep.py) and the preflight checks. Entry point: :func:`ragcun.training.loop.train`."""
