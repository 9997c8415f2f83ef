"""An ablation plan: arms x seeds, read from a TOML file and checked before anything runs.

Example (benchmarks/ablation/minilm-scifact.toml is the full one)::

    name = "minilm-scifact"
    results = "minilm-scifact"          # committed results, relative to this file
    work_dir = "runs/ablation/minilm"   # models and run files (not committed), relative to the current folder
    baseline = "ft"                     # the control of comparisons that name none (legacy plans)
    seeds = [1, 2, 3]
    datasets = ["scifact", "nfcorpus"]  # evaluated on their test split

    [primary]                           # pre-registered: the endpoint and the family Holm corrects over
    metric = "NDCG@10"
    datasets = ["scifact", "nfcorpus"]  # default: every dataset of the plan
    average = "macro"                   # macro: one endpoint, the mean over datasets; each: one per dataset
    comparisons = ["ft-iso vs ft"]      # ARM vs CONTROL: a trained ARM with >= 2 seeds; a trained CONTROL is
                                        # paired by seed, a training-free one (base) is a fixed reference
    margin = 0.01                       # equivalence margin (TOST) on the endpoint
    alpha = 0.05

    [secondary]                         # exploratory: reported unadjusted, without verdict words
    comparisons = ["ft vs base", "base-center vs base"]

    [train]                             # shared recipe: any `ragcun train` setting (TrainConfig field)
    data = "scifact"                    # a BEIR dataset; its train queries are split into train and dev
    dev_fraction = 0.2                  # or dev_split = "dev": the dataset's own dev split, all of train trained on
    epochs = 1
    set = ["loss.isotropy.num_slices=1024"]   # --set settings of every trained arm
    lr = 5e-5

    [select]                            # chosen on the dev split, never on test
    arm = "ft-iso"
    values = [0, 0.01, 0.05, 0.2, 1.0]  # substituted for {lambda}; 0 must be a candidate (the term can lose)

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
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ragcun.training.config import TrainConfig

LAMBDA = "{lambda}"
TRANSFORMS = ("none", "center", "whiten")
PLAN_KEYS = {"name", "results", "work_dir", "baseline", "seeds", "datasets", "dtype", "batch_size", "k",
             "isotropy_sample", "train", "select", "arms", "dev", "primary", "secondary"}
ARM_KEYS = {"loss", "transform", "distance", "freeze_encoder", "head_lr", "set", "seeds", "head", "encoder",
            "whiten_dim", "what"}
TRAIN_ONLY = {"data", "dev_fraction", "dev_split", "set"}
PRIMARY_KEYS = {"metric", "datasets", "average", "comparisons", "margin", "alpha"}
AVERAGES = ("macro", "each")
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


@dataclass(frozen=True)
class Comparison:
    """``arm`` against its ``control``: paired by seed when both are trained; against a fixed reference when the
    control is training-free (one deterministic run); over queries only when both are training-free."""

    arm: str
    control: str

    def __str__(self) -> str:
        return f"{self.arm} vs {self.control}"


@dataclass
class Primary:
    """The pre-registered analysis: one endpoint and the comparisons Holm corrects over. Everything else a
    report shows is exploratory."""

    metric: str = "NDCG@10"
    datasets: list[str] = field(default_factory=list)
    average: str = "macro"  # macro: the mean of the per-dataset metric is the one endpoint; each: one per dataset
    comparisons: list[Comparison] = field(default_factory=list)
    margin: float = 0.01
    alpha: float = 0.05

    def endpoints(self) -> list[str]:
        """The endpoint names: ``macro`` (the average over ``datasets``) or each dataset."""
        return ["macro"] if self.average == "macro" else list(self.datasets)

    def family(self) -> dict[str, Any]:
        """What the pre-registration fixes (its hash is recorded before the first run)."""
        return {"metric": self.metric, "datasets": list(self.datasets), "average": self.average,
                "comparisons": [str(c) for c in self.comparisons], "margin": self.margin, "alpha": self.alpha}

    def family_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.family(), sort_keys=True).encode()).hexdigest()[:16]


def parse_comparison(text: Any, arms: dict[str, Arm], where: str) -> Comparison:
    """``"ARM vs CONTROL"`` naming two arms of the plan."""
    parts = str(text).split(" vs ") if isinstance(text, str) else []
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"{where}: a comparison is 'ARM vs CONTROL', e.g. 'ft-iso vs ft'; got {text!r}")
    arm, control = (p.strip() for p in parts)
    for name in (arm, control):
        if name not in arms:
            close = difflib.get_close_matches(name, list(arms), n=1)
            raise ValueError(f"{where}: {text!r} names no arm {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                             + f" (arms: {', '.join(arms)})")
    if arm == control:
        raise ValueError(f"{where}: {text!r} compares an arm with itself")
    if not arms[arm].trained and arms[control].trained:
        raise ValueError(f"{where}: {text!r} tests a training-free arm against a trained control; write it the other "
                         f"way round ('{control} vs {arm}'), or give the training-free arm a training-free control "
                         "(e.g. base)")
    return Comparison(arm, control)


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
    dev_split: str | None = None  # the dataset's own dev split (else dev_fraction of train is carved out)
    primary: Primary | None = None  # None: a plan written before pre-registration (legacy: each arm vs baseline)
    secondary: list[Comparison] = field(default_factory=list)

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
    if "dev_fraction" in train and "dev_split" in train:
        raise ValueError(f"{where} [train]: give dev_fraction (carve dev from train) or dev_split (the dataset's own), "
                         "not both")
    seeds = data.get("seeds", [1, 2, 3])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    datasets = data["datasets"]
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) and d for d in datasets):
        raise ValueError(f"{where}: datasets must be a non-empty list of dataset names, got {datasets!r}")
    primary = _primary(data.get("primary"), arms, datasets, seeds, where)
    secondary_table = data.get("secondary", {})
    if not isinstance(secondary_table, dict):
        raise ValueError(f"{where}: [secondary] must be a table with 'comparisons'")
    _unknown(secondary_table, {"comparisons"}, f"{where} [secondary]")
    secondary = [parse_comparison(c, arms, f"{where} [secondary] comparisons")
                 for c in _string_list(secondary_table.get("comparisons", []), f"{where} [secondary] comparisons")]
    base = path.parent
    plan = Plan(
        name=data.get("name", path.stem), path=path,
        results=Path(results) if results is not None else base / data.get("results", path.stem),
        work_dir=Path(work_dir) if work_dir is not None else Path(data.get("work_dir", f"runs/ablation/{path.stem}")),
        baseline=data["baseline"], seeds=list(seeds),
        datasets=list(datasets), arms=arms, train={k: v for k, v in train.items() if k not in TRAIN_ONLY},
        train_data=str(train["data"]), train_set=list(train.get("set", [])), dev_fraction=float(train.get("dev_fraction", 0.2)),
        select_arm=select.get("arm"), select_values=[float(v) for v in select.get("values", [])],
        dev_corpus_sample=int(dev.get("corpus_sample", 2000)), dev_metric=dev.get("metric", "NDCG@10"),
        dtype=data.get("dtype", "bfloat16"), batch_size=int(data.get("batch_size", 64)), k=int(data.get("k", 100)),
        isotropy_sample=int(data.get("isotropy_sample", 2000)),
        dev_split=str(train["dev_split"]) if "dev_split" in train else None, primary=primary, secondary=secondary,
    )
    if not 0 < plan.dev_fraction < 1:
        raise ValueError(f"{where} [train]: dev_fraction must be between 0 and 1, got {plan.dev_fraction}")
    return plan


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: must be a list of strings, got {value!r}")
    return value


def _primary(table: Any, arms: dict[str, Arm], datasets: list[str], seeds: list[int], where: str) -> Primary | None:
    """The ``[primary]`` table, checked: a run-level verdict needs trained arms with at least two seeds each,
    paired by seed (the same seeds in arm and control)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError(f"{where}: [primary] must be a table")
    here = f"{where} [primary]"
    _unknown(table, PRIMARY_KEYS, here)
    comparisons = _string_list(table.get("comparisons", []), f"{here} comparisons")
    if not comparisons:
        raise ValueError(f"{here}: comparisons must name at least one 'ARM vs CONTROL'")
    primary = Primary(metric=str(table.get("metric", "NDCG@10")),
                      datasets=_string_list(table.get("datasets", list(datasets)), f"{here} datasets"),
                      average=table.get("average", "macro"),
                      comparisons=[parse_comparison(c, arms, f"{here} comparisons") for c in comparisons])
    for key in ("margin", "alpha"):
        value = table.get(key, getattr(primary, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < (1 if key == "alpha" else 1e9):
            raise ValueError(f"{here}: {key} must be a positive number" + (" below 1" if key == "alpha" else "")
                             + f", got {value!r}")
        setattr(primary, key, float(value))
    if primary.average not in AVERAGES:
        raise ValueError(f"{here}: average must be one of {', '.join(AVERAGES)}, got {primary.average!r}")
    missing = [d for d in primary.datasets if d not in datasets]
    if missing or not primary.datasets:
        raise ValueError(f"{here}: datasets must be datasets of the plan ({', '.join(datasets)}); got "
                         f"{', '.join(missing) or 'none'}")
    for comparison in primary.comparisons:
        arm, control = arms[comparison.arm], arms[comparison.control]
        if not arm.trained:
            raise ValueError(f"{here}: {comparison}: {arm.name!r} is training-free: it has one deterministic run, so "
                             "no run-level verdict; compare it under [secondary]")
        arm_seeds = arm.seeds or seeds
        if len(arm_seeds) < 2:
            raise ValueError(f"{here}: {comparison}: arm {arm.name!r} has {len(arm_seeds)} seed; a run-level test needs "
                             "at least 2 seeds per arm (5 or more for a useful power)")
        if control.trained:
            shared = set(arm_seeds) & set(control.seeds or seeds)
            if len(shared) < 2:
                raise ValueError(f"{here}: {comparison}: the two arms share {len(shared)} seed(s); pairing by seed "
                                 "needs at least 2 shared seeds")
    return primary
