"""An ablation plan: arms x seeds, read from a TOML file and checked before anything runs.

Example (benchmarks/ablation/minilm-scifact.toml is the full one)::

    name = "minilm-scifact"
    results = "minilm-scifact"          # committed results, relative to this file
    work_dir = "runs/ablation/minilm"   # models and run files (not committed), relative to the current folder
    baseline = "ft"                     # every arm is tested against this one
    seeds = [1, 2, 3]
    datasets = ["scifact", "nfcorpus"]  # evaluated on their test split

    [train]                             # shared recipe: any `ragcun train` setting (TrainConfig field)
    data = "scifact"                    # a BEIR dataset; its train queries are split into train and dev
    dev_fraction = 0.2
    epochs = 1
    set = ["loss.isotropy.num_slices=1024"]   # --set settings of every trained arm
    lr = 5e-5

    [select]                            # chosen on the dev split, never on test
    arm = "ft-iso"
    values = [0.01, 0.05, 0.2, 1.0]     # substituted for {lambda} in the arms' loss specs

    [arms.base]                         # a training-free arm: the encoder, optionally with a fitted transform
    transform = "none"                  # none | center | whiten
    distance = "cosine"

    [arms.ft]
    loss = "contrastive"

    [arms.ft-iso]
    loss = "contrastive+{lambda}*isotropy"

    [arms.frozen-iso]
    loss = "contrastive+{lambda}*isotropy"
    freeze_encoder = true
    head_lr = 1e-3
    set = ["head.gaussian.out_dim=512"]   # --set settings of this arm
    seeds = [1, 2]                        # fewer seeds for a secondary arm
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ragcun.training.config import TrainConfig

LAMBDA = "{lambda}"
TRANSFORMS = ("none", "center", "whiten")
PLAN_KEYS = {"name", "results", "work_dir", "baseline", "seeds", "datasets", "dtype", "batch_size", "k",
             "isotropy_sample", "train", "select", "arms", "dev"}
ARM_KEYS = {"loss", "transform", "distance", "freeze_encoder", "head_lr", "set", "seeds", "head", "encoder",
            "whiten_dim", "what"}
TRAIN_ONLY = {"data", "dev_fraction", "set"}
DEV_KEYS = {"corpus_sample", "metric"}
RESERVED_TRAIN = {"output_dir", "train_data", "seed", "loss", "freeze_encoder", "settings", "show_progress"}


def _unknown(keys, known, where: str) -> None:
    for key in sorted(set(keys) - set(known)):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        raise ValueError(f"{where}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" (known: {', '.join(sorted(known))})")


@dataclass
class Arm:
    name: str
    what: str = ""  # one line for the table
    loss: str | None = None  # None: a training-free arm
    transform: str = "none"
    distance: str | None = None  # training-free arms: the similarity used (default: the encoder's own)
    whiten_dim: int | None = None
    freeze_encoder: bool = False
    head_lr: float | None = None
    head: str | None = None
    encoder: str | None = None
    set: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def trained(self) -> bool:
        return self.loss is not None

    @property
    def selects_lambda(self) -> bool:
        return self.trained and LAMBDA in self.loss

    def loss_for(self, lam: float | None) -> str:
        if not self.selects_lambda:
            return self.loss
        if lam is None:
            raise ValueError(f"arm {self.name!r}: its loss has {LAMBDA} but the plan selects no value")
        return self.loss.replace(LAMBDA, f"{lam:g}")


@dataclass
class Plan:
    name: str
    path: Path
    results: Path
    work_dir: Path
    baseline: str
    seeds: list[int]
    datasets: list[str]
    arms: dict[str, Arm]
    train: dict[str, Any]
    train_data: str
    train_set: list[str] = field(default_factory=list)  # --set settings of every trained arm (an arm's come after)
    dev_fraction: float = 0.2
    select_arm: str | None = None
    select_values: list[float] = field(default_factory=list)
    dev_corpus_sample: int = 2000
    dev_metric: str = "NDCG@10"
    dtype: str = "bfloat16"
    batch_size: int = 64  # evaluation encoding batch
    k: int = 100
    isotropy_sample: int = 2000

    def seeds_of(self, arm: Arm) -> list[int]:
        if not arm.trained:
            return [0]  # deterministic: one run
        return arm.seeds or self.seeds

    def order(self) -> list[tuple[Arm, int]]:
        """Every (arm, seed), in the order to run them: training-free arms; then the baseline and the selected
        arm seed by seed (the comparison that matters most is complete first); then the other arms."""
        free = [(a, 0) for a in self.arms.values() if not a.trained]
        primary = [self.arms[n] for n in dict.fromkeys([self.baseline, self.select_arm]) if n and self.arms[n].trained]
        rest = [a for a in self.arms.values() if a.trained and a not in primary]
        out = list(free)
        for group in (primary, rest):
            for i in range(max((len(self.seeds_of(a)) for a in group), default=0)):
                out += [(a, self.seeds_of(a)[i]) for a in group if i < len(self.seeds_of(a))]
        return out


def load_plan(path: str | Path, *, results: str | Path | None = None, work_dir: str | Path | None = None) -> Plan:
    """Read and check a plan file; every error names the file and the key."""
    from ragcun.spec import load_toml

    path = Path(path)
    data = load_toml(path, "plan file")
    where = str(path)
    _unknown(data, PLAN_KEYS, where)
    for key in ("arms", "baseline", "datasets", "train"):
        if key not in data:
            raise ValueError(f"{where}: missing {key!r}")
    arms: dict[str, Arm] = {}
    for name, spec in data["arms"].items():
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: [arms.{name}] must be a table")
        _unknown(spec, ARM_KEYS, f"{where} [arms.{name}]")
        arm = Arm(name=name, **spec)
        if arm.transform not in TRANSFORMS:
            raise ValueError(f"{where} [arms.{name}]: transform must be one of {', '.join(TRANSFORMS)}, "
                             f"got {arm.transform!r}")
        if arm.trained and arm.transform != "none":
            raise ValueError(f"{where} [arms.{name}]: an arm has a loss (trained) or a transform (training-free), "
                             "not both")
        if not isinstance(arm.set, list) or not all(isinstance(s, str) for s in arm.set):
            raise ValueError(f"{where} [arms.{name}]: set must be a list of 'kind.name.param=value' strings")
        arms[name] = arm
    if data["baseline"] not in arms:
        raise ValueError(f"{where}: baseline {data['baseline']!r} is not an arm (arms: {', '.join(arms)})")
    train = dict(data["train"])
    if "data" not in train:
        raise ValueError(f"{where} [train]: missing 'data' (a BEIR dataset whose train split is trained on)")
    known = {f.name for f in fields(TrainConfig)} - RESERVED_TRAIN
    _unknown(train, known | TRAIN_ONLY, f"{where} [train]")
    select = data.get("select", {})
    _unknown(select, {"arm", "values"}, f"{where} [select]")
    dev = data.get("dev", {})
    _unknown(dev, DEV_KEYS, f"{where} [dev]")
    if select:
        if select.get("arm") not in arms or not arms[select["arm"]].selects_lambda:
            raise ValueError(f"{where} [select]: arm must name a trained arm whose loss contains {LAMBDA}")
        if not select.get("values"):
            raise ValueError(f"{where} [select]: values must list the {LAMBDA} candidates")
    for arm in arms.values():
        if arm.selects_lambda and not select:
            raise ValueError(f"{where} [arms.{arm.name}]: its loss has {LAMBDA} but the plan has no [select]")
    base = path.parent
    plan = Plan(
        name=data.get("name", path.stem), path=path,
        results=Path(results) if results is not None else base / data.get("results", path.stem),
        work_dir=Path(work_dir) if work_dir is not None else Path(data.get("work_dir", f"runs/ablation/{path.stem}")),
        baseline=data["baseline"], seeds=[int(s) for s in data.get("seeds", [1, 2, 3])],
        datasets=list(data["datasets"]), arms=arms, train={k: v for k, v in train.items() if k not in TRAIN_ONLY},
        train_data=str(train["data"]), train_set=list(train.get("set", [])), dev_fraction=float(train.get("dev_fraction", 0.2)),
        select_arm=select.get("arm"), select_values=[float(v) for v in select.get("values", [])],
        dev_corpus_sample=int(dev.get("corpus_sample", 2000)), dev_metric=dev.get("metric", "NDCG@10"),
        dtype=data.get("dtype", "bfloat16"), batch_size=int(data.get("batch_size", 64)), k=int(data.get("k", 100)),
        isotropy_sample=int(data.get("isotropy_sample", 2000)),
    )
    if not 0 < plan.dev_fraction < 1:
        raise ValueError(f"{where} [train]: dev_fraction must be between 0 and 1, got {plan.dev_fraction}")
    return plan
