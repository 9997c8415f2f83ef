"""Training: the loop (loop.py) and its parts by phase: the run folder (run_folder.py), building the model and
loss (setup.py), optimisation (optim.py), one step (step.py), logs and display (logs.py), callbacks
(callbacks.py), checkpoints, distributed helpers, GradCache, calibration, mined negatives. Entry point:
:func:`ragcun.training.loop.train`; :func:`ragcun.train` adds the periodic evaluation the config asks for."""
