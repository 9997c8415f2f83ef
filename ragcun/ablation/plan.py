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

    [dev]                               # how a candidate is scored on the dev split
    corpus_sample = 2000
    metric = "NDCG@10"

    [arms.base]                         # a training-free arm: the encoder, optionally with a fitted transform
    transform = "none"                  # none | center | whiten
    distance = "cosine"

    [arms.base-center]
    transform = "center"
    distance = "euclidean"

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
AVERAGES = ("macro", "each")
RESERVED_TRAIN = {"output_dir", "train_data", "seed", "loss", "freeze_encoder", "settings", "show_progress"}
REQUIRED = object()  # a key without a default: load_plan refuses a plan that leaves it out


@dataclass(frozen=True)
class Key:
    """One key of a plan file: what :func:`load_plan` accepts and what ``docs/ablation-plans.md`` says about it
    (generated from these tables by :func:`reference_markdown`, so the reference cannot drift from the checks).
    ``default`` is the value used when the key is absent (:data:`REQUIRED`: none, the key must be given); a string
    in ``default_text`` describes a default that depends on the rest of the plan."""

    name: str
    type: str
    default: Any
    meaning: str
    default_text: str | None = None

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.default is REQUIRED:
            return "required"
        return json.dumps(self.default)


# The tables of a plan file, in the order the reference shows them: "" is the top level; "arms.NAME" each arm.
KEYS: dict[str, tuple[Key, ...]] = {
    "": (
        Key("name", "string", None, "the plan's name in reports", "the file's stem"),
        Key("results", "path", None, "the results folder (committed: per-query metrics, report), relative to the "
            "plan file", "the file's stem, beside the plan"),
        Key("work_dir", "path", None, "models, caches and TREC runs (not committed), relative to the current folder",
            "runs/ablation/STEM"),
        Key("baseline", "arm name", REQUIRED, "the arm that legacy plans (without `[primary]`) compare the trained "
            "arms with; the lambda selection and the run order put it first"),
        Key("seeds", "list of integers", [1, 2, 3], "the seeds of every trained arm (an arm may list fewer)"),
        Key("datasets", "list of dataset names", REQUIRED, "BEIR datasets evaluated on their test split"),
        Key("dtype", "string", "bfloat16", "evaluation precision (`bfloat16` here means autocast, as when the first "
            "plans were scored)"),
        Key("batch_size", "integer", 64, "evaluation encoding batch"),
        Key("k", "integer", 100, "documents retrieved per query"),
        Key("isotropy_sample", "integer", 2000, "documents of each searched corpus whose isotropy the report shows"),
        Key("train", "table", REQUIRED, "the shared training recipe: `[train]` below"),
        Key("arms", "table of tables", REQUIRED, "the arms, one `[arms.NAME]` table each: below"),
        Key("primary", "table", None, "the pre-registered analysis: `[primary]` below", "none: a legacy plan, every "
            "comparison exploratory"),
        Key("secondary", "table", None, "exploratory comparisons: `[secondary]` below", "none"),
        Key("select", "table", None, "the lambda selection on the dev split: `[select]` below", "none"),
        Key("dev", "table", None, "how the dev split is scored: `[dev]` below", "the defaults below"),
    ),
    "primary": (
        Key("metric", "metric name", "NDCG@10", "the endpoint's metric"),
        Key("datasets", "list of dataset names", None, "the endpoint's datasets (datasets of the plan)",
            "every dataset of the plan"),
        Key("average", " | ".join(AVERAGES), "macro", "macro: one endpoint, the mean over the datasets; each: one "
            "endpoint per dataset"),
        Key("comparisons", "list of 'ARM vs CONTROL'", REQUIRED, "the family Holm corrects over: a trained ARM with "
            ">= 2 seeds against a trained CONTROL (paired by seed, >= 2 shared seeds) or a training-free one (a "
            "fixed reference)"),
        Key("margin", "positive number", 0.01, "the equivalence margin (TOST) on the endpoint"),
        Key("alpha", "number in (0, 1)", 0.05, "the level of the tests"),
    ),
    "secondary": (
        Key("comparisons", "list of 'ARM vs CONTROL'", [], "reported unadjusted, without verdict words"),
    ),
    "train": (
        Key("data", "dataset name", REQUIRED, "the BEIR dataset whose train split is trained on"),
        Key("dev_fraction", "number in (0, 1)", 0.2, "the share of the train queries carved out as the dev split "
            "(not with `dev_split`)"),
        Key("dev_split", "split name", None, "the dataset's own dev split instead (then all of train is trained on)",
            "none"),
        Key("set", "list of 'KIND.NAME.PARAM=VALUE'", [], "`--set` settings of every trained arm (an arm's own "
            "come after)"),
        Key("ANY", "as in `ragcun train`", None, "any other `ragcun train` setting (a TrainConfig field: epochs, lr, "
            "batch_size, ...) except " + ", ".join(sorted(RESERVED_TRAIN)) + ", which the runner sets",
            "`ragcun train`'s"),
    ),
    "select": (
        Key("arm", "arm name", REQUIRED, "the trained arm whose loss contains `{lambda}`"),
        Key("values", "list of numbers", REQUIRED, "the candidates substituted for `{lambda}`, chosen on the dev "
            "split (never on test); 0 must be one of them, so the term can lose"),
    ),
    "dev": (
        Key("corpus_sample", "integer", 2000, "documents of the dev corpus searched for each candidate"),
        Key("metric", "metric name", "NDCG@10", "the dev score that chooses lambda"),
    ),
    "arms.NAME": (
        Key("what", "string", "", "one line for the report's table"),
        Key("loss", "loss spec", None, "a trained arm's loss (may contain `{lambda}`)", "none: a training-free arm"),
        Key("transform", " | ".join(TRANSFORMS), "none", "a training-free arm's fitted transform of the encoder's "
            "embeddings"),
        Key("whiten_dim", "integer", None, "whiten: keep this many principal directions", "all"),
        Key("distance", "distance spec", None, "the distance (trained) or similarity (training-free) used",
            "the encoder's own (training-free), `ragcun train`'s (trained)"),
        Key("encoder", "encoder spec", None, "the arm's encoder", "`ragcun train`'s"),
        Key("head", "head spec", None, "a trained arm's head", "`ragcun train`'s"),
        Key("freeze_encoder", "boolean", False, "train the head only"),
        Key("head_lr", "number", None, "the head's learning rate", "`[train]`'s head_lr, else its lr"),
        Key("set", "list of 'KIND.NAME.PARAM=VALUE'", [], "`--set` settings of this arm"),
        Key("seeds", "list of integers", None, "this arm's seeds (fewer for a secondary arm)", "the plan's seeds"),
    ),
}


def keys_of(table: str) -> set[str]:
    """The key names a table accepts (``[train]``: its own, besides the TrainConfig fields)."""
    return {k.name for k in KEYS[table] if k.name != "ANY"}


def default(table: str, name: str) -> Any:
    key = next(k for k in KEYS[table] if k.name == name)
    value = key.default
    return list(value) if isinstance(value, list) else value


PLAN_KEYS = keys_of("")
ARM_KEYS = keys_of("arms.NAME")
TRAIN_ONLY = keys_of("train")
PRIMARY_KEYS = keys_of("primary")
DEV_KEYS = keys_of("dev")
SELECT_KEYS = keys_of("select")
SECONDARY_KEYS = keys_of("secondary")


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
        """Every (arm, seed), in the order to run them: training-free arms; then, seed by seed, the baseline, the
        selected arm and every arm a pre-registered comparison names (so a plan stopped part way has each primary
        comparison at the same number of seeds); then the other arms."""
        free = [(a, 0) for a in self.arms.values() if not a.trained]
        named = [n for c in (self.primary.comparisons if self.primary else []) for n in (c.arm, c.control)]
        primary = [self.arms[n] for n in dict.fromkeys([self.baseline, self.select_arm, *named])
                   if n and self.arms[n].trained]
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
    for key in (k.name for k in KEYS[""] if k.default is REQUIRED):
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
    _unknown(select, SELECT_KEYS, f"{where} [select]")
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
    seeds = data.get("seeds", default("", "seeds"))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    datasets = data["datasets"]
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) and d for d in datasets):
        raise ValueError(f"{where}: datasets must be a non-empty list of dataset names, got {datasets!r}")
    primary = _primary(data.get("primary"), arms, datasets, seeds, where)
    secondary_table = data.get("secondary", {})
    if not isinstance(secondary_table, dict):
        raise ValueError(f"{where}: [secondary] must be a table with 'comparisons'")
    _unknown(secondary_table, SECONDARY_KEYS, f"{where} [secondary]")
    secondary = [parse_comparison(c, arms, f"{where} [secondary] comparisons")
                 for c in _string_list(secondary_table.get("comparisons", []), f"{where} [secondary] comparisons")]
    base = path.parent
    plan = Plan(
        name=data.get("name", path.stem), path=path,
        results=Path(results) if results is not None else base / data.get("results", path.stem),
        work_dir=Path(work_dir) if work_dir is not None else Path(data.get("work_dir", f"runs/ablation/{path.stem}")),
        baseline=data["baseline"], seeds=list(seeds),
        datasets=list(datasets), arms=arms, train={k: v for k, v in train.items() if k not in TRAIN_ONLY},
        train_data=str(train["data"]), train_set=list(train.get("set", [])),
        dev_fraction=float(train.get("dev_fraction", default("train", "dev_fraction"))),
        select_arm=select.get("arm"), select_values=[float(v) for v in select.get("values", [])],
        dev_corpus_sample=int(dev.get("corpus_sample", default("dev", "corpus_sample"))),
        dev_metric=dev.get("metric", default("dev", "metric")), dtype=data.get("dtype", default("", "dtype")),
        batch_size=int(data.get("batch_size", default("", "batch_size"))), k=int(data.get("k", default("", "k"))),
        isotropy_sample=int(data.get("isotropy_sample", default("", "isotropy_sample"))),
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
    primary = Primary(metric=str(table.get("metric", default("primary", "metric"))),
                      datasets=_string_list(table.get("datasets", list(datasets)), f"{here} datasets"),
                      average=table.get("average", default("primary", "average")),
                      comparisons=[parse_comparison(c, arms, f"{here} comparisons") for c in comparisons])
    for key in ("margin", "alpha"):
        value = table.get(key, default("primary", key))
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
