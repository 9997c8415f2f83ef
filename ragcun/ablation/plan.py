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
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ragcun.precision import precision_names
from ragcun.evaluation.compare_runs import METRIC_FAMILIES
from ragcun.training.config import TrainConfig, config_default

LAMBDA = "{lambda}"
TRANSFORMS = ("none", "center", "whiten")
AVERAGES = ("macro", "each")
RESERVED_TRAIN = {"output_dir", "train_data", "seed", "loss", "freeze_encoder", "settings", "show_progress"}
REQUIRED = object()  # a key without a default: load_plan refuses a plan that leaves it out
# Arm, dataset and split names become folder and file names: letters, digits, '.', '_' and '-', starting with a
# letter or digit, and no '..' (so a name can never lead out of the results or work folder)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# [train] settings that change how a run is logged or saved, not what it computes: left out of its settings record
NOT_RESULT_SETTINGS = frozenset({"save_every", "keep_checkpoints", "log_every", "show_progress", "data_dir"})
# Arm keys that only a trained arm uses (a training-free arm is the base encoder with a fitted transform)
TRAINED_ONLY = ("head", "encoder", "freeze_encoder", "head_lr", "set", "seeds")


# -- the value checks the key tables declare ---------------------------------------------------------------------
# Each takes a value read from TOML and raises ValueError("expected ..., got ...") when it does not fit; load_plan
# prefixes the file, table and key.
def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def _expect(what: str, ok: Callable[[Any], bool]) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not ok(value):
            raise ValueError(f"expected {what}, got {_show(value)}")

    check.what = what  # type: ignore[attr-defined]
    return check


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def safe_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a folder or file name of a plan (``None``: it can)."""
    if not isinstance(name, str) or not name:
        return f"expected a name, got {_show(name)}"
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        return (f"{name!r} is not a safe name: use letters, digits, '.', '_' and '-' (starting with a letter or digit, "
                "no '..'), since it becomes a folder or file name")
    return None


def _safe_name(value: Any) -> None:
    problem = safe_name_problem(value)
    if problem:
        raise ValueError(problem)


def _train_file(value: Any) -> None:
    from ragcun.data.training import parse_data_spec

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a training file spec such as jsonl:PATH, got {_show(value)}")
    if parse_data_spec(value, flag="train_file").kind == "beir":
        raise ValueError(f"expected a file (jsonl:PATH or triples:PATH), got the BEIR split {value!r}: a BEIR "
                         "dataset goes in `data`")


def _list_of(what: str, item: Callable[[Any], bool], *, unique: bool = False) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, list) or not value or not all(item(v) for v in value):
            raise ValueError(f"expected a non-empty list of {what}, got {_show(value)}")
        if unique:
            repeated = sorted({json.dumps(v) for v in value if value.count(v) > 1})
            if repeated:
                raise ValueError(f"each of {what} once: {', '.join(repeated)} repeated in {_show(value)}")

    return check


def _dataset_names(value: Any) -> None:
    _list_of("dataset names", lambda v: isinstance(v, str) and bool(v), unique=True)(value)
    for name in value:
        _safe_name(name)


def _set_options(value: Any) -> None:
    from ragcun.spec import parse_set_option

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of 'KIND.NAME.PARAM=VALUE' strings, got {_show(value)}")
    for option in value:
        parse_set_option(option)


def _comparisons(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of 'ARM vs CONTROL' strings, got {_show(value)}")


def _choice(*choices: str) -> Callable[[Any], None]:
    return _expect("one of " + ", ".join(choices), lambda v: v in choices)


def metric_problem(name: Any) -> str | None:
    """Why ``name`` is not a metric the ablation's evaluation produces (``None``: it is): FAMILY@K, spelt as the
    evaluator names it (NDCG@10, MAP@100, Recall@100, P@10, MRR@10)."""
    if not isinstance(name, str):
        return f"expected a metric name such as NDCG@10, got {_show(name)}"
    family, sep, k = name.partition("@")
    if sep and family in METRIC_FAMILIES and k.isdigit() and int(k) >= 1 and str(int(k)) == k:
        return None
    spelt = {f.lower(): f for f in METRIC_FAMILIES}.get(family.strip().lower())
    hint = f"; did you mean {spelt}@{k.strip()}?" if spelt and sep and k.strip().isdigit() and int(k) >= 1 else ""
    return (f"{name!r} is not a metric the evaluation produces: FAMILY@K with FAMILY one of "
            f"{', '.join(METRIC_FAMILIES)} and K a cut-off from 1, e.g. NDCG@10{hint}")


def _metric(value: Any) -> None:
    problem = metric_problem(value)
    if problem:
        raise ValueError(problem)


def metric_cutoff(name: str) -> int:
    return int(name.partition("@")[2])


def _lambda_values(value: Any) -> None:
    _list_of("finite numbers >= 0", lambda v: _is_number(v) and v >= 0, unique=True)(value)


def _tables(value: Any) -> None:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"expected at least one [arms.NAME] table, got {_show(value)}")
    for name, spec in value.items():
        if not isinstance(spec, dict):
            raise ValueError(f"[arms.{name}] must be a table, got {_show(spec)}")


STRING = _expect("a string", lambda v: isinstance(v, str))
NAME = _expect("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
BOOLEAN = _expect("true or false", lambda v: isinstance(v, bool))
POSITIVE_INTEGER = _expect("an integer >= 1", lambda v: _is_int(v) and v >= 1)
POSITIVE_NUMBER = _expect("a finite number > 0", lambda v: _is_number(v) and v > 0)
UNIT_INTERVAL = _expect("a number between 0 and 1 (both excluded)", lambda v: _is_number(v) and 0 < v < 1)
TABLE = _expect("a table", lambda v: isinstance(v, dict))
SEEDS = _list_of("integers", _is_int, unique=True)


@dataclass(frozen=True)
class Key:
    """One key of a plan file: what :func:`load_plan` accepts and what ``docs/ablation-plans.md`` says about it
    (generated from these tables by :func:`reference_markdown`, so the reference cannot drift from the checks).
    ``default`` is the value used when the key is absent (:data:`REQUIRED`: none, the key must be given); a string
    in ``default_text`` describes a default that depends on the rest of the plan; ``check`` is the key's type and
    range check, declared here once (``[train]``'s other keys are checked against TrainConfig's field types)."""

    name: str
    type: str
    default: Any
    meaning: str
    default_text: str | None = None
    check: Callable[[Any], None] | None = None  # the type and range check of a given value (load_plan applies it)

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.default is REQUIRED:
            return "required"
        return json.dumps(self.default)


# The tables of a plan file, in the order the reference shows them: "" is the top level; "arms.NAME" each arm.
KEYS: dict[str, tuple[Key, ...]] = {
    "": (
        Key("name", "string", None, "the plan's name in reports (it also salts the dev split carved from train)",
            "the file's stem", check=NAME),
        Key("results", "path", None, "the results folder (committed: per-query metrics, report), relative to the "
            "plan file", "the file's stem, beside the plan", check=NAME),
        Key("work_dir", "path", None, "models, caches and TREC runs (not committed), relative to the current folder",
            "runs/ablation/STEM", check=NAME),
        Key("baseline", "arm name", REQUIRED, "the arm that legacy plans (without `[primary]`) compare the trained "
            "arms with; the lambda selection and the run order put it first", check=NAME),
        Key("seeds", "list of distinct integers", [1, 2, 3], "the seeds of every trained arm (an arm may list fewer)",
            check=SEEDS),
        Key("datasets", "list of dataset names", REQUIRED, "BEIR datasets (folders under `--data-dir`) evaluated on "
            "their `split`; a name becomes a file name: letters, digits, `.`, `_`, `-`", check=_dataset_names),
        Key("split", "split name", "test", "the split of every dataset in `datasets` that is evaluated (never one "
            "trained or tuned on)", check=_safe_name),
        Key("dtype", " | ".join(precision_names("plan")), "bfloat16", "evaluation precision, named as in `ragcun eval "
            "beir --dtype`; `bfloat16`, the older spelling every committed plan uses, is read here as "
            "`bfloat16-autocast` (as when the first plans were scored)", check=_choice(*precision_names("plan"))),
        Key("batch_size", "integer >= 1", 64, "evaluation encoding batch", check=POSITIVE_INTEGER),
        Key("k", "integer >= 1", 100, "documents retrieved per query; at least the cut-off of every metric the plan "
            "scores by (`[primary]` and `[dev]` metric; NDCG@10 without `[primary]`)", check=POSITIVE_INTEGER),
        Key("isotropy_sample", "integer >= 1", 2000, "documents of each searched corpus whose isotropy the report "
            "shows", check=POSITIVE_INTEGER),
        Key("truncate_dims", "list of distinct integers >= 1", [], "widths every run is also scored at, its query "
            "and document embeddings cut to their first D coordinates (a Matryoshka prefix, searched with the arm's "
            "distance; the vectors are encoded once): results under `dims/D/`, compared there like the full width "
            "(exploratory); a width not below an arm's own is skipped for that arm", check=_list_of(
                "integers >= 1", lambda v: _is_int(v) and v >= 1, unique=True)),
        Key("train", "table", REQUIRED, "the shared training recipe: `[train]` below", check=TABLE),
        Key("arms", "table of tables", REQUIRED, "the arms, one `[arms.NAME]` table each: below; NAME becomes a "
            "folder name: letters, digits, `.`, `_`, `-`", check=_tables),
        Key("primary", "table", None, "the pre-registered analysis: `[primary]` below", "none: a legacy plan, every "
            "comparison exploratory", check=TABLE),
        Key("secondary", "table", None, "exploratory comparisons: `[secondary]` below", "none", check=TABLE),
        Key("select", "table", None, "the lambda selection on the dev split: `[select]` below", "none", check=TABLE),
        Key("dev", "table", None, "how the dev split is scored: `[dev]` below", "the defaults below", check=TABLE),
    ),
    "primary": (
        Key("metric", "metric name", "NDCG@10", "the endpoint's metric: NDCG, MAP, Recall, P or MRR at a cut-off "
            "up to `k` (e.g. NDCG@10)", check=_metric),
        Key("datasets", "list of dataset names", None, "the endpoint's datasets (datasets of the plan)",
            "every dataset of the plan", check=_dataset_names),
        Key("average", " | ".join(AVERAGES), "macro", "macro: one endpoint, the mean over the datasets; each: one "
            "endpoint per dataset", check=_choice(*AVERAGES)),
        Key("comparisons", "list of 'ARM vs CONTROL'", REQUIRED, "the family Holm corrects over: a trained ARM with "
            ">= 2 seeds against a trained CONTROL (paired by seed, >= 2 shared seeds) or a training-free one (a "
            "fixed reference)", check=_comparisons),
        Key("margin", "positive number", 0.01, "the equivalence margin (TOST) on the endpoint", check=POSITIVE_NUMBER),
        Key("alpha", "number in (0, 1)", 0.05, "the level of the tests", check=UNIT_INTERVAL),
    ),
    "secondary": (
        Key("comparisons", "list of 'ARM vs CONTROL'", [], "reported unadjusted, without verdict words",
            check=_comparisons),
    ),
    "train": (
        Key("data", "dataset name", REQUIRED, "the BEIR dataset (a folder under `--data-dir`, or a folder's path) "
            "whose `split` is trained on", "required, except beside `train_file` in a plan without `[select]`",
            check=NAME),
        Key("split", "split name", "train", "the split of `data` trained on (with a `[select]` and no `dev_split`, "
            "less the dev queries carved from it)", check=_safe_name),
        Key("dev_fraction", "number in (0, 1)", 0.2, "the share of the train queries carved out as the dev split "
            "that `[select]` scores lambda on (not with `dev_split`); a plan without `[select]` carves nothing and "
            "trains on all of `split`", check=UNIT_INTERVAL),
        Key("dev_split", "split name", None, "the dataset's own dev split instead (then all of train is trained on)",
            "none", check=_safe_name),
        Key("train_file", "data spec", None, "a training file (`jsonl:PATH`, e.g. `ragcun data score`'s output with a "
            "teacher's scores, or `triples:PATH`; relative to the current folder, like work_dir) that every trained "
            "arm trains on instead of `data`'s train split; `data` then names the BEIR dataset the file comes from, "
            "whose `dev_split` (required with a [select]) scores the lambda candidates; its SHA-256 is part of every "
            "run's settings", "none", check=_train_file),
        Key("set", "list of 'KIND.NAME.PARAM=VALUE'", [], "`--set` settings of every trained arm (an arm's own "
            "come after)", check=_set_options),
        Key("ANY", "as in `ragcun train`", None, "any other `ragcun train` setting (a TrainConfig field: epochs, lr, "
            "batch_size, ...; `steps` or `epochs` is required when an arm is trained) except "
            + ", ".join(sorted(RESERVED_TRAIN)) + ", which the runner sets; checked as `ragcun train` checks it",
            "`ragcun train`'s"),
    ),
    "select": (
        Key("arm", "arm name", REQUIRED, "the trained arm whose loss contains `{lambda}`", check=NAME),
        Key("values", "list of distinct numbers >= 0", REQUIRED, "the candidates substituted for `{lambda}`, chosen "
            "on the dev split (never on test); 0 must be one of them, so the term can lose", check=_lambda_values),
    ),
    "dev": (
        Key("corpus_sample", "integer >= 1", 2000, "documents of the dev corpus searched for each candidate",
            check=POSITIVE_INTEGER),
        Key("metric", "metric name", "NDCG@10", "the dev score that chooses lambda (as `[primary]` metric)",
            check=_metric),
    ),
    "arms.NAME": (
        Key("what", "string", "", "one line for the report's table", check=STRING),
        Key("loss", "loss spec", None, "a trained arm's loss (may contain `{lambda}`)", "none: a training-free arm",
            check=NAME),
        Key("transform", " | ".join(TRANSFORMS), "none", "a training-free arm's fitted transform of the encoder's "
            "embeddings", check=_choice(*TRANSFORMS)),
        Key("whiten_dim", "integer >= 1", None, "whiten: keep this many principal directions", "all",
            check=POSITIVE_INTEGER),
        Key("distance", "distance spec", None, "the distance (trained) or similarity (training-free) used",
            "the encoder's own (training-free), `ragcun train`'s (trained)", check=NAME),
        Key("encoder", "encoder spec", None, "a trained arm's encoder (training-free arms use `[train]`'s)",
            "`ragcun train`'s", check=NAME),
        Key("head", "head spec", None, "a trained arm's head", "`ragcun train`'s", check=NAME),
        Key("freeze_encoder", "boolean", False, "train the head only", check=BOOLEAN),
        Key("head_lr", "positive number", None, "the head's learning rate", "`[train]`'s head_lr, else its lr",
            check=POSITIVE_NUMBER),
        Key("set", "list of 'KIND.NAME.PARAM=VALUE'", [], "`--set` settings of this arm", check=_set_options),
        Key("seeds", "list of distinct integers", None, "this arm's seeds (fewer for a secondary arm)",
            "the plan's seeds", check=SEEDS),
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
            raise ValueError(f"{where}: {text!r} names no arm {name!r}"
                             + (f"; did you mean {close[0]!r}?" if close else "")
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
    train_data: str | None  # the BEIR dataset trained on (None: only a train_file, in a plan without [select])
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
    truncate_dims: list[int] = field(default_factory=list)  # widths every run is also scored at (dims/D/)
    dev_split: str | None = None  # the dataset's own dev split (else dev_fraction of train is carved out)
    train_split: str = "train"  # the split of train_data trained on
    split: str = "test"  # the split of each of datasets evaluated
    train_file: str | None = None  # a jsonl:/triples: file every trained arm trains on instead of data's train split
    _file_hash: tuple | None = field(default=None, repr=False, compare=False)  # ((path, mtime, size), sha256)
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

    def metrics(self) -> dict[str, str]:
        """The metrics the plan scores by, each with the key that names it: the endpoint's (NDCG@10 for a plan
        without ``[primary]``, whose report uses it) and, with a lambda selection, the dev score's."""
        out = {"[primary] metric" if self.primary else "the report's metric (no [primary])":
               self.primary.metric if self.primary else "NDCG@10"}
        if self.select_arm:
            out["[dev] metric"] = self.dev_metric
        return out

    def base_encoder(self) -> str:
        """The encoder of the training-free arms (and of the cached base outputs): ``[train]``'s."""
        return str(self.train.get("encoder", config_default("encoder")))

    # -- what defines a run's result: recorded in its result.json, compared before anything runs --------------------
    def evaluation_settings(self) -> dict[str, Any]:
        # the evaluated split is recorded only when it is not "test", so every result made before it could be
        # chosen keeps its settings record
        return {"datasets": list(self.datasets), "dtype": self.dtype, "k": self.k, "batch_size": self.batch_size,
                "isotropy_sample": self.isotropy_sample, **({"split": self.split} if self.split != "test" else {}),
                **({"truncate_dims": sorted(self.truncate_dims, reverse=True)} if self.truncate_dims else {})}

    @property
    def carves_dev(self) -> bool:
        """Whether the dev split is carved out of the trained split (a lambda to choose, and no dev_split)."""
        return self.select_arm is not None and not self.dev_split

    def data_settings(self) -> dict[str, Any]:
        """What is trained on: the dataset's split less the dev queries (the carved split is salted with the
        plan's name), or all of it (beside the dataset's own dev split, or when no lambda is chosen)."""
        if self.dev_split:
            dev = {"split": self.dev_split}
        elif self.carves_dev:
            dev = {"fraction": self.dev_fraction, "salt": self.name}
        else:
            dev = None
        split = {"split": self.train_split} if self.train_split != "train" else {}
        if self.train_file:  # the file's contents, not only its name: a file rewritten in place is another run
            return {"data": self.train_data, "dev": dev, **split, "train_file": self.train_file,
                    "train_file_sha256": self.train_file_sha256()}
        return {"data": self.train_data, "dev": dev, **split}

    def train_file_path(self) -> Path | None:
        from ragcun.data.training import parse_data_spec

        return Path(parse_data_spec(self.train_file).target).expanduser() if self.train_file else None

    def train_file_sha256(self) -> str | None:
        """The training file's SHA-256 (None while it does not exist: the runner refuses to start then)."""
        import hashlib

        path = self.train_file_path()
        if path is None or not path.is_file():
            return None
        key = (str(path), path.stat().st_mtime_ns, path.stat().st_size)
        if self._file_hash is None or self._file_hash[0] != key:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            self._file_hash = (key, digest.hexdigest())
        return self._file_hash[1]

    def train_settings(self) -> dict[str, Any]:
        return {k: v for k, v in sorted(self.train.items()) if k not in NOT_RESULT_SETTINGS}

    def shared_settings(self) -> dict[str, Any]:
        """The settings every run of the plan shares (recorded in plan.json)."""
        return {**self.data_settings(), "train": self.train_settings(), "set": list(self.train_set),
                "evaluation": self.evaluation_settings()}

    def training_settings(self, arm: Arm, lam: float | None) -> dict[str, Any]:
        train = self.train_settings()
        for key in ("head_lr", "head", "encoder", "distance"):  # the arm's own, as the runner sets them
            if getattr(arm, key) is not None:
                train[key] = getattr(arm, key)
        return {**self.data_settings(), "train": train, "set": [*self.train_set, *arm.set], "loss": arm.loss,
                "lambda": lam if arm.selects_lambda else None, "freeze_encoder": arm.freeze_encoder}

    def run_settings(self, arm: Arm, seed: int, lam: float | None = None) -> dict[str, Any]:
        """Everything that defines the result of ``arm`` with ``seed`` (``lam``: the chosen lambda of an arm that
        selects one): ``run`` (a trained arm's data, [train] recipe with the arm's own keys, --set settings, loss,
        lambda, seed and the selection it was chosen by; a training-free arm's encoder, transform and distance)
        and ``evaluation`` (datasets, precision, k, encoding batch, isotropy sample)."""
        if arm.trained:
            run = {**self.training_settings(arm, lam), "seed": seed}
            if arm.selects_lambda:
                run["select"] = {"values": list(self.select_values), "metric": self.dev_metric,
                                 "corpus_sample": self.dev_corpus_sample}
        else:
            run = {"encoder": self.base_encoder(), "transform": arm.transform, "whiten_dim": arm.whiten_dim,
                   "distance": arm.distance or "cosine"}
        return canonical({"run": run, "evaluation": self.evaluation_settings()})

    def candidate_settings(self, lam: float | None) -> dict[str, Any]:
        """What defines one lambda candidate's dev score (``lam`` None: the selection's, shared by every
        candidate)."""
        arm = self.arms[self.select_arm]
        evaluation = {k: v for k, v in self.evaluation_settings().items() if k != "datasets"}
        return canonical({"run": {**self.training_settings(arm, lam), "seed": self.seeds_of(arm)[0]},
                          "evaluation": {**evaluation, "dev_corpus_sample": self.dev_corpus_sample}})


def canonical(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON gives them back (what a result file records), so a recorded and a computed record
    compare equal when they are."""
    return json.loads(json.dumps(settings, sort_keys=True))


def settings_hash(settings: dict[str, Any]) -> str:
    """A short hash of a settings record without its seed: every run of one arm under one plan has the same."""
    run = {k: v for k, v in settings.get("run", {}).items() if k != "seed"}
    text = json.dumps({**settings, "run": run}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


ABSENT = "(absent)"


def settings_differences(recorded: dict[str, Any], planned: dict[str, Any],
                         ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(field, recorded, planned)`` for every field that differs (dotted names, e.g. ``run.train.lr``); a field
    only one side has shows :data:`ABSENT` on the other; fields under a name in ``ignore`` are skipped."""
    old, new = _flatten(canonical(recorded)), _flatten(canonical(planned))
    out = []
    for key in sorted(set(old) | set(new)):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        a, b = old.get(key, ABSENT), new.get(key, ABSENT)
        if a != b:
            out.append((key, a, b))
    return out


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key} {_show(a) if a is not ABSENT else a} -> {_show(b) if b is not ABSENT else b}"
                     for key, a, b in differences)


def _check_table(table: str, values: dict[str, Any], where: str) -> None:
    """Every given key of ``table`` through its declared check; the error names ``where`` (file and table) and
    the key."""
    for key in KEYS[table]:
        if key.check is not None and key.name in values:
            try:
                key.check(values[key.name])
            except ValueError as exc:
                raise ValueError(f"{where} {key.name}: {exc}") from None


def _check_train_types(train: dict[str, Any], where: str) -> None:
    """``[train]``'s TrainConfig settings have the types of TrainConfig's fields (as ``ragcun train --config``)."""
    import inspect

    from ragcun.spec import check_value_type

    parameters = inspect.signature(TrainConfig).parameters
    for key, value in train.items():
        if key in parameters and key not in TRAIN_ONLY:
            try:
                check_value_type(parameters[key], value, key)
            except ValueError as exc:
                raise ValueError(f"{where} {key}: {str(exc).replace(f'{key} must be ', 'expected ', 1)}") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{where} {key}: expected a finite number, got {value!r}")


def _check_training(train: dict[str, Any], arms: dict[str, Arm], where: str) -> None:
    """Range checks of every trained arm's settings, as ``ragcun train`` validates them, before anything runs:
    ``[train]`` first (an error there names ``[train]``), then each arm's own keys on top of it."""
    trained = [a for a in arms.values() if a.trained]
    if not trained:
        return
    shared = {k: v for k, v in train.items() if k not in TRAIN_ONLY}
    if shared.get("steps") is None and shared.get("epochs") is None:
        raise ValueError(f"{where} [train]: give steps (optimizer steps) or epochs; the plan trains "
                         f"{', '.join(a.name for a in trained)}")
    placeholders = {"train_data": "beir:plan:train", "output_dir": "plan"}
    checks = [(f"{where} [train]", {**shared, **placeholders, "loss": "contrastive"})]
    for arm in trained:
        own = {key: getattr(arm, key) for key in ("head_lr", "head", "encoder", "distance")
               if getattr(arm, key) is not None}
        checks.append((f"{where} [arms.{arm.name}]", {**shared, **placeholders, **own, "loss": arm.loss_for(1.0),
                                                      "freeze_encoder": arm.freeze_encoder}))
    for label, values in checks:
        try:
            TrainConfig.from_dict(values, label).validate()
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None


def _check_arm(arm: Arm, spec: dict[str, Any], where: str) -> None:
    here = f"{where} [arms.{arm.name}]"
    if arm.trained and arm.transform != "none":
        raise ValueError(f"{here}: an arm has a loss (trained) or a transform (training-free), not both")
    if not arm.trained:
        given = [key for key in TRAINED_ONLY if key in spec]
        if given:
            raise ValueError(f"{here}: {', '.join(given)} {'is' if len(given) == 1 else 'are'} for trained arms; this "
                             "arm has no loss, so it is training-free: the encoder of [train], with its transform, "
                             "evaluated once")
    if arm.whiten_dim is not None and arm.transform != "whiten":
        raise ValueError(f"{here}: whiten_dim goes with transform = \"whiten\" (this arm's transform is "
                         f"{arm.transform!r})")


def _check_metrics(plan: Plan, where: str) -> None:
    """Every metric the plan scores by is one the evaluation computes: its cut-off at most ``k``."""
    for label, metric in plan.metrics().items():
        cutoff = metric_cutoff(metric)
        if plan.k < cutoff:
            raise ValueError(f"{where} k: {plan.k} is below the cut-off of {label} {metric} (retrieving {plan.k} "
                             f"documents per query cannot score it): give k >= {cutoff}")


def _check_plan_tables(data: dict[str, Any], where: str) -> None:
    """The top-level keys (known, the required ones present, each of the right type), then the known keys and
    types of [primary], [secondary], [select] and [dev], in that order."""
    _unknown(data, PLAN_KEYS, where)
    for key in (k.name for k in KEYS[""] if k.default is REQUIRED):
        if key not in data:
            raise ValueError(f"{where}: missing {key!r}")
    _check_table("", data, where)
    for table, known in (("primary", PRIMARY_KEYS), ("secondary", SECONDARY_KEYS), ("select", SELECT_KEYS),
                         ("dev", DEV_KEYS)):
        if table in data:
            _unknown(data[table], known, f"{where} [{table}]")
            _check_table(table, data[table], f"{where} [{table}]")


def _load_arms(tables: dict[str, Any], where: str) -> dict[str, Arm]:
    """The [arms.NAME] tables, each checked (its name, keys, types and combination of keys) as it is read."""
    arms: dict[str, Arm] = {}
    for name, spec in tables.items():
        problem = safe_name_problem(name)
        if problem:
            raise ValueError(f"{where} [arms.{name}]: the arm name {problem}")
        _unknown(spec, ARM_KEYS, f"{where} [arms.{name}]")
        _check_table("arms.NAME", spec, f"{where} [arms.{name}]")
        arm = Arm(name=name, **spec)
        _check_arm(arm, spec, where)
        arms[name] = arm
    return arms


def _load_train(table: dict[str, Any], where: str) -> dict[str, Any]:
    """The [train] table: TrainConfig settings (less those the plan sets per run or per arm) and the plan's own keys."""
    train = dict(table)
    known = {f.name for f in fields(TrainConfig)} - RESERVED_TRAIN
    _unknown(train, known | TRAIN_ONLY, f"{where} [train]")
    _check_table("train", train, f"{where} [train]")
    _check_train_types(train, f"{where} [train]")
    return train


def _check_select(select: dict[str, Any], arms: dict[str, Arm], where: str) -> None:
    """[select] names an arm that selects lambda and its candidates; every arm that selects lambda has [select]."""
    if select:
        if select.get("arm") not in arms or not arms[select["arm"]].selects_lambda:
            raise ValueError(f"{where} [select]: arm must name a trained arm whose loss contains {LAMBDA}")
        if not select.get("values"):
            raise ValueError(f"{where} [select]: values must list the {LAMBDA} candidates")
    for arm in arms.values():
        if arm.selects_lambda and not select:
            raise ValueError(f"{where} [arms.{arm.name}]: its loss has {LAMBDA} but the plan has no [select]")


def _check_train_and_dev_data(train: dict[str, Any], select: dict[str, Any], where: str) -> None:
    """Where [train] trains (``data`` or ``train_file``) and where [select] scores the lambda candidates
    (``dev_fraction`` carved from ``data``'s train split, or the dataset's own ``dev_split``) fit together."""
    if "train_file" in train and "dev_fraction" in train:
        raise ValueError(f"{where} [train]: dev_fraction carves a dev split out of `data`'s train split, which "
                         "train_file replaces; give dev_split (the dataset's own dev split) instead")
    if "train_file" in train and select and "dev_split" not in train:
        raise ValueError(f"{where} [train]: with train_file, the lambda selection needs dev_split (the dataset's own "
                         "dev split; a file cannot be carved)")
    if "data" not in train and ("train_file" not in train or select or "dev_split" in train):
        raise ValueError(f"{where} [train]: missing 'data' (a BEIR dataset whose train split is trained on"
                         + (", and whose dev split scores the lambda candidates)" if "train_file" in train else ")"))
    if "dev_fraction" in train and "dev_split" in train:
        raise ValueError(f"{where} [train]: give dev_fraction (carve dev from train) or dev_split (the dataset's own), "
                         "not both")
    if "dev_fraction" in train and not select:
        raise ValueError(f"{where} [train]: dev_fraction carves the dev split that [select] scores the lambda "
                         "candidates on; this plan has no [select], so nothing is carved and every trained arm "
                         "trains on all of the split: remove dev_fraction")


def _secondary(table: dict[str, Any], arms: dict[str, Arm], where: str) -> list[Comparison]:
    """The [secondary] comparisons (exploratory)."""
    return [parse_comparison(c, arms, f"{where} [secondary] comparisons")
            for c in _string_list(table.get("comparisons", []), f"{where} [secondary] comparisons")]


def _build_plan(path: Path, data: dict[str, Any], arms: dict[str, Arm], train: dict[str, Any], *,
                primary: Primary | None, secondary: list[Comparison], results: str | Path | None,
                work_dir: str | Path | None) -> Plan:
    """The Plan of checked tables: given values, else the keys' defaults; ``results`` and ``work_dir``, when
    given, override the file's."""
    select, dev = data.get("select", {}), data.get("dev", {})
    base = path.parent
    return Plan(
        name=data.get("name", path.stem), path=path,
        results=Path(results) if results is not None else base / data.get("results", path.stem),
        work_dir=Path(work_dir) if work_dir is not None else Path(data.get("work_dir", f"runs/ablation/{path.stem}")),
        baseline=data["baseline"], seeds=list(data.get("seeds", default("", "seeds"))),
        datasets=list(data["datasets"]), arms=arms, train={k: v for k, v in train.items() if k not in TRAIN_ONLY},
        train_data=str(train["data"]) if "data" in train else None, train_set=list(train.get("set", [])),
        train_split=str(train.get("split", default("train", "split"))),
        split=str(data.get("split", default("", "split"))),
        dev_fraction=float(train.get("dev_fraction", default("train", "dev_fraction"))),
        select_arm=select.get("arm"), select_values=[float(v) for v in select.get("values", [])],
        dev_corpus_sample=int(dev.get("corpus_sample", default("dev", "corpus_sample"))),
        dev_metric=dev.get("metric", default("dev", "metric")), dtype=data.get("dtype", default("", "dtype")),
        batch_size=int(data.get("batch_size", default("", "batch_size"))), k=int(data.get("k", default("", "k"))),
        isotropy_sample=int(data.get("isotropy_sample", default("", "isotropy_sample"))),
        truncate_dims=sorted(data.get("truncate_dims", default("", "truncate_dims")), reverse=True),
        dev_split=str(train["dev_split"]) if "dev_split" in train else None, primary=primary, secondary=secondary,
        train_file=str(train["train_file"]) if "train_file" in train else None,
    )


def load_plan(path: str | Path, *, results: str | Path | None = None, work_dir: str | Path | None = None) -> Plan:
    """Read and check a plan file: every key's type and range, names that become folder and file names, metric
    names and cut-offs, and every trained arm's settings as ``ragcun train`` validates them. Every error names the
    file and the key."""
    from ragcun.spec import load_toml

    path = Path(path)
    data = load_toml(path, "plan file")
    where = str(path)
    # The checks run in this order and the first failing one is reported: each assumes those before it passed.
    _check_plan_tables(data, where)
    arms = _load_arms(data["arms"], where)
    if data["baseline"] not in arms:
        raise ValueError(f"{where}: baseline {data['baseline']!r} is not an arm (arms: {', '.join(arms)})")
    train = _load_train(data["train"], where)
    select = data.get("select", {})
    _check_select(select, arms, where)
    _check_train_and_dev_data(train, select, where)
    seeds = data.get("seeds", default("", "seeds"))
    datasets = data["datasets"]
    _check_not_tested_on_training(train, datasets, data.get("split", default("", "split")), where)
    primary = _primary(data.get("primary"), arms, datasets, seeds, where)
    secondary = _secondary(data.get("secondary", {}), arms, where)
    plan = _build_plan(path, data, arms, train, primary=primary, secondary=secondary, results=results,
                       work_dir=work_dir)
    _check_metrics(plan, where)  # needs the Plan: the metrics and k with their defaults filled in
    _check_training(train, arms, where)
    return plan


def _check_not_tested_on_training(train: dict[str, Any], datasets: list[str], split: str, where: str) -> None:
    """No dataset is evaluated on a split the plan trains or chooses lambda on."""
    if "data" not in train:
        return
    name = Path(str(train["data"])).name
    used = {str(train.get("split", default("train", "split"))): "trains on",
            **({str(train["dev_split"]): "chooses lambda on"} if "dev_split" in train else {})}
    if name in [Path(d).name for d in datasets] and split in used:
        raise ValueError(f"{where}: split = {split!r} of {name!r} is evaluated, and the plan {used[split]} that "
                         f"split ([train]): evaluate another split, or leave {name!r} out of datasets")


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: must be a list of strings, got {value!r}")
    return value


def _primary(table: Any, arms: dict[str, Arm], datasets: list[str], seeds: list[int], where: str) -> Primary | None:
    """The ``[primary]`` table, checked: a run-level verdict needs trained arms with at least two seeds each,
    paired by seed (the same seeds in arm and control)."""
    if table is None:
        return None
    here = f"{where} [primary]"
    comparisons = _string_list(table.get("comparisons", []), f"{here} comparisons")
    if not comparisons:
        raise ValueError(f"{here}: comparisons must name at least one 'ARM vs CONTROL'")
    primary = Primary(metric=str(table.get("metric", default("primary", "metric"))),
                      datasets=_string_list(table.get("datasets", list(datasets)), f"{here} datasets"),
                      average=table.get("average", default("primary", "average")),
                      comparisons=[parse_comparison(c, arms, f"{here} comparisons") for c in comparisons])
    for key in ("margin", "alpha"):  # checked by the key table
        setattr(primary, key, float(table.get(key, default("primary", key))))
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
            raise ValueError(f"{here}: {comparison}: arm {arm.name!r} has {len(arm_seeds)} seed; a run-level test "
                             "needs "
                             "at least 2 seeds per arm (5 or more for a useful power)")
        if control.trained:
            shared = set(arm_seeds) & set(control.seeds or seeds)
            if len(shared) < 2:
                raise ValueError(f"{here}: {comparison}: the two arms share {len(shared)} seed(s); pairing by seed "
                                 "needs at least 2 shared seeds")
    return primary
