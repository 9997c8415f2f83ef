"""Run an ablation plan: every arm x seed, one after another, skipping what is already finished.

What "finished" means is a file in the results folder (``runs/ARM/seed-S/result.json``), written last and
atomically; models and TREC runs go to the work folder. So an interrupted plan resumes where it stopped, and
on another machine too once the finished results are committed (a half-trained model in the work folder
resumes from its checkpoint; a missing one is trained again).

A finished run is reused only if it is the run the plan describes now: each result.json (and each lambda
candidate's file) records the settings that define it (:meth:`ragcun.ablation.plan.Plan.run_settings`) and their
hash, and before anything runs they are compared with the plan's. A difference (the plan edited between seeds
or after the runs) is refused, naming each result and setting; with ``rerun_changed`` those runs are set aside
under ``RESULTS/stale/`` (their models under ``WORK/stale/``) and run again. A model folder whose
train_config.json differs from the settings the plan now gives is refused (or set aside) the same way. Results
written before the settings record are accepted with a warning (they cannot be checked one by one; plan.json's
settings stand for them).

Order: the training-free arms (they only need the base encoder's outputs, encoded once per dataset and
cached); then the lambda selection on the dev split (one training per candidate, first seed); then the
baseline and the selected arm seed by seed, then the other arms. With ``parallel`` (a GPU node), the trained
runs after the selection go side by side, one process per GPU, each writing its own result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

from ragcun.ablation.plan import Arm, Plan, canonical, describe_differences, settings_differences, settings_hash

RESULT_FILE = "result.json"
STALE = "stale"  # RESULTS/stale/ and WORK/stale/: runs set aside by --rerun-changed
# train_config.json fields a model folder may differ in from the run the plan gives now: where things are (the
# data's folder depends on --data-dir and the work folder) and how the run is logged and saved
MODEL_IGNORES = ("output_dir", "train_data", "data_dir", "save_every", "keep_checkpoints", "log_every",
                 "show_progress")


def _atomic_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary file of this process, then rename: runs side by side may write the same
    file (plan.json, dev_split.json) at the same moment, and an unchanged file is not rewritten."""
    from ragcun.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=float) + "\n", skip_unchanged=True)


def run_dir(plan: Plan, arm: Arm, seed: int) -> Path:
    return plan.results / "runs" / arm.name / (f"seed-{seed}" if arm.trained else "fixed")


def dims_run_dir(plan: Plan, dim: int, run: Path) -> Path:
    """Where a run's results at ``dim`` dims go: ``RESULTS/dims/D/`` holds a results folder of its own (plan.json,
    runs/ARM/SEED/), so ``ragcun ablation compare`` reads it like the full width's."""
    return plan.results / "dims" / str(dim) / run.relative_to(plan.results)


def candidate_file(plan: Plan, lam: float) -> Path:
    return plan.results / "selection" / f"lambda-{lam:g}.json"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it to run that part of the plan again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object; delete it to run that part of the plan again")
    return data


def _free_path(path: Path) -> Path:
    """``path``, or ``path`` with -2, -3, ... before its suffix when that is taken."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


class Stale:
    """A finished run (or lambda candidate) whose recorded settings differ from the plan's."""

    def __init__(self, path: Path, differences: list, *, model: Path | None = None, tag: str = "legacy",
                 legacy: bool = False) -> None:
        self.path, self.differences, self.model, self.tag, self.legacy = path, differences, model, tag, legacy

    def describe(self) -> str:
        what = ("predates the settings record; plan.json says it ran with " if self.legacy else "")
        return f"{self.path}: {what}{describe_differences(self.differences)}"


def apart_from_the_missing_train_file(stale: list[Stale]) -> tuple[list[Stale], set[str]]:
    """``stale`` less the one difference every finished run shows while the plan's training file is missing (its
    hash -> None), and the hashes those runs recorded: the file to write again, not a change of plan."""
    key = "run.train_file_sha256"
    kept, wanted = [], set()
    for each in stale:
        wanted.update(str(old) for name, old, _ in each.differences if name == key and old)
        rest = [d for d in each.differences if d[0] != key]
        if rest:
            kept.append(Stale(each.path, rest, model=each.model, tag=each.tag, legacy=each.legacy))
    return kept, wanted


class PlanRunner:
    def __init__(self, plan: Plan, *, data_dir: str | None = None, show: Callable[[str], None] = print,
                 only: set[str] | None = None, seeds: set[int] | None = None, rerun_changed: bool = False) -> None:
        self.plan, self.data_dir, self.show, self.only, self.seeds = plan, data_dir, show, only, seeds
        self.rerun_changed = rerun_changed
        self._warned_legacy = False
        self._datasets: dict[str, Any] = {}
        self._base_cache: dict[str, Any] = {}
        self._base_model = None
        self.train_folder: Path | None = None

    # -- data ------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        from ragcun.ablation.data import carve_dev_split, own_dev_split
        from ragcun.data.beir import find_dataset

        plan = self.plan
        plan.results.mkdir(parents=True, exist_ok=True)
        self.check_preregistration()
        if not plan.dev_split and not plan.carves_dev:  # no lambda to choose: nothing to carve or score
            self.train_folder = None if plan.train_file else find_dataset(plan.train_data, self.data_dir,
                                                                          download=False)
            self.show(f"training data: {plan.train_file or f'all of {plan.train_data} {plan.train_split}'} (every "
                      "trained arm); no dev split (no lambda to choose)")
            self.write_plan_record()
            return
        if plan.dev_split:
            folder, info = own_dev_split(plan.train_data, self.data_dir, plan.dev_split, plan.train_split)
        else:
            folder, info = carve_dev_split(plan.train_data, self.data_dir, plan.dev_fraction,
                                           self.carved_folder(), salt=plan.name, split=plan.train_split)
        self.train_folder = folder
        _atomic_json(plan.results / "dev_split.json", info)
        self.write_plan_record()
        self.show(f"dev split: {info['dev_queries']} {plan.train_data} {info['split']} queries"
                  + (f" of {info['train_queries'] + info['dev_queries']} train queries (training uses the other "
                     f"{info['train_queries']})" if not plan.dev_split else
                     " (the dataset's own; training uses "
                     + (plan.train_file if plan.train_file else f"all {info['train_queries']} train queries") + ")"))

    def carved_folder(self) -> Path:
        """Where the train split less the carved dev queries goes (its qrels/train.tsv is what is trained on)."""
        plan = self.plan
        suffix = "" if plan.train_split == "train" else f"-{plan.train_split}"
        return plan.work_dir / "data" / f"{Path(plan.train_data).name}{suffix}-train-dev"

    def trained_split(self) -> str:
        """The split of :attr:`train_folder` trained on: the carved folder's "train", else the plan's split."""
        return "train" if self.plan.carves_dev else self.plan.train_split

    def check_train_file(self) -> None:
        path = self.plan.train_file_path()
        if path is not None and not path.is_file():
            raise ValueError(f"{self.plan.path} [train] train_file: {path} does not exist (relative paths are read "
                             "from the current folder); write it first (e.g. ragcun data score ... --output FILE)")

    def write_plan_record(self) -> None:
        plan = self.plan
        record = {"name": plan.name, "plan_file": str(plan.path), "baseline": plan.baseline, "seeds": plan.seeds,
                  "datasets": plan.datasets, "arms": list(plan.arms), "train": plan.train, "dtype": plan.dtype,
                  "k": plan.k, "primary": plan.primary.family() if plan.primary else None,
                  "secondary": [str(c) for c in plan.secondary], "settings": plan.shared_settings()}
        _atomic_json(plan.results / "plan.json", record)
        for dim in plan.truncate_dims:  # each width a results folder of its own, for ragcun ablation compare
            _atomic_json(plan.results / "dims" / str(dim) / "plan.json", {**record, "truncate_dim": dim})
        self.warn_if_results_ignored()
        self.warn_if_precision_is_slow()

    def check_preregistration(self) -> None:
        """Record the primary family's hash before the first run; refuse to run a plan whose primary family
        changed since (the verdicts of a pre-registered analysis must not be chosen after seeing results)."""
        from ragcun.ablation.preregistration import check_or_record

        check_or_record(self.plan, show=self.show)

    def slow_precision(self) -> str | None:
        """A plan written on a machine with native bfloat16 runs many times slower on one without: the warning
        that says so (None: no bfloat16 in the plan, or a machine that computes it natively). The evaluation's
        ``dtype`` is checked first, then ``[train]``'s (each training run would also warn, one at a time)."""
        import torch

        from ragcun.evaluation.beir_eval import dtype_warning

        device = "cuda" if torch.cuda.is_available() else "cpu"
        # a plan's precision is part of its design: the remedy is another plan, not a flag on this one
        faster = 'a plan with dtype = "float32" (and float32 training)'
        for key, dtype in (("dtype", self.plan.dtype), ("[train] dtype", str(self.plan.train.get("dtype", "")))):
            slow = dtype_warning(dtype, device, flag=f"the plan's {key} ({self.plan.path.name})", faster=faster)
            if slow:
                return slow
        return None

    def warn_if_precision_is_slow(self) -> None:
        if (slow := self.slow_precision()) is not None:
            self.show(f"warning: {slow}")

    def warn_if_results_ignored(self) -> None:
        """Finished runs are what lets another machine resume the plan, but only once they are committed: say so
        when a .gitignore rule would leave them out of every commit."""
        from ragcun.files import ignored_by_git

        probe = run_dir(self.plan, next(iter(self.plan.arms.values())), 1) / RESULT_FILE
        rule = ignored_by_git(probe)
        if rule:
            self.show(f"warning: git ignores the finished results under {self.plan.results / 'runs'} (rule {rule}); "
                      "they will not be committed, so another machine cannot resume this plan from them: "
                      "change that rule, or choose another results folder")

    def dataset(self, name: str):
        if name not in self._datasets:
            from ragcun.ablation.data import dev_dataset
            from ragcun.data.beir import find_dataset, load_beir

            if name == "dev":
                self._datasets[name] = dev_dataset(self.train_folder, self.plan.dev_corpus_sample,
                                                   split=self.plan.dev_split or "dev")
            else:
                folder = find_dataset(name, self.data_dir, download=False)
                self._datasets[name] = load_beir(folder, self.plan.split, name=name)
        return self._datasets[name]

    # -- the base encoder's outputs, encoded once ------------------------------------------------------
    def base_model(self):
        if self._base_model is None:
            from ragcun.model import EmbeddingModel

            self._base_model = EmbeddingModel.build(self.plan.base_encoder(), "identity", "cosine")
            self._base_model.eval()
        return self._base_model

    def base_features(self, name: str):
        """Encoder outputs (identity head) for a dataset, cached in the work folder across restarts."""
        if name in self._base_cache:
            return self._base_cache[name]
        from safetensors.torch import load_file, save_file

        from ragcun.ablation.scoring import EncodedDataset, encode_dataset
        from ragcun.embedding import Embedding

        path = self.plan.work_dir / "cache" / f"base-{name}-{self.plan.dtype}.safetensors"
        ids_path = path.with_suffix(".ids.json")
        if path.is_file() and ids_path.is_file():
            tensors, ids = load_file(str(path)), json.loads(ids_path.read_text())
            encoded = EncodedDataset(ids["queries"], ids["documents"], Embedding(tensors["queries"]),
                                     Embedding(tensors["documents"]))
        else:
            model = self.base_model()
            self.show(f"encoding {name} with the base encoder (cached for every arm that reuses it)")
            encoded = encode_dataset(model, self.dataset(name), batch_size=self.plan.batch_size, dtype=self.plan.dtype,
                                     query_prefix=model.query_prefix, document_prefix=model.document_prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            # ids first, tensors last, each renamed into place: a reader sees both or neither
            _atomic_json(ids_path, {"queries": encoded.query_ids, "documents": encoded.doc_ids})
            from ragcun.files import atomic_path

            with atomic_path(path) as tmp:
                save_file({"queries": encoded.queries.mean.contiguous(),
                           "documents": encoded.documents.mean.contiguous()}, str(tmp))
        self._base_cache[name] = encoded
        return encoded

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(self, model, datasets: list[str], *, reuse_base: bool, out: Path | None, tag: str,
                 keep_per_query: bool = False, truncated: dict[int, dict] | None = None) -> dict:
        """Score ``model`` on ``datasets``; with ``reuse_base`` apply its head to the cached base outputs. With
        ``truncated`` (a test-set run of a plan with ``truncate_dims``), the same vectors are also scored cut to
        each width below the model's, their per-query files under :func:`dims_run_dir` and their report cells in
        ``truncated[D]``."""
        from ragcun.ablation.plan import metric_cutoff
        from ragcun.ablation.scoring import EncodedDataset, apply_head, encode_dataset

        cutoffs = {10, 100, self.plan.k, *(metric_cutoff(m) for m in self.plan.metrics().values())}
        k_values = sorted(cutoffs & set(range(1, self.plan.k + 1)))
        report = {}
        for name in datasets:
            t0 = time.perf_counter()
            dataset = self.dataset(name)
            if reuse_base:
                encoded = apply_head(model.head, self.base_features(name))
            else:
                model.eval()
                encoded = encode_dataset(model, dataset, batch_size=self.plan.batch_size, dtype=self.plan.dtype,
                                         query_prefix=model.query_prefix, document_prefix=model.document_prefix)
            report[name] = self._score(model.distance, encoded, name, out, tag, k_values, keep_per_query, t0)
            for dim in (self.plan.truncate_dims if truncated is not None else []):
                if dim < encoded.queries.mean.shape[-1]:  # a prefix as wide as the vector is the vector itself
                    cut = EncodedDataset(encoded.query_ids, encoded.doc_ids, encoded.queries.truncate(dim),
                                         encoded.documents.truncate(dim))
                    truncated.setdefault(dim, {})[name] = self._score(
                        model.distance, cut, name, dims_run_dir(self.plan, dim, out), f"{tag}-dim{dim}", k_values,
                        False, time.perf_counter(), label=f"{dim} dims")
        return report

    def _score(self, distance, encoded, name: str, out: Path | None, tag: str, k_values: list[int],
               keep_per_query: bool, t0: float, label: str = "") -> dict:
        """One dataset's report cell from its vectors (and, with ``out``, its per-query file and TREC run)."""
        from ragcun.ablation.scoring import score
        from ragcun.evaluation.run_files import format_trec_run

        scored = score(distance, encoded, self.dataset(name), k=self.plan.k, k_values=k_values,
                       isotropy_sample=self.plan.isotropy_sample)
        if out is not None:
            _atomic_json(out / f"{name}.per_query.json", scored["per_query"])
            trec = self.plan.work_dir / "trec" / out.relative_to(self.plan.results) / f"{name}.trec"
            trec.parent.mkdir(parents=True, exist_ok=True)
            trec.write_text(format_trec_run(scored["results"], tag))
        cell = {"metrics": {m: v for m, v in scored["metrics"].items()
                            if m.split("@")[0] in ("NDCG", "MRR", "Recall", "MAP", "P")},
                "isotropy": scored["isotropy"], "counts": scored["counts"], "eval_s": time.perf_counter() - t0}
        if keep_per_query:
            cell["per_query"] = scored["per_query"]
        shown = "NDCG@10" if "NDCG@10" in scored["metrics"] else next(iter(self.plan.metrics().values()))
        self.show(f"  {name}{f' ({label})' if label else ''}: {shown} {scored['metrics'][shown]:.4f}  SIGReg "
                  f"{scored['isotropy']['sigreg_raw']:.2f} (floor {scored['isotropy']['sigreg_gaussian_floor']:.2f})"
                  f"  IsoScore {scored['isotropy']['isoscore']:.3f}")
        return cell

    # -- training --------------------------------------------------------------------------------------
    def train_config(self, arm: Arm, seed: int, lam: float | None):
        from ragcun.spec import settings_from_options
        from ragcun.training.config import TrainConfig

        values = dict(self.plan.train)
        values.update({"output_dir": str(self.model_folder(arm, seed, lam)),
                       "train_data": self.plan.train_file or f"beir:{self.train_folder}:{self.trained_split()}",
                       "seed": seed,
                       "loss": arm.loss_for(lam),
                       "freeze_encoder": arm.freeze_encoder, "show_progress": False,
                       "settings": settings_from_options([*self.plan.train_set, *arm.set])})
        for key in ("head_lr", "head", "encoder", "distance"):
            if getattr(arm, key) is not None:
                values[key] = getattr(arm, key)
        return TrainConfig.from_dict(values, f"{self.plan.path} [arms.{arm.name}]")

    def trained_model(self, arm: Arm, seed: int, lam: float | None):
        """Train (or finish training) one run and load its final model; returns (model, info)."""
        from ragcun.model import CONFIG_FILE, load
        from ragcun.training import checkpoint as ckpt
        from ragcun.training.loop import train

        config = self.train_config(arm, seed, lam)
        folder = Path(config.output_dir)
        info: dict[str, Any] = {"loss": config.loss, "seed": seed, "lambda": lam,
                                "freeze_encoder": config.freeze_encoder,
                                "batch_size": config.batch_size, "global_batch": config.batch_size * config.grad_accum,
                                "lr": config.lr, "head_lr": config.head_lr, "dtype": config.dtype,
                                "settings": config.settings}
        from ragcun.run_lock import acquire

        with acquire(folder, what="ragcun ablation run", label=f"the ablation run {folder}"):  # one writer
            self.check_model_folder(folder, config)
            if not (folder / CONFIG_FILE).is_file():
                resume = ckpt.latest_checkpoint(folder) is not None
                self.show(f"{arm.name} seed {seed}: training ({config.loss}"
                          f"{', frozen encoder' if arm.freeze_encoder else ''}) -> {folder}"
                          + (" (resuming)" if resume else ""))
                t0 = time.perf_counter()
                result = train(config, resume=resume)
                if result.interrupted:
                    raise KeyboardInterrupt
                info.update({"train_s": time.perf_counter() - t0, "steps": result.step,
                             "pairs_per_s": result.pairs_per_s})
            model = load(folder)
        trainable = sum(p.numel() for n, p in model.named_parameters()
                        if not (config.freeze_encoder and n.startswith("encoder.")))
        info["trainable_params"] = trainable
        info["calibration"] = _calibration(folder)
        info.setdefault("steps", _final_step(folder))
        info["final_train"] = _final_terms(folder)
        return model, info

    def check_model_folder(self, folder: Path, config) -> None:
        """A model folder (finished or part trained) is reused only when its train_config.json is the run the
        plan gives now; otherwise refused, naming each setting, or (``rerun_changed``) set aside under
        WORK/stale/ and trained again. Call it holding the folder's lock."""
        listed = self.changed_model(folder, config)
        if listed is None:
            return
        moved = self._set_aside_model(folder)
        self.show(f"{folder}: trained with other settings ({listed}): set aside as {moved}, training it again")

    def _set_aside_model(self, folder: Path) -> Path:
        """Move a model folder's contents to WORK/stale/models/ARM/NAME[-N] (the folder, and its lock, stay)."""
        from ragcun.run_lock import LOCK_FILE, acquire

        models = self.plan.work_dir / "models"
        try:
            relative = folder.relative_to(models)
        except ValueError:
            relative = Path(folder.name)
        target = _free_path(self.plan.work_dir / STALE / "models" / relative)
        with acquire(folder, what="ragcun ablation run", label=f"the ablation run {folder}"):
            target.mkdir(parents=True)
            for entry in sorted(folder.iterdir()):
                if entry.name != LOCK_FILE:
                    entry.rename(target / entry.name)
        return target

    # -- finished runs against the plan ------------------------------------------------------------------
    def known_lambda(self) -> float | None:
        """The chosen lambda when selection.json holds this plan's selection (else None: not chosen yet)."""
        path = self.plan.results / "selection.json"
        if not self.plan.select_arm or not path.is_file():
            return None
        chosen = _read_json(path)
        if self._selection_reusable(chosen):
            return float(chosen["chosen"])
        return None

    def _selection_reusable(self, chosen: dict) -> bool:
        plan = self.plan
        recorded = chosen.get("settings")
        return (chosen.get("values") == plan.select_values and "chosen" in chosen
                and (recorded is None or not settings_differences(recorded, plan.candidate_settings(None))))

    def stale_runs(self, lam: float | None = None) -> tuple[list[Stale], list[Path]]:
        """The finished runs and lambda candidates whose recorded settings differ from the plan's, and those that
        predate the settings record (accepted unless plan.json's settings differ from the plan's: then they are
        stale too). ``lam``: the chosen lambda (default: selection.json's, when it holds this plan's selection;
        unknown, the lambda of the selected arm's runs is not compared)."""
        plan = self.plan
        lam = self.known_lambda() if lam is None else lam
        stale: list[Stale] = []
        legacy: list[tuple[Path, Path | None]] = []

        def check(path: Path, planned: dict, model: Path | None, ignore: tuple[str, ...] = ()) -> None:
            recorded = _read_json(path).get("settings")
            if recorded is None:
                legacy.append((path, model))
                return
            differences = settings_differences(recorded, planned, ignore)
            if differences:
                trains = any(k.startswith("run.") and not k.startswith(("run.select.", "run.lambda"))
                             for k, _, _ in differences)
                stale.append(Stale(path, differences, model=model if trains else None, tag=settings_hash(recorded)))

        for arm, seed in plan.order():
            path = run_dir(plan, arm, seed) / RESULT_FILE
            if path.is_file():
                unknown = arm.selects_lambda and lam is None
                model = self.model_folder(arm, seed, lam) if arm.trained and not unknown else None
                check(path, plan.run_settings(arm, seed, lam), model, ("run.lambda",) if unknown else ())
        if plan.select_arm:
            arm = plan.arms[plan.select_arm]
            for value in plan.select_values:
                path = candidate_file(plan, value)
                if path.is_file():
                    check(path, plan.candidate_settings(value), self.model_folder(arm, plan.seeds_of(arm)[0], value))
        differences = self.plan_json_differences() if legacy else []
        if differences:  # what plan.json records (what the legacy runs ran with) is not the plan any more
            trains = any(k.split(".")[0] in ("data", "dev", "train", "set") or k.startswith("plan.json train")
                         for k, _, _ in differences)
            stale += [Stale(path, differences, model=model if trains else None, legacy=True)
                      for path, model in legacy]
            legacy = []
        return stale, [path for path, _ in legacy]

    def model_folder(self, arm: Arm, seed: int, lam: float | None) -> Path:
        suffix = f"-lambda-{lam:g}" if arm.selects_lambda else ""
        return self.plan.work_dir / "models" / arm.name / f"seed-{seed}{suffix}"

    def plan_json_differences(self) -> list:
        """How the plan's shared settings differ from those plan.json records (what the runs written before the
        settings record ran with); [] without plan.json."""
        from ragcun.ablation.plan import NOT_RESULT_SETTINGS

        path = self.plan.results / "plan.json"
        if not path.is_file():
            return []
        old = _read_json(path)
        if "settings" in old:
            return settings_differences(old["settings"], self.plan.shared_settings())
        # a plan.json written before the settings record: the result-defining fields it has
        recorded = {"train": {k: v for k, v in (old.get("train") or {}).items() if k not in NOT_RESULT_SETTINGS},
                    "dtype": old.get("dtype"), "k": old.get("k"), "datasets": old.get("datasets")}
        planned = {"train": self.plan.train_settings(), "dtype": self.plan.dtype, "k": self.plan.k,
                   "datasets": self.plan.datasets}
        return [(f"plan.json {k}", a, b) for k, a, b in settings_differences(recorded, planned)]

    def check_finished(self, lam: float | None = None) -> None:
        """Refuse (or, with ``rerun_changed``, set aside to run again) every finished run whose settings differ
        from the plan's; say once that runs without a settings record could not be checked. Nothing is written
        unless ``rerun_changed``."""
        stale, legacy = self.stale_runs(lam)
        if legacy and not self._warned_legacy:
            self._warned_legacy = True
            shown = ", ".join(str(p.parent.relative_to(self.plan.results)) if p.name == RESULT_FILE else p.name
                              for p in legacy[:3])
            self.show(f"warning: {len(legacy)} finished result(s) in {self.plan.results} predate the settings record "
                      f"({shown}{', ...' if len(legacy) > 3 else ''}): they cannot be checked against the plan, run "
                      "by run, and are reused as they are")
        if not stale:
            return
        if not self.rerun_changed:
            raise ValueError(self.refusal(stale))
        listed = "\n".join(f"  {s.describe()}" for s in stale)
        self.show(f"--rerun-changed: {len(stale)} finished run(s) differ from the plan; setting them aside to run "
                  f"again:\n{listed}")
        selection_changed = False
        for each in stale:
            self._set_aside_result(each)
            selection_changed |= each.path.parent.name == "selection"
        if selection_changed and (self.plan.results / "selection.json").is_file():
            target = _free_path(self.plan.results / STALE / "selection.json")
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.plan.results / "selection.json").rename(target)

    def refusal(self, stale: list[Stale]) -> str:
        listed = "\n".join(f"  {s.describe()}" for s in stale)
        return (f"{self.plan.path}: {len(stale)} finished run(s) were trained or evaluated with other settings than "
                f"the plan now gives (old -> new); reusing them would mix two experiments in one table:\n{listed}\n"
                "Revert the plan to the settings they ran with, or run it again with --rerun-changed to set those "
                f"runs aside (under {self.plan.results / STALE}, their models under {self.plan.work_dir / STALE}) and "
                "run them with the plan's settings.")

    def _set_aside_result(self, stale: Stale) -> None:
        results = self.plan.results
        if stale.path.name == RESULT_FILE:  # the run's folder: result.json and the per-query files with it
            folder = stale.path.parent
            # its truncated widths' folders (dims/D/runs/...) go first: they belong to the run set aside
            for view in sorted(results.glob(f"dims/*/{folder.relative_to(results)}")):
                into = _free_path(results / STALE / view.relative_to(results).with_name(f"{view.name}-{stale.tag}"))
                into.parent.mkdir(parents=True, exist_ok=True)
                view.rename(into)
            target = _free_path(results / STALE / folder.relative_to(results).with_name(f"{folder.name}-{stale.tag}"))
            target.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(target)
            self.show(f"  {folder} -> {target}")
        else:  # a lambda candidate's file
            target = _free_path(results / STALE / "selection" / f"{stale.path.stem}-{stale.tag}.json")
            target.parent.mkdir(parents=True, exist_ok=True)
            stale.path.rename(target)
            self.show(f"  {stale.path} -> {target}")
        if stale.model is not None and stale.model.is_dir() and any(stale.model.iterdir()):
            self.show(f"  {stale.model} -> {self._set_aside_model(stale.model)}")

    # -- the plan --------------------------------------------------------------------------------------
    def select_lambda(self) -> float | None:
        """Train the selected arm once per candidate (first seed) and keep the best dev score; a tie goes to the
        weaker regularizer. A new selection must include 0, so that "no regularizer" can win; each candidate's
        dev score is recorded with its standard error over dev queries, and its difference from 0 with the
        paired standard error."""
        import numpy as np

        plan = self.plan
        if not plan.select_arm:
            return None
        path = plan.results / "selection.json"
        if path.is_file():
            chosen = _read_json(path)
            if self._selection_reusable(chosen):
                return float(chosen["chosen"])
        if 0.0 not in plan.select_values:
            raise ValueError(f"{plan.path} [select]: values must include 0 so that the regularizer can lose to no "
                             f"regularizer (got {', '.join(f'{v:g}' for v in plan.select_values)})")
        arm, seed = plan.arms[plan.select_arm], plan.seeds_of(plan.arms[plan.select_arm])[0]
        scores, per_query, global_batch = {}, {}, None
        for lam in plan.select_values:
            step_file = candidate_file(plan, lam)
            if step_file.is_file():  # its settings were checked before anything ran (check_finished)
                saved = _read_json(step_file)
                scores[lam] = saved["dev"][plan.dev_metric]
                per_query[lam] = saved.get("per_query")
                global_batch = saved.get("train", {}).get("global_batch", global_batch)
                continue
            model, info = self.trained_model(arm, seed, lam)
            self.show(f"{arm.name} lambda {lam:g}: dev evaluation")
            dev = self.evaluate(model, ["dev"], reuse_base=False, out=None, tag="dev", keep_per_query=True)["dev"]
            scores[lam], per_query[lam] = dev["metrics"][plan.dev_metric], dev["per_query"]
            global_batch = info.get("global_batch")
            settings = plan.candidate_settings(lam)
            _atomic_json(step_file, {"lambda": lam, "dev": dev["metrics"], "isotropy": dev["isotropy"], "train": info,
                                     "per_query": {q: m[plan.dev_metric] for q, m in dev["per_query"].items()},
                                     "settings": settings, "settings_hash": settings_hash(settings)})
            per_query[lam] = {q: m[plan.dev_metric] for q, m in dev["per_query"].items()}
        best = max(scores.values())
        chosen = min(lam for lam, s in scores.items() if s == best)  # a tie goes to the weaker regularizer
        detail = {}
        for lam, s in scores.items():
            row = {"score": s}
            values = per_query.get(lam)
            if values:
                v = np.array(list(values.values()), dtype=np.float64)
                row.update(se=float(v.std(ddof=1) / np.sqrt(len(v))), queries=len(v))
                zero = per_query.get(0.0)
                if zero and lam != 0.0:
                    qids = sorted(set(values) & set(zero))
                    d = np.array([values[q] - zero[q] for q in qids])
                    row.update(diff_vs_0=float(d.mean()), se_diff_vs_0=float(d.std(ddof=1) / np.sqrt(len(d))))
            if global_batch:
                row["lambda_x_N"] = lam * global_batch
            detail[f"{lam:g}"] = row
        _atomic_json(path, {"arm": arm.name, "seed": seed, "metric": plan.dev_metric, "values": plan.select_values,
                            "dev": {f"{lam:g}": s for lam, s in scores.items()}, "chosen": chosen,
                            "global_batch": global_batch, "candidates": detail,
                            "rule": "the best mean dev score; a tie goes to the smaller lambda",
                            "settings": plan.candidate_settings(None)})
        self.show(f"lambda chosen on dev ({plan.dev_metric}): {chosen:g}  " + "  ".join(
            f"{k}: {r['score']:.4f}" + (f" ± {r['se']:.4f}" if "se" in r else "") for k, r in detail.items()))
        return chosen

    def dry_run(self) -> list[str]:
        """Check the whole plan without training or writing anything: the datasets and splits exist, every
        trained run's settings resolve and validate and name registered components, and the pre-registration
        agrees; returns the lines describing what a real run would do, in order."""
        from ragcun.ablation.preregistration import changed_fields, read
        from ragcun.components import check_settings, components_in_use

        plan = self.plan
        lines = [f"plan {plan.name} ({plan.path}): {len(plan.arms)} arm(s), results {plan.results}, "
                 f"work {plan.work_dir}"]
        if (slow := self.slow_precision()) is not None:  # before hours are spent, not only once they start
            lines.append(f"warning: {slow}")
        lines += self.describe_data()
        if plan.primary is not None:
            recorded = read(plan.results)
            family = plan.primary.family()
            if recorded is None:
                lines.append(f"primary analysis: would be pre-registered now (hash {plan.primary.family_hash()}): "
                             + "; ".join(str(c) for c in plan.primary.comparisons))
            elif changed_fields(recorded["family"], family):
                raise ValueError(f"{plan.path} [primary]: differs from the recorded "
                                 f"{plan.results}/preregistration.json "
                                 f"({', '.join(changed_fields(recorded['family'], family))})")
            else:
                lines.append(f"primary analysis: as recorded (hash {recorded['hash']})")
        stale, legacy = self.stale_runs()
        if plan.train_file and plan.train_file_sha256() is None:  # the real run refuses to start until it is written
            stale, wanted = apart_from_the_missing_train_file(stale)
            if wanted:
                lines.append(f"the finished runs were trained on {plan.train_file} with SHA-256 "
                             f"{', '.join(sorted(wanted))}: write that file again, byte for byte, to continue them")
        if stale and not self.rerun_changed:
            raise ValueError(self.refusal(stale))
        for each in stale:
            lines.append(f"would set aside and run again (--rerun-changed): {each.describe()}")
        if legacy:
            lines.append(f"{len(legacy)} finished result(s) predate the settings record: reused unchecked")
        lambdas = plan.select_values if plan.select_arm else []
        in_use: dict[str, set[str]] = {}  # a shared --set must address a component of some arm, as in training
        settings = []
        if lambdas:
            first_seed = plan.seeds_of(plan.arms[plan.select_arm])[0]
            lines.append(f"lambda selection: arm {plan.select_arm}, seed {first_seed}, "
                         f"candidates {', '.join(f'{v:g}' for v in lambdas)}"
                         + ("" if 0.0 in lambdas else "  (refused when it runs: 0 must be a candidate)"))
        for arm, seed in plan.order():
            done = (run_dir(plan, arm, seed) / RESULT_FILE).is_file()
            if not arm.trained:
                lines.append(f"  {arm.name}: training-free ({arm.transform}, {arm.distance or 'cosine'})"
                             + ("  [finished]" if done else ""))
                continue
            for lam in (lambdas if arm.selects_lambda else [None]):
                config = self.train_config(arm, seed, lam).validate()
                check_settings(config.settings)
                settings.append(config.settings)
                for kind, names in components_in_use({"encoder": config.encoder, "head": config.head,
                                                      "distance": config.distance, "loss": config.loss}).items():
                    in_use.setdefault(kind, set()).update(names)
                if arm.selects_lambda and seed != plan.seeds_of(arm)[0]:
                    lines.append(f"  {arm.name} seed {seed}: {arm.loss} with the chosen lambda"
                                 + ("  [finished]" if done else ""))
                    break
                state = "finished" if done else self.dry_run_model_state(config)
                lines.append(f"  {arm.name} seed {seed}: {config.loss} ({config.encoder}, {config.head}, "
                             f"{config.distance}; {config.steps or config.epochs} "
                             f"{'steps' if config.steps else 'epochs'} "
                             f"x {config.batch_size * config.grad_accum}, lr {config.lr:g}, {config.dtype})"
                             + (f"  [{state}]" if state else ""))
        for each in settings:
            check_settings(each, {kind: sorted(names) for kind, names in in_use.items()})
        return lines

    def changed_model(self, folder: Path, config) -> str | None:
        """The settings ``folder``'s model was trained with that differ from ``config``, listed (None: none, or no
        model there yet); refused, naming them, unless ``rerun_changed``. Reads only: the real run and the dry run
        ask the same question."""
        listed = _model_differences(folder, config)
        if listed is not None and not self.rerun_changed:
            raise ValueError(f"{folder}: this model was trained with other settings ({listed}) than the plan "
                             f"{self.plan.path} now gives; revert the plan to them, or run it with --rerun-changed "
                             "to set this model aside (under the work folder's stale/) and train it again")
        return listed

    def dry_run_model_state(self, config) -> str:
        """What the real run will do with the run's model folder (the dry run's note, "" for nothing there yet);
        a folder trained with other settings is refused as the real run would refuse it."""
        folder = Path(config.output_dir)
        listed = self.changed_model(folder, config)
        if listed is not None:
            return f"would set aside and train again: trained with other settings ({listed})"
        return trained_state(folder)

    def describe_data(self) -> list[str]:
        """The dry run's lines about the data (checked to exist, nothing written): what is trained on, where
        lambda is chosen, and the evaluated splits."""
        from ragcun.ablation.data import own_dev_split
        from ragcun.data.beir import available_splits, find_dataset

        plan = self.plan
        lines = []
        if plan.train_file:
            path = plan.train_file_path()
            lines.append(f"training data: {plan.train_file} for every trained arm ("
                         + (f"{path.stat().st_size / 2**20:.1f} MiB, sha256 {plan.train_file_sha256()[:16]}"
                            if path.is_file() else "MISSING: write it before running") + ")")
        if plan.dev_split:
            self.train_folder, info = own_dev_split(plan.train_data, self.data_dir, plan.dev_split, plan.train_split)
            if not plan.train_file:
                lines.append(f"training data: {plan.train_data} {plan.train_split} ({info['train_queries']} "
                             + (f"queries); lambda chosen on its own {plan.dev_split} split ({info['dev_queries']} "
                                "queries)" if plan.select_arm else
                                f"queries, all of them; its {plan.dev_split} split is not used: no lambda to choose)"))
            elif plan.select_arm:
                lines.append(f"lambda chosen on {plan.train_data}'s {plan.dev_split} split ({info['dev_queries']} "
                             "queries)")
        elif plan.train_file:
            self.train_folder = None
        else:
            source = find_dataset(plan.train_data, self.data_dir, download=False)
            if plan.train_split not in available_splits(source):
                raise ValueError(f"{plan.path} [train]: {source} has no {plan.train_split} split")
            if plan.carves_dev:
                self.train_folder = self.carved_folder()
                lines.append(f"training data: {plan.train_data} {plan.train_split} minus a {plan.dev_fraction:g} "
                             "dev split carved from it")
            else:
                self.train_folder = source
                lines.append(f"training data: all of {plan.train_data} {plan.train_split} (no lambda to choose, "
                             "so no dev split)")
        for name in plan.datasets:
            folder = find_dataset(name, self.data_dir, download=False)
            if plan.split not in available_splits(folder):
                raise ValueError(f"{plan.path}: dataset {name!r} ({folder}) has no {plan.split} split")
        lines.append(f"{'test collections' if plan.split == 'test' else f'evaluated on their {plan.split} split'}: "
                     f"{', '.join(plan.datasets)} ({plan.split} splits present)"
                     + (f"; also scored at {', '.join(map(str, plan.truncate_dims))} dims (the vectors cut to a "
                        "prefix; results under dims/D/)" if plan.truncate_dims else ""))
        return lines

    def todo(self) -> list[tuple[Arm, int]]:
        """The (arm, seed) runs of the plan not finished yet, in run order (``only`` / ``seeds`` applied)."""
        return [(arm, seed) for arm, seed in self.plan.order()
                if (not self.only or arm.name in self.only)
                and (not self.seeds or not arm.trained or seed in self.seeds)
                and not (run_dir(self.plan, arm, seed) / RESULT_FILE).is_file()]

    def run(self, *, parallel: str = "no", slots: int | None = None) -> dict[str, Any]:
        """Every unfinished run: the lambda selection on the dev split first (before any test-set run), then the
        training-free arms, then the trained runs; with ``parallel`` those go side by side, one process each (one
        GPU each on a GPU node)."""
        plan = self.plan
        t_start = time.perf_counter()
        resolve_slots(parallel, slots)  # bad --parallel or --slots: refused before anything runs
        self.check_train_file()
        self.check_finished()  # before anything is written: a plan that no longer matches its results stops here
        self.prepare()
        todo = self.todo()
        if any(a.selects_lambda for a, _ in todo):
            self.check_finished(self.select_lambda())  # the selected arm's runs against the lambda chosen now
            todo = self.todo()
        done = []
        for arm, seed in [(a, s) for a, s in todo if not a.trained]:
            done.append(self.run_one(arm, seed))
        trained = [(a, s) for a, s in todo if a.trained]
        processes = resolve_slots(parallel, slots, len(trained))
        if processes > 1:
            done += run_side_by_side(self, trained, processes)
        else:
            for arm, seed in trained:
                done.append(self.run_one(arm, seed))
        skipped = [name for a, s in plan.order() if (run_dir(plan, a, s) / RESULT_FILE).is_file()
                   and (name := f"{a.name}/{run_dir(plan, a, s).name}") not in done]
        summary = {"finished_now": done, "skipped": skipped, "wall_s": time.perf_counter() - t_start,
                   "processes": processes}
        with (plan.results / "run_log.jsonl").open("a") as fh:
            fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary}) + "\n")
        return summary

    def run_one(self, arm: Arm, seed: int) -> str:
        """Train (if needed), evaluate and write one run's result.json; returns its name."""
        plan = self.plan
        out = run_dir(plan, arm, seed)
        t0 = time.perf_counter()
        lam = None
        truncated: dict[int, dict] = {}
        if arm.trained:
            lam = self.select_lambda() if arm.selects_lambda else None
            model, info = self.trained_model(arm, seed, lam)
            self.show(f"{arm.name} seed {seed}: evaluating on {', '.join(plan.datasets)}")
            report = self.evaluate(model, plan.datasets, reuse_base=arm.freeze_encoder and not arm.encoder,
                                   out=out, tag=f"{arm.name}-{seed}", truncated=truncated)
        else:
            model, info = self.transformed_model(arm)
            report = self.evaluate_transform(arm, model, out, truncated)
        settings = plan.run_settings(arm, seed, lam)
        record = {"arm": arm.name, "what": arm.what, "seed": seed, "trained": arm.trained, "info": info,
                  "wall_s": time.perf_counter() - t0}
        # each width's result first: the full width's result.json marks the run finished, so it comes last
        for dim, cells in truncated.items():
            at_dim = canonical({**settings, "evaluation": {**settings["evaluation"], "truncate_dim": dim}})
            _atomic_json(dims_run_dir(plan, dim, out) / RESULT_FILE, {
                **record, "datasets": cells, "settings": at_dim, "settings_hash": settings_hash(at_dim)})
        _atomic_json(out / RESULT_FILE, {**record, "datasets": report, "settings": settings,
                                         "settings_hash": settings_hash(settings)})
        return f"{arm.name}/{out.name}"

    # -- training-free arms ----------------------------------------------------------------------------
    def transformed_model(self, arm: Arm):
        from ragcun.model import EmbeddingModel

        head = {"none": "identity", "center": "center", "whiten": "whiten"}[arm.transform]
        settings = ({"head": {"whiten": {"dim": arm.whiten_dim}}} if arm.transform == "whiten" and arm.whiten_dim
                    else None)
        base = self.base_model()
        model = EmbeddingModel.build(self.plan.base_encoder(), head, arm.distance or "cosine", settings)
        model.encoder = base.encoder  # the same weights: share them instead of holding two copies
        return model, {"transform": arm.transform, "distance": arm.distance or "cosine", "trainable_params": 0,
                       "fitted_on": "the corpus being searched (each dataset's own)"}

    def evaluate_transform(self, arm: Arm, model, out: Path, truncated: dict[int, dict] | None = None) -> dict:
        from ragcun.evaluation.pipeline import fit_head

        report = {}
        for name in self.plan.datasets:
            if hasattr(model.head, "fit"):  # on every cached vector of the corpus it searches
                fit_head(model, self.dataset(name), encoded=self.base_features(name))
            report.update(self.evaluate(model, [name], reuse_base=True, out=out, tag=arm.name, truncated=truncated))
        return report


def _records(folder: Path) -> list[dict]:
    """The run's metrics.jsonl records (the one reader: a torn last line is dropped, a corrupt middle line is an
    error naming the file and line, since the calibration record read from it goes into the result)."""
    from ragcun.training.logs import read_metrics

    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [record for _, record in read_metrics(path, hint="fix or remove that line, or delete the run folder "
                                                          "to train it again")]


def _model_differences(folder: Path, config) -> str | None:
    """How the settings a model folder was trained with (its train_config.json) differ from ``config``, listed
    for a message; None when they agree or nothing was trained there yet. Reads only."""
    from ragcun.training.config import CONFIG_FILE as TRAIN_CONFIG
    from ragcun.training.config import TrainConfig

    if not (folder / TRAIN_CONFIG).is_file():
        return None
    saved = TrainConfig.load(folder)
    differences = saved.differences(config, ignore=(*MODEL_IGNORES, "settings"))
    given = [{kind: {name: params for name, params in names.items() if params}
              for kind, names in c.settings.items() if any(names.values())} for c in (saved, config)]
    if given[0] != given[1]:  # component settings, kinds without any left out
        differences["settings"] = tuple(given)
    if not differences:
        return None
    return "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(differences.items()))


def trained_state(folder: Path) -> str:
    """How far a model folder trained with the plan's settings got (reads only): "" when nothing is there yet,
    "model trained: evaluation only", or "part trained: resumes from step N"."""
    from ragcun.model import CONFIG_FILE
    from ragcun.training import checkpoint as ckpt

    if (folder / CONFIG_FILE).is_file():
        return "model trained: evaluation only"
    latest = ckpt.latest_checkpoint(folder)
    return f"part trained: resumes from step {latest.step}" if latest is not None else ""


def _calibration(folder: Path) -> dict | None:
    return next((r["calibration"] for r in _records(folder) if "calibration" in r), None)


def _final_step(folder: Path) -> int | None:
    return next((r["step"] for r in reversed(_records(folder)) if "final" in r), None)


def _final_terms(folder: Path) -> dict[str, float]:
    """The last logged training loss and its terms (weighted, as logged)."""
    last = next((r for r in reversed(_records(folder)) if "loss" in r), None)
    return {"loss": last["loss"], **last.get("terms", {})} if last else {}


def resolve_slots(parallel: str, slots: int | None, runs: int | None = None) -> int:
    """How many of ``runs`` runs (``None``: not known yet) go at once (:func:`ragcun.launch.placement`, the one
    meaning of ``--parallel``; each run one GPU): 1 is one after another, in this process."""
    from ragcun.launch import slot_count

    return slot_count(runs, parallel, slots, max_gpus_per_job=1)


def run_side_by_side(runner: PlanRunner, runs: list[tuple[Arm, int]], processes: int) -> list[str]:
    """Each run in its own ``ragcun ablation run --only ARM --seeds S`` process, ``processes`` at a time
    (:func:`ragcun.launch.run_jobs`: one GPU each on a GPU node, else the cores shared out); the finished ones
    write their result.json themselves, so an interrupted batch resumes like any plan.

    A worker trains and then evaluates and writes the result, so it is this command again for one run, not
    ``ragcun train --config FILE``: the plan's evaluation needs the plan, its dev split and cached encodings."""
    import sys

    from ragcun.launch import Job, gpu_count, placement, run_jobs, where

    plan = runner.plan
    groups = placement(len(runs), gpu_count(), "yes", processes, max_gpus_per_job=1)
    logs = plan.work_dir / "logs"
    common = ["--results", str(plan.results), "--work-dir", str(plan.work_dir), "--parallel", "no", "--no-compare",
              *(["--data-dir", runner.data_dir] if runner.data_dir else []),
              *(["--rerun-changed"] if getattr(runner, "rerun_changed", False) else [])]
    jobs = {f"{arm.name}/seed-{seed}": (arm.name, seed) for arm, seed in runs}

    def started(job, devices, threads) -> None:
        arm, seed = jobs[job.name]
        runner.show(f"{arm} seed {seed}: started in its own process ({where(devices, threads)}); log {job.log}")

    def finished(job, code) -> None:
        arm, seed = jobs[job.name]
        runner.show(f"{arm} seed {seed}: " + ("finished" if code == 0 else f"failed (exit {code}), see {job.log}"))

    # the workers die with this process: a signal or an error here stops them (they save a checkpoint), and the
    # kernel stops them if this process is killed
    codes = run_jobs([Job(name, [sys.executable, "-m", "ragcun", "ablation", "run", str(plan.path), "--only", arm,
                                 "--seeds", str(seed), *common], log=logs / f"{arm}-seed-{seed}.log")
                      for name, (arm, seed) in jobs.items()], groups, on_start=started, on_finish=finished,
                     poll_s=0.5)
    failed = [name for name, code in codes.items() if code]
    if failed:
        raise ValueError("ablation: run(s) failed: " + "; ".join(
            f"{jobs[n][0]} seed {jobs[n][1]} (log {logs / (jobs[n][0] + '-seed-' + str(jobs[n][1]) + '.log')})"
            for n in failed) + "; the finished ones are kept: run the plan again to retry the rest")
    return [name for name, code in codes.items() if code == 0]


def run_plan(plan: Plan, *, data_dir: str | None = None, show=print, only: set[str] | None = None,
             seeds: set[int] | None = None, parallel: str = "no", slots: int | None = None,
             rerun_changed: bool = False) -> dict[str, Any]:
    """Run every arm x seed of ``plan`` not finished yet (see the module docstring)."""
    return PlanRunner(plan, data_dir=data_dir, show=show, only=only, seeds=seeds,
                      rerun_changed=rerun_changed).run(parallel=parallel, slots=slots)
