"""Every resolved training setting in one dataclass, saved with the run as ``train_config.json``.

Each setting is declared once, here: its default, and in its field's metadata (:func:`setting`) its help text,
its ``ragcun train`` flag (or that it has none), whether a resumed run may change it, and how the command line
reads it. The CLI's options (``ragcun.cli.options``), the command line a saved run is rendered back to
(``ragcun.training.command_line``) and what ``--resume`` accepts (:data:`RESUMABLE_CHANGES`) are read from it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping

from ragcun.precision import DTYPES, training_dtype  # names only: no torch at import

CONFIG_FILE = "train_config.json"
SCHEDULES = ("linear", "cosine", "constant")
HISTORY_FILE = "config_history.json"
# fields added after train_config.json was first written; each default is the behaviour before the field existed,
# so a run saved without one reads as it ran (a field added from now on joins this list, or old runs cannot resume)
ADDED_LATER = ("no_duplicate_queries", "gradient_checkpointing", "max_seq_length")

# What a resumed run may do with a setting (Setting.resume):
FIXED = "fixed"  # keep it: changing it changes what the run computes (the resume is refused, naming it)
FREE = "free"  # change it without changing what the run computes (how long, how often, where, what is shown)
OPTIMIZER = "optimizer"  # change it: applied to the restored optimizer's parameter groups and the scheduler's base
#                          rates (the model's shape stays), and recorded in config_history.json
_RESUME = (FIXED, FREE, OPTIMIZER)


@dataclass(frozen=True)
class Setting:
    """What TrainConfig's field metadata says about a setting (made by :func:`setting`). The click option of a
    flag is built from it in ``ragcun.cli.options``: this module imports no click."""

    help: str
    flag: str | None  # the ragcun train flag; None: none (the setting is given with --config or otherwise)
    resume: str = FIXED
    metavar: str | None = None
    envvar: str | None = None  # read from this environment variable when the flag is not given (shown in --help)
    directory: bool = False  # the value is a folder (click.Path(file_okay=False), DIRECTORY in --help)
    choices: tuple[str, ...] | None = None  # one of these (click.Choice)
    show_default: bool = True  # the default shown in --help
    inverted: bool = False  # a bool setting the flag turns off (show_progress: --no-progress)
    none_as: str | None = None  # the flag's value that means None (max_grad_norm: --max-grad-norm 0, no clipping)
    always: bool = False  # what was trained: spelled out in a rendered command line even at its default


def setting(default: Any = MISSING, *, help: str, flag: str | None, default_factory: Any = MISSING,
            **attrs: Any) -> Any:
    """A TrainConfig field with its :class:`Setting` in the metadata. ``flag`` is required: a setting without a
    ``ragcun train`` flag says so with ``flag=None``."""
    meta = Setting(help=help, flag=flag, **attrs)
    if meta.resume not in _RESUME:
        raise ValueError(f"resume must be one of {', '.join(_RESUME)}, got {meta.resume!r}")
    return field(default=default, default_factory=default_factory, metadata={"setting": meta})


@dataclass
class TrainConfig:
    # what to train
    output_dir: str = setting(
        "runs/default", flag="--output-dir", always=True,
        # the run is the folder being resumed, wherever it now is (run folders are relocatable)
        resume=FREE, help="run folder: config, metrics, checkpoints, final model")
    train_data: str = setting(
        "", flag="--train-data", metavar="SPEC", show_default=False, always=True,
        help="beir:NAME[:SPLIT] (qrels pairs), jsonl:PATH (MS MARCO-style) or triples:PATH (MS MARCO TSV)")
    data_dir: str | None = setting(
        None, flag="--data-dir", directory=True, envvar="RAGCUN_DATA", help="folder holding the BEIR datasets")
    encoder: str = setting("all-minilm-l6-v2", flag="--encoder", always=True,
                           help="encoder spec: all-minilm-l6-v2 or hf:PATH")
    head: str = setting("gaussian", flag="--head", always=True, help="head spec")
    distance: str = setting("euclidean", flag="--distance", always=True, help="distance spec")
    loss: str = setting("contrastive+isotropy", flag="--loss", always=True,
                        help="loss spec, e.g. contrastive+isotropy or contrastive+0.5*isotropy")
    settings: dict[str, Any] = setting(
        default_factory=dict, flag=None,  # given as --set KIND.NAME.PARAM=VALUE (or [KIND.NAME] tables)
        help="component settings: kind -> name -> param -> value")
    freeze_encoder: bool = setting(False, flag="--freeze-encoder", help="train only the head")
    # data
    negatives: int = setting(0, flag="--negatives",  # 0 = in-batch negatives only
                             help="hard negatives per query")
    mine_negatives: str | None = setting(
        None, flag="--mine-negatives",  # None, "bm25" or "model", with filters
        help="bm25 or model: mine hard negatives (BEIR data), cached; filters against false negatives: "
             "bm25:skip=3,range=10-50,margin=0.05")
    qrels_threshold: int = setting(1, flag="--qrels-threshold",
                                   help="graded qrels: a pair is relevant when its score >= this")
    shuffle_buffer: int = setting(10_000, flag="--shuffle-buffer",  # streamed sources; deterministic
                                  help="streamed data: shuffle buffer")
    no_duplicate_queries: bool = setting(
        False, flag="--no-duplicate-queries",
        help="a global batch holds each query at most once (a repeat waits for a later batch)")
    # optimisation
    batch_size: int = setting(32, flag="--batch-size", help="per process and micro-step")
    steps: int | None = setting(None, flag="--steps", resume=FREE,  # None -> from epochs
                                help="optimizer steps")
    epochs: float | None = setting(None, flag="--epochs", resume=FREE,
                                   help="passes over the data (instead of --steps)")
    lr: float = setting(2e-5, flag="--lr", resume=OPTIMIZER, help="peak learning rate")
    head_lr: float | None = setting(None, flag="--head-lr", resume=OPTIMIZER,  # None -> lr
                                    help="the head's learning rate  [default: --lr]")
    warmup: float = setting(0.1, flag="--warmup", resume=OPTIMIZER,
                            help="warmup: a fraction of the steps (< 1) or a number of steps")
    schedule: str = setting("linear", flag="--schedule", resume=OPTIMIZER,
                            help="linear, cosine or constant (after warmup)")
    weight_decay: float = setting(0.01, flag="--weight-decay", resume=OPTIMIZER, help="AdamW weight decay")
    grad_accum: int = setting(1, flag="--grad-accum", help="micro-batches per optimizer step")
    max_grad_norm: float | None = setting(1.0, flag="--max-grad-norm", none_as="0", resume=OPTIMIZER,
                                          help="gradient clipping (0 disables)")  # None: no clipping
    grad_cache_chunk: int | None = setting(
        None, flag="--grad-cache-chunk", help="GradCache: embed in chunks of K texts (large batches in bounded memory)")
    # benchmarks/RESULTS.md, "Memory per phase": the quickstart's training on a quiet machine, 1.21x the time
    gradient_checkpointing: bool = setting(
        False, flag="--gradient-checkpointing",
        help="recompute each encoder layer in the backward pass: less memory (0.58x the peak), about 1.21x the "
             "training time, the same losses")
    # None: the encoder's own limit, which the saved model keeps (evaluation reads whole texts as the base model does)
    max_seq_length: int | None = setting(
        None, flag="--max-seq-length",
        help="tokens per text while training  [default: the encoder's own]; the saved model keeps the encoder's "
             "limit, so evaluation reads whole texts")
    dtype: str = setting(
        "auto", flag="--dtype", choices=DTYPES,
        help="autocast precision of the steps (weights stay float32, so there is no bfloat16-weights here); auto: "
             "bf16 on GPUs that support it, float32 on CPUs; bfloat16-autocast (bfloat16, its older name, means the "
             "same) also works on a CPU, 1.55x faster on one with AVX512-BF16, see benchmarks/RESULTS.md")
    seed: int = setting(42, flag="--seed", help="random seed: the initial weights, the data order and dropout")
    device: str | None = setting(None, flag="--device",  # None -> cuda:LOCAL_RANK if available, else cpu
                                 help="cpu, cuda, cuda:1  [default: cuda:LOCAL_RANK if available]")
    # bookkeeping
    save_every: int = setting(500, flag="--save-every", resume=FREE, help="checkpoint every K steps")
    keep_checkpoints: int = setting(2, flag="--keep-checkpoints", resume=FREE, help="checkpoints kept")
    log_every: int = setting(10, flag="--log-every", resume=FREE, help="metrics every K steps")
    eval_every: int | None = setting(None, flag="--eval-every", resume=FREE, help="evaluate every K steps")
    eval_data: str | None = setting(None, flag="--eval-data", metavar="SPEC", resume=FREE,  # evaluated on rank 0
                                    help="periodic evaluation, e.g. beir:nfcorpus:dev")
    eval_batch_size: int = setting(64, flag=None, resume=FREE, help="batch size of the periodic evaluation")
    max_eval_queries: int | None = setting(None, flag="--max-eval-queries", resume=FREE,
                                           help="cap on the queries of periodic evaluation")
    diagnostics_every: int | None = setting(None, flag="--diagnostics-every", resume=FREE,
                                            help="isotropy diagnostics every K steps")
    show_progress: bool = setting(True, flag="--no-progress", inverted=True, resume=FREE, help="no live display")

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the flag for any bad value."""
        if not self.train_data:
            raise ValueError("--train-data is required, e.g. beir:scifact:train or path/to/train.jsonl")
        if not self.output_dir:
            raise ValueError("--output-dir is required")
        positive = {"batch_size": "--batch-size", "grad_accum": "--grad-accum", "save_every": "--save-every",
                    "keep_checkpoints": "--keep-checkpoints", "log_every": "--log-every",
                    "eval_batch_size": "--eval-batch-size", "shuffle_buffer": "--shuffle-buffer"}
        for name, flag in positive.items():
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{flag} must be a positive integer, got {getattr(self, name)}")
        for name, flag in {"steps": "--steps", "eval_every": "--eval-every", "grad_cache_chunk": "--grad-cache-chunk",
                           "diagnostics_every": "--diagnostics-every", "max_eval_queries": "--max-eval-queries",
                           "max_seq_length": "--max-seq-length"}.items():
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"--epochs must be positive, got {self.epochs}")
        if self.steps is None and self.epochs is None:
            raise ValueError("give --steps (optimizer steps) or --epochs")
        if self.negatives < 0:
            raise ValueError(f"--negatives must be 0 or more, got {self.negatives}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.head_lr is not None and not self.head_lr > 0:
            raise ValueError(f"--head-lr must be positive, got {self.head_lr}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be 0 or more (a fraction < 1 or a number of steps), got {self.warmup}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"--max-grad-norm must be positive (--max-grad-norm 0 disables clipping; omitted, it is "
                             f"1.0), got {self.max_grad_norm}")
        training_dtype(self.dtype)  # bfloat16-weights refused with the reason
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mine_negatives is not None:
            from ragcun.data.negatives import parse_mining_spec

            parse_mining_spec(self.mine_negatives)  # bm25 or model, with filters: a bad one names the flag
        if self.mine_negatives and self.negatives < 1:
            raise ValueError("--mine-negatives needs --negatives K (how many hard negatives per query)")
        if self.device is not None and not re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", str(self.device)):
            raise ValueError(f"--device must be cpu, cuda, cuda:N (or mps, xpu), got {self.device!r}")
        if (self.eval_every is None) != (self.eval_data is None):
            raise ValueError("--eval-every and --eval-data go together (e.g. --eval-data beir:nfcorpus:dev "
                             "--eval-every 200)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            import difflib

            hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, known, n=1)) else u
                     for u in unknown]
            raise ValueError(f"{source}: unknown training setting(s) {', '.join(hints)}")
        return cls(**data)

    def save(self, folder: str | Path) -> Path:
        from ragcun.files import write_text_atomic  # the standard library only, like this module

        path = Path(folder) / CONFIG_FILE
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> TrainConfig:
        path = Path(folder) / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{folder} has no {CONFIG_FILE}; it is not a ragcun training run") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.checked(data, str(path))

    @classmethod
    def checked(cls, data: Any, source: str) -> TrainConfig:
        """A saved ``train_config.json``'s contents read with every check ``--config`` gets: a JSON object, known
        keys, every field present (a missing one is not defaulted: the run used some value), each of its field's
        type, then :meth:`validate`. Errors name ``source`` and the key."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of training settings, got {type(data).__name__}; "
                             "the file is damaged (restore it, or start a new --output-dir)")
        missing = sorted({f.name for f in fields(cls)} - set(data) - set(ADDED_LATER))
        config = cls.from_dict(data, source)
        if missing:
            raise ValueError(f"{source}: missing {', '.join(missing)}; a saved run records every setting, so the file "
                             "was edited or damaged (restore it, or start a new --output-dir)")
        _check_field_types(data, source)
        if not isinstance(data.get("settings"), dict):
            raise ValueError(f"{source}: settings must be an object of component settings, got {data['settings']!r}")
        try:
            config.validate()
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        return config

    def differences(self, other: TrainConfig, ignore: Iterable[str] | None = None) -> dict[str, tuple[Any, Any]]:
        """Settings that differ, paths compared resolved (``./runs/x`` is ``runs/x``; a data folder given
        relative is the absolute one the run stored); ``ignore``: those not compared (by default
        :data:`RESUMABLE_CHANGES`, what a resumed run may change)."""
        ignore = RESUMABLE_CHANGES if ignore is None else tuple(ignore)
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a
                if k not in ignore and a[k] != b[k] and _comparable(k, a[k]) != _comparable(k, b[k])}



def settings_of() -> dict[str, Setting]:
    """``{field: Setting}`` of every TrainConfig field, in the dataclass's order."""
    return {f.name: f.metadata["setting"] for f in fields(TrainConfig)}


def setting_of(name: str) -> Setting:
    """The :class:`Setting` of the field ``name``.

    >>> setting_of("batch_size").flag, setting_of("settings").flag
    ('--batch-size', None)
    """
    try:
        return settings_of()[name]
    except KeyError:
        raise KeyError(f"TrainConfig has no field {name!r}") from None


def value_type(name: str) -> type:
    """The type of the field ``name``'s values, None aside (``steps: int | None`` -> ``int``).

    >>> value_type("steps"), value_type("show_progress"), value_type("settings")
    (<class 'int'>, <class 'bool'>, <class 'dict'>)
    """
    hint = _type_hints()[name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in hint.__args__ if a is not type(None))
    return typing.get_origin(hint) or hint


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


# Settings a resumed run may change without changing what it computes, and among them the optimizer's: both read
# from each field's Setting.resume (ragcun.training.run_folder checks a resume against them).
OPTIMIZER_CHANGES = tuple(name for name, s in settings_of().items() if s.resume == OPTIMIZER)
RESUMABLE_CHANGES = tuple(name for name, s in settings_of().items() if s.resume != FIXED)

def config_default(name: str) -> Any:
    """TrainConfig's default for the field ``name``: the dataclass is the one place the defaults are written
    (the command-line options of ``ragcun train``, ``sweep`` and ``preflight`` read theirs from here).

    >>> config_default("lr"), config_default("steps")
    (2e-05, None)
    """
    for f in fields(TrainConfig):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise KeyError(f"TrainConfig.{name} has no default")
    raise KeyError(f"TrainConfig has no field {name!r}")


def build_config(*, config_file: str | Path | None = None, settings: Iterable[str] = (),
                 flags: Mapping[str, Any] | None = None, resume: bool = False, command: str | None = None,
                 expand: Callable[[TrainConfig], Iterable[TrainConfig]] | None = None) -> TrainConfig:
    """The run's :class:`TrainConfig`, validated; each value comes from the first of these that gives it:

    1. ``flags``: the command-line options the user gave, as ``{TrainConfig field: value}``. Only those given:
       an option left at its default (click's ``ParameterSource.DEFAULT``) must not be here, or it would
       override the config file. ``max_grad_norm=0`` means no clipping (``None``).
    2. ``settings``: ``--set KIND.NAME.PARAM=VALUE`` strings, the component settings. (Flags and ``--set``
       address different things; where a spec's argument and a setting name the same parameter, e.g.
       ``--encoder hf:PATH`` and ``--set encoder.hf.path=...``, the spec wins when the component is built.)
    3. ``config_file``: a TOML file (a ``[train]`` table of TrainConfig fields, ``-`` or ``_`` in the keys,
       and ``[KIND.NAME]`` tables of component settings) or a ``train_config.json``.
    4. With ``resume``, the saved ``train_config.json`` of the run in ``flags["output_dir"]``.
    5. The dataclass defaults.

    An unknown key, a value of the wrong type or a setting for a component the run does not build is a
    ``ValueError`` naming where it came from (the file and table, or ``COMMAND --set KEY=VALUE``; ``command``
    is the command line's name for itself, e.g. ``"ragcun train"``). ``expand`` gives the configs that
    actually run, when they are derived from this one (``ragcun sweep``'s three runs): each is validated and
    the settings are checked against the components of them all.
    """
    from ragcun.spec import settings_from_options

    flags = dict(flags or {})
    if "settings" in flags:
        raise ValueError("build_config: component settings go in settings= (KIND.NAME.PARAM=VALUE), not in flags")
    base: dict[str, Any] = TrainConfig().to_dict()
    origins: dict[tuple[str, str, str], str] = {}  # (kind, name, param) -> where the setting came from
    if resume:
        base = _resumed_values(flags.get("output_dir"), origins)
    if config_file:
        _read_config_file(config_file, base, origins)
    base.update(flags)
    if base.get("max_grad_norm") == 0:
        base["max_grad_norm"] = None
    merged = {k: {n: dict(v) for n, v in names.items()} for k, names in (base.get("settings") or {}).items()}
    merged = settings_from_options(settings, merged, origins=origins, command=command)
    base["settings"] = {k: v for k, v in merged.items() if v}
    config = TrainConfig.from_dict(base)
    config.validate()
    runs = [config] if expand is None else list(expand(config))
    for run in runs:
        run.validate()
    _check_component_settings(config, runs, origins)
    return config


def _resumed_values(output_dir: str | None, origins: dict) -> dict[str, Any]:
    """The saved train_config.json of the run ``--resume`` continues, as a dict; its settings' origins recorded."""
    if not output_dir:
        raise ValueError("--resume needs --output-dir (the run to continue)")
    if not (Path(output_dir) / CONFIG_FILE).is_file():
        raise ValueError(f"--resume: {output_dir} has no {CONFIG_FILE}; it is not a ragcun training run")
    base = TrainConfig.load(output_dir).to_dict()
    for kind, names in (base.get("settings") or {}).items():
        for name, values in names.items():
            for param in values:
                origins[(kind, name, param)] = f"{Path(output_dir) / CONFIG_FILE} (settings.{kind}.{name})"
    return base


def _read_config_file(config_file: str | Path, base: dict[str, Any], origins: dict) -> None:
    """``--config``'s values into ``base``: a train_config.json, or a TOML file's [train] table and component
    tables (their origins recorded)."""
    from ragcun.spec import load_toml, settings_from_mapping

    if str(config_file).endswith(".json"):
        try:
            data = json.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ValueError(f"--config {config_file} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {config_file}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--config {config_file}: expected a JSON object of training settings, got "
                             f"{type(data).__name__}")
        _check_field_types(data, f"--config {config_file}")
        base.update(TrainConfig.from_dict(data, str(config_file)).to_dict())
        return
    data = load_toml(config_file)
    table = {k.replace("-", "_"): v for k, v in dict(data.get("train", {})).items()}
    unknown = set(table) - set(base) - {"settings"}
    if unknown:
        TrainConfig.from_dict(table, f"{config_file} [train]")  # raises with a did-you-mean
    _check_field_types(table, f"{config_file} [train]")
    base.update(table)
    components = settings_from_mapping(data, str(config_file), other_tables=("train",), origins=origins)
    merged = base.get("settings") or {}
    for kind, names in components.items():
        for name, values in names.items():
            merged.setdefault(kind, {}).setdefault(name, {}).update(values)
    base["settings"] = merged


def _check_component_settings(config: TrainConfig, runs: list[TrainConfig], origins: dict) -> None:
    """Every setting names a registered component, a constructor argument of the right type, and a component
    one of ``runs`` builds; checked here so a typo fails before anything runs (and once, not on every rank)."""
    from ragcun.components import check_settings, components_in_use

    in_use: dict[str, list[str]] = {}
    for run in runs:
        for kind, names in components_in_use({"encoder": run.encoder, "head": run.head, "distance": run.distance,
                                               "loss": run.loss}).items():
            used = in_use.setdefault(kind, [])
            used += [n for n in names if n not in used]
    check_settings(config.settings, in_use, origins=origins)


def _check_field_types(table: dict[str, Any], source: str) -> None:
    """A [train] table's values have the types of TrainConfig's fields (``lr = "fast"`` fails here, named)."""
    import inspect

    from ragcun.spec import check_value_type

    parameters = inspect.signature(TrainConfig).parameters
    for key, value in table.items():
        if key in parameters and key != "settings":
            try:
                check_value_type(parameters[key], value, key)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None


def record_history(folder: str | Path, config: TrainConfig, *, previous: TrainConfig | None, step: int,
                   checkpoint: str | None = None, world_size: int = 1) -> Path:
    """Append this invocation to ``config_history.json``: a fresh start (which begins a new history) or a resume
    with every setting that changed since the run's previous ``train_config.json`` (``{"from", "to"}``), each with
    its number of processes and global batch."""
    import datetime

    path = Path(folder) / HISTORY_FILE
    history: list = []
    if previous is not None and path.is_file():
        try:
            history = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            history = []  # a damaged history must not stop a run; it restarts from here
        if not isinstance(history, list):
            history = []
    entry: dict[str, Any] = {"event": "start" if previous is None else "resume", "step": int(step),
                             "world_size": int(world_size),
                             "global_batch": config.batch_size * int(world_size) * config.grad_accum,
                             "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    # which torchrun job wrote this entry: a worker that torchrun restarts (--max-restarts) resumes by itself only
    # a run its own job started (ragcun.training.run_folder.elastic_resume)
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        entry["torchelastic_run_id"] = os.environ["TORCHELASTIC_RUN_ID"]
        entry["torchelastic_restart"] = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if previous is not None:
        entry["checkpoint"] = checkpoint
        entry["changes"] = {k: {"from": a, "to": b}
                            for k, (a, b) in sorted(previous.differences(config, ignore=()).items())}
    history.append(entry)
    from ragcun.files import write_text_atomic

    write_text_atomic(path, json.dumps(history, indent=2, sort_keys=True) + "\n")
    return path


_PATH_PREFIXES = ("jsonl:", "triples:", "hf:")


def _resolved(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _comparable(key: str, value: Any) -> Any:
    """A setting as resume compares it: path-valued settings resolved against the working directory."""
    if key == "data_dir" and value is None:  # unset means the default folder ($RAGCUN_DATA, else the cache)
        from ragcun.data.beir import default_data_dir

        value = str(default_data_dir())
    if not isinstance(value, str) or not value:
        return value
    if key == "dtype":  # bfloat16 and bfloat16-autocast: one precision, two spellings (kept as given)
        return training_dtype(value) if value in DTYPES else value
    if key in ("output_dir", "data_dir"):
        return _resolved(value)
    if key in ("train_data", "eval_data", "encoder"):
        for prefix in _PATH_PREFIXES:
            if value.startswith(prefix):
                return prefix + _resolved(value[len(prefix):])
        if key != "encoder" and not value.startswith("beir:"):
            return _resolved(value)  # a bare path: jsonl or triples by its suffix
    return value
