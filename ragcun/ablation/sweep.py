"""``ragcun sweep``: the recommended three-run ablation, written as a plan that the ablation engine runs.

=============  ============================================  ================================================
arm            loss                                          what it tests
=============  ============================================  ================================================
baseline       ``contrastive+0*isotropy``                    contrastive alone (SIGReg is computed with weight
                                                             0: no gradient; the logged weighted term is 0;
                                                             the table's SIGReg column compares the runs)
isotropy       ``contrastive+W*isotropy`` (W = 1.0)          does the isotropy term help retrieval?
frozen         ``contrastive+W*isotropy``, encoder frozen    how far does training the head alone go
                                                             (the head gets ``head_lr``, default 1e-3: a
                                                             fresh linear map needs a larger step than a
                                                             pretrained encoder)
=============  ============================================  ================================================

The sweep is not a second engine: :func:`sweep_plan` writes ``OUTPUT_DIR/sweep.toml``, an ordinary plan (one seed,
the three arms, every other setting of the command as its ``[train]`` table, the evaluated split as its
``datasets`` and ``split``), and :func:`ragcun.ablation.runner.run_plan` runs it, as ``ragcun ablation run
OUTPUT_DIR/sweep.toml`` would: finished runs skipped, an interrupted training resumed from its checkpoint, a run
whose settings changed refused (or, with ``--rerun-changed``, set aside and run again), ``--parallel`` as
:mod:`ragcun.launch` means it. :func:`sweep_rows` reads the finished runs' ``result.json`` back into the table's
rows. For a credible answer (several seeds, a dev-chosen weight, run-level statistics) write a plan of your own.

The gaussian head calibrates itself before the first step (``head.gaussian.init_scale="auto"``,
:mod:`ragcun.training.calibration`): MiniLM's unit vectors would otherwise give each coordinate a spread of about
0.04, which SIGReg sees as a nearly collapsed batch.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ragcun.ablation.plan import RESERVED_TRAIN
from ragcun.training.command_line import set_options
from ragcun.training.config import TrainConfig

RUNS = ("baseline", "isotropy", "frozen")
FROZEN_HEAD_LR = 1e-3
PLAN_FILE = "sweep.toml"
# not [train] settings: what the runner sets per run (RESERVED_TRAIN), and the sweep's final evaluation's
NOT_TRAIN_KEYS = RESERVED_TRAIN | {"data_dir", "eval_data", "eval_batch_size"}
WHAT = {"baseline": "contrastive alone (SIGReg computed with weight 0: no gradient)",
        "isotropy": "contrastive + W x isotropy", "frozen": "contrastive + W x isotropy, encoder frozen (head only)"}


def arm_configs(base: TrainConfig, isotropy_weight: float = 1.0, runs=RUNS) -> dict[str, TrainConfig]:
    """Each arm's training config (``base`` with the arm's loss, frozen encoder and head learning rate): the one
    place the three arms are defined; :func:`sweep_plan` writes them as the plan's arms."""
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise ValueError(f"--runs: unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    if not runs:
        raise ValueError(f"--runs: name at least one of {', '.join(RUNS)}")
    if not isotropy_weight > 0:
        raise ValueError(f"--isotropy-weight must be positive (the baseline is the weight-0 run), "
                         f"got {isotropy_weight}")
    w = f"{isotropy_weight:g}"
    every = {"baseline": replace(base, loss="contrastive+0*isotropy", freeze_encoder=False),
             "isotropy": replace(base, loss=f"contrastive+{w}*isotropy", freeze_encoder=False),
             "frozen": replace(base, loss=f"contrastive+{w}*isotropy", freeze_encoder=True,
                               head_lr=base.head_lr or FROZEN_HEAD_LR)}
    return {name: every[name] for name in RUNS if name in runs}


def _toml(value: Any, name: str) -> str:
    # JSON strings, numbers, booleans and flat arrays of them are TOML literals too
    if isinstance(value, dict) or value is None or (isinstance(value, list) and any(
            isinstance(v, (dict, list)) or v is None for v in value)):
        raise ValueError(f"ragcun sweep: the setting {name} = {value!r} cannot be written into a plan file; give it "
                         "in a plan of your own (ragcun ablation run) instead")
    return json.dumps(value)


def _training_data(spec: str) -> dict[str, str]:
    """``[train]``'s data keys for ``--train-data``: a BEIR split trained on whole (``data`` and ``split``), or a
    file (``train_file``, its path made absolute so the plan reads it from any folder)."""
    from ragcun.data.training import parse_data_spec

    parsed = parse_data_spec(spec, flag="--train-data")
    if parsed.kind == "beir":
        return {"data": parsed.target, "split": parsed.split}
    return {"train_file": f"{parsed.kind}:{Path(parsed.target).expanduser().resolve()}"}


def _evaluated(eval_data: str, data_dir: str | None) -> tuple[str, str]:
    """``(dataset name, split)`` of ``--eval-data``: a dataset of the data folder (a plan names its datasets)."""
    from ragcun.data.beir import default_data_dir
    from ragcun.data.training import resolve_eval_split

    folder, split = resolve_eval_split(eval_data, data_dir)
    home = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if folder.resolve().parent != home.resolve():
        raise ValueError(f"--eval-data {eval_data!r}: {folder} is not a dataset of the data folder {home}; the sweep "
                         f"evaluates a dataset by its name there: pass --data-dir {folder.parent} (and name the "
                         "training data by path if it lives elsewhere)")
    return folder.name, split


def sweep_plan(base: TrainConfig, eval_data: str, *, data_dir: str | None = None, isotropy_weight: float = 1.0,
               runs=RUNS, dtype: str = "float32", batch_size: int = 64) -> str:
    """The plan file's text: ``base``'s settings (every one that differs from ``ragcun train``'s default, and the
    model's parts always) as ``[train]``, one seed (``base.seed``), the arms of :func:`arm_configs`, evaluated
    on ``eval_data`` (a BEIR split of the data folder) in ``dtype`` with encoding batch ``batch_size``."""
    configs = arm_configs(base, isotropy_weight, runs)
    dataset, split = _evaluated(eval_data, data_dir)
    out = Path(base.output_dir).expanduser().resolve()
    command = f"ragcun ablation run {out / PLAN_FILE}" + (f" --data-dir {data_dir}" if data_dir else "")
    lines = ["# Written by `ragcun sweep`: its three-run ablation as an ablation plan (one seed). Run again with",
             f"#   {command}", "# or change the sweep's options and run `ragcun sweep` again.",
             'name = "sweep"', 'results = "."', f"work_dir = {_toml(str(out), 'work_dir')}",
             f"baseline = {_toml(next(iter(configs)), 'baseline')}", f"seeds = [{base.seed}]",
             f"datasets = {_toml([dataset], 'datasets')}", f"split = {_toml(split, 'split')}",
             f"dtype = {_toml(dtype, 'dtype')}", f"batch_size = {batch_size}", "", "[train]"]
    lines += [f"{key} = {_toml(value, key)}" for key, value in _training_data(base.train_data).items()]
    defaults, always = TrainConfig().to_dict(), {"encoder", "head", "distance", "steps", "epochs"}
    for key, value in base.to_dict().items():
        if key not in NOT_TRAIN_KEYS and (value != defaults.get(key) or (key in always and value is not None)):
            lines.append(f"{key} = {_toml(value, key)}")
    if base.settings:
        lines.append(f"set = {_toml(set_options(base.settings, literal=_toml), 'set')}")
    for name, config in configs.items():
        lines += ["", f"[arms.{name}]", f"what = {_toml(WHAT[name], 'what')}", f"loss = {_toml(config.loss, 'loss')}"]
        if config.freeze_encoder:
            lines += ["freeze_encoder = true", f"head_lr = {_toml(config.head_lr, 'head_lr')}"]
    return "\n".join(lines) + "\n"


def run_sweep(base: TrainConfig, eval_data: str, *, data_dir: str | None = None, isotropy_weight: float = 1.0,
              runs=RUNS, batch_size: int = 64, parallel: str = "auto", slots: int | None = None,
              rerun_changed: bool = False, show=print) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``OUTPUT_DIR/sweep.toml`` (:func:`sweep_plan`), run it with the ablation engine and return the plan
    file and the table's rows (:func:`sweep_rows`)."""
    from ragcun.ablation.plan import load_plan
    from ragcun.ablation.runner import RESULT_FILE, run_dir, run_plan
    from ragcun.files import write_text_atomic

    text = sweep_plan(base, eval_data, data_dir=data_dir, isotropy_weight=isotropy_weight, runs=runs,
                      batch_size=batch_size)
    plan_file = Path(base.output_dir) / PLAN_FILE
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan_file, text)
    plan = load_plan(plan_file)
    for arm in plan.arms.values():
        done = run_dir(plan, arm, plan.seeds[0]) / RESULT_FILE
        if done.is_file():
            show(f"{arm.name}: already finished ({done}); skipping")
    run_plan(plan, data_dir=data_dir, show=show, parallel=parallel, slots=slots, rerun_changed=rerun_changed)
    return plan_file, sweep_rows(plan)


def sweep_rows(plan) -> list[dict[str, Any]]:
    """One row per finished arm of the sweep's ``plan`` (its only seed and dataset), from its ``result.json``:
    the metrics, the isotropy of the searched documents, the trainable parameters and the last training loss."""
    from ragcun.ablation.runner import RESULT_FILE, run_dir

    rows = []
    for arm in plan.arms.values():
        path = run_dir(plan, arm, plan.seeds_of(arm)[0]) / RESULT_FILE
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        scored = result["datasets"][plan.datasets[0]]
        info = result["info"]
        rows.append({"run": arm.name, "loss": info["loss"], "frozen_encoder": info["freeze_encoder"],
                     "trainable_params": info["trainable_params"],
                     **{m: scored["metrics"].get(m) for m in ("NDCG@10", "MRR@10", "Recall@100")},
                     "final_train": info.get("final_train", {}), "isotropy": scored["isotropy"],
                     "result": str(path)})
    return rows
