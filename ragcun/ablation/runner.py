"""Run an ablation plan: every arm x seed, one after another, skipping what is already finished.

What "finished" means is a file in the results folder (``runs/ARM/seed-S/result.json``), written last and
atomically; models and TREC runs go to the work folder. So an interrupted plan resumes where it stopped, and
on another machine too once the finished results are committed (a half-trained model in the work folder
resumes from its checkpoint; a missing one is trained again).

Order: the training-free arms (they only need the base encoder's outputs, encoded once per dataset and
cached); then the lambda selection on the dev split (one training per candidate, first seed); then the
baseline and the selected arm seed by seed, then the other arms. With ``parallel`` (a GPU node), the trained
runs after the selection go side by side, one process per GPU, each writing its own result.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from ragcun.ablation.plan import Arm, Plan

RESULT_FILE = "result.json"


def _atomic_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary file of this process, then rename: runs side by side may write the same
    file (plan.json, dev_split.json) at the same moment, and an unchanged file is not rewritten."""
    from ragcun.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=float) + "\n", skip_unchanged=True)


def run_dir(plan: Plan, arm: Arm, seed: int) -> Path:
    return plan.results / "runs" / arm.name / (f"seed-{seed}" if arm.trained else "fixed")


class PlanRunner:
    def __init__(self, plan: Plan, *, data_dir: str | None = None, show: Callable[[str], None] = print,
                 only: set[str] | None = None, seeds: set[int] | None = None) -> None:
        self.plan, self.data_dir, self.show, self.only, self.seeds = plan, data_dir, show, only, seeds
        self._datasets: dict[str, Any] = {}
        self._base_cache: dict[str, Any] = {}
        self._base_model = None
        self.train_folder: Path | None = None

    # -- data ------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        from ragcun.ablation.data import carve_dev_split, own_dev_split

        plan = self.plan
        plan.results.mkdir(parents=True, exist_ok=True)
        self.check_preregistration()
        if plan.dev_split:
            folder, info = own_dev_split(plan.train_data, self.data_dir, plan.dev_split)
        else:
            folder, info = carve_dev_split(plan.train_data, self.data_dir, plan.dev_fraction,
                                           plan.work_dir / "data" / f"{Path(plan.train_data).name}-train-dev",
                                           salt=plan.name)
        self.train_folder = folder
        _atomic_json(plan.results / "dev_split.json", info)
        _atomic_json(plan.results / "plan.json", {"name": plan.name, "plan_file": str(plan.path),
                                                  "baseline": plan.baseline, "seeds": plan.seeds,
                                                  "datasets": plan.datasets, "arms": list(plan.arms),
                                                  "train": plan.train, "dtype": plan.dtype, "k": plan.k,
                                                  "primary": plan.primary.family() if plan.primary else None,
                                                  "secondary": [str(c) for c in plan.secondary]})
        self.show(f"dev split: {info['dev_queries']} {plan.train_data} {info['split']} queries"
                  + (f" of {info['train_queries'] + info['dev_queries']} train queries (training uses the other "
                     f"{info['train_queries']})" if not plan.dev_split else
                     f" (the dataset's own; training uses all {info['train_queries']} train queries)"))
        self.warn_if_results_ignored()
        self.warn_if_precision_is_slow()

    def check_preregistration(self) -> None:
        """Record the primary family's hash before the first run; refuse to run a plan whose primary family
        changed since (the verdicts of a pre-registered analysis must not be chosen after seeing results)."""
        from ragcun.ablation.preregistration import check_or_record

        check_or_record(self.plan, show=self.show)

    def warn_if_precision_is_slow(self) -> None:
        """A plan written on a machine with native bfloat16 runs several times slower on one without: say so."""
        import torch

        from ragcun.evaluation.beir_eval import dtype_warning

        device = "cuda" if torch.cuda.is_available() else "cpu"
        slow = dtype_warning(self.plan.dtype, device, flag=f"the plan's dtype ({self.plan.path.name})")
        if slow:
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
                self._datasets[name] = load_beir(folder, "test", name=name)
        return self._datasets[name]

    # -- the base encoder's outputs, encoded once ------------------------------------------------------
    def base_model(self):
        if self._base_model is None:
            from ragcun.model import EmbeddingModel

            self._base_model = EmbeddingModel.build(self.plan.train.get("encoder", "all-minilm-l6-v2"), "identity",
                                                    "cosine")
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
                 keep_per_query: bool = False) -> dict:
        """Score ``model`` on ``datasets``; with ``reuse_base`` apply its head to the cached base outputs."""
        from ragcun.ablation.scoring import apply_head, encode_dataset, score
        from ragcun.evaluation.run_files import format_trec_run

        k_values = sorted({10, 100, self.plan.k} & set(range(1, self.plan.k + 1)))
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
            scored = score(model.distance, encoded, dataset, k=self.plan.k, k_values=k_values,
                           isotropy_sample=self.plan.isotropy_sample)
            if out is not None:
                _atomic_json(out / f"{name}.per_query.json", scored["per_query"])
                trec = self.plan.work_dir / "trec" / out.relative_to(self.plan.results) / f"{name}.trec"
                trec.parent.mkdir(parents=True, exist_ok=True)
                trec.write_text(format_trec_run(scored["results"], tag))
            report[name] = {"metrics": {m: v for m, v in scored["metrics"].items()
                                        if m.split("@")[0] in ("NDCG", "MRR", "Recall", "MAP")},
                            "isotropy": scored["isotropy"], "counts": scored["counts"],
                            "eval_s": time.perf_counter() - t0}
            if keep_per_query:
                report[name]["per_query"] = scored["per_query"]
            self.show(f"  {name}: NDCG@10 {scored['metrics']['NDCG@10']:.4f}  SIGReg "
                      f"{scored['isotropy']['sigreg_raw']:.2f} (floor {scored['isotropy']['sigreg_gaussian_floor']:.2f})"
                      f"  IsoScore {scored['isotropy']['isoscore']:.3f}")
        return report

    # -- training --------------------------------------------------------------------------------------
    def train_config(self, arm: Arm, seed: int, lam: float | None):
        from ragcun.spec import settings_from_options
        from ragcun.training.config import TrainConfig

        suffix = f"seed-{seed}" + (f"-lambda-{lam:g}" if arm.selects_lambda else "")
        values = dict(self.plan.train)
        values.update({"output_dir": str(self.plan.work_dir / "models" / arm.name / suffix),
                       "train_data": f"beir:{self.train_folder}:train", "seed": seed, "loss": arm.loss_for(lam),
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
        info: dict[str, Any] = {"loss": config.loss, "seed": seed, "lambda": lam, "freeze_encoder": config.freeze_encoder,
                                "batch_size": config.batch_size, "global_batch": config.batch_size * config.grad_accum,
                                "lr": config.lr, "head_lr": config.head_lr, "dtype": config.dtype,
                                "settings": config.settings}
        from ragcun.run_lock import acquire

        with acquire(folder, what="ragcun ablation run", label=f"the ablation run {folder}"):  # one writer
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
        return model, info

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
            chosen = json.loads(path.read_text())
            if chosen.get("values") == plan.select_values and "chosen" in chosen:
                return float(chosen["chosen"])
        if 0.0 not in plan.select_values:
            raise ValueError(f"{plan.path} [select]: values must include 0 so that the regularizer can lose to no "
                             f"regularizer (got {', '.join(f'{v:g}' for v in plan.select_values)})")
        arm, seed = plan.arms[plan.select_arm], plan.seeds_of(plan.arms[plan.select_arm])[0]
        scores, per_query, global_batch = {}, {}, None
        for lam in plan.select_values:
            step_file = plan.results / "selection" / f"lambda-{lam:g}.json"
            if step_file.is_file():
                saved = json.loads(step_file.read_text())
                scores[lam] = saved["dev"][plan.dev_metric]
                per_query[lam] = saved.get("per_query")
                global_batch = saved.get("train", {}).get("global_batch", global_batch)
                continue
            model, info = self.trained_model(arm, seed, lam)
            self.show(f"{arm.name} lambda {lam:g}: dev evaluation")
            dev = self.evaluate(model, ["dev"], reuse_base=False, out=None, tag="dev", keep_per_query=True)["dev"]
            scores[lam], per_query[lam] = dev["metrics"][plan.dev_metric], dev["per_query"]
            global_batch = info.get("global_batch")
            _atomic_json(step_file, {"lambda": lam, "dev": dev["metrics"], "isotropy": dev["isotropy"], "train": info,
                                     "per_query": {q: m[plan.dev_metric] for q, m in dev["per_query"].items()}})
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
                            "rule": "the best mean dev score; a tie goes to the smaller lambda"})
        self.show(f"lambda chosen on dev ({plan.dev_metric}): {chosen:g}  " + "  ".join(
            f"{k}: {r['score']:.4f}" + (f" ± {r['se']:.4f}" if "se" in r else "") for k, r in detail.items()))
        return chosen

    def dry_run(self) -> list[str]:
        """Check the whole plan without training or writing anything: the datasets and splits exist, every
        trained run's settings resolve and validate and name registered components, and the pre-registration
        agrees; returns the lines describing what a real run would do, in order."""
        from ragcun.ablation.data import own_dev_split
        from ragcun.ablation.preregistration import changed_fields, read
        from ragcun.components import check_settings, components_in_use
        from ragcun.data.beir import available_splits, find_dataset

        plan = self.plan
        lines = [f"plan {plan.name} ({plan.path}): {len(plan.arms)} arm(s), results {plan.results}, work {plan.work_dir}"]
        if plan.dev_split:
            self.train_folder, info = own_dev_split(plan.train_data, self.data_dir, plan.dev_split)
            lines.append(f"training data: {plan.train_data} train ({info['train_queries']} queries); lambda chosen on "
                         f"its own {plan.dev_split} split ({info['dev_queries']} queries)")
        else:
            source = find_dataset(plan.train_data, self.data_dir, download=False)
            if "train" not in available_splits(source):
                raise ValueError(f"{plan.path} [train]: {source} has no train split")
            self.train_folder = plan.work_dir / "data" / f"{Path(plan.train_data).name}-train-dev"
            lines.append(f"training data: {plan.train_data} train minus a {plan.dev_fraction:g} dev split carved from it")
        for name in plan.datasets:
            folder = find_dataset(name, self.data_dir, download=False)
            if "test" not in available_splits(folder):
                raise ValueError(f"{plan.path}: dataset {name!r} ({folder}) has no test split")
        lines.append(f"test collections: {', '.join(plan.datasets)} (test splits present)")
        if plan.primary is not None:
            recorded = read(plan.results)
            family = plan.primary.family()
            if recorded is None:
                lines.append(f"primary analysis: would be pre-registered now (hash {plan.primary.family_hash()}): "
                             + "; ".join(str(c) for c in plan.primary.comparisons))
            elif changed_fields(recorded["family"], family):
                raise ValueError(f"{plan.path} [primary]: differs from the recorded {plan.results}/preregistration.json "
                                 f"({', '.join(changed_fields(recorded['family'], family))})")
            else:
                lines.append(f"primary analysis: as recorded (hash {recorded['hash']})")
        lambdas = plan.select_values if plan.select_arm else []
        in_use: dict[str, set[str]] = {}  # a shared --set must address a component of some arm, as in training
        settings = []
        if lambdas:
            lines.append(f"lambda selection: arm {plan.select_arm}, seed {plan.seeds_of(plan.arms[plan.select_arm])[0]}, "
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
                lines.append(f"  {arm.name} seed {seed}: {config.loss} ({config.encoder}, {config.head}, "
                             f"{config.distance}; {config.steps or config.epochs} {'steps' if config.steps else 'epochs'} "
                             f"x {config.batch_size * config.grad_accum}, lr {config.lr:g}, {config.dtype})"
                             + ("  [finished]" if done else ""))
        for each in settings:
            check_settings(each, {kind: sorted(names) for kind, names in in_use.items()})
        return lines

    def todo(self) -> list[tuple[Arm, int]]:
        """The (arm, seed) runs of the plan not finished yet, in run order (``only`` / ``seeds`` applied)."""
        return [(arm, seed) for arm, seed in self.plan.order()
                if (not self.only or arm.name in self.only) and (not self.seeds or not arm.trained or seed in self.seeds)
                and not (run_dir(self.plan, arm, seed) / RESULT_FILE).is_file()]

    def run(self, *, parallel: str = "no", slots: int | None = None) -> dict[str, Any]:
        """Every unfinished run; with ``parallel`` the trained runs go side by side, one process each (one GPU
        each on a GPU node), after the training-free arms and the lambda selection ran here."""
        plan = self.plan
        t_start = time.perf_counter()
        self.prepare()
        skipped = [f"{a.name}/{run_dir(plan, a, s).name}" for a, s in plan.order()
                   if (run_dir(plan, a, s) / RESULT_FILE).is_file()]
        todo = self.todo()
        processes = resolve_slots(parallel, slots)
        done = []
        if processes > 1:
            for arm, seed in [(a, s) for a, s in todo if not a.trained]:
                done.append(self.run_one(arm, seed))
            if any(a.selects_lambda for a, _ in todo):
                self.select_lambda()
            done += run_side_by_side(self, [(a, s) for a, s in todo if a.trained], processes)
        else:
            for arm, seed in todo:
                done.append(self.run_one(arm, seed))
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
        if arm.trained:
            lam = self.select_lambda() if arm.selects_lambda else None
            model, info = self.trained_model(arm, seed, lam)
            self.show(f"{arm.name} seed {seed}: evaluating on {', '.join(plan.datasets)}")
            report = self.evaluate(model, plan.datasets, reuse_base=arm.freeze_encoder and not arm.encoder,
                                   out=out, tag=f"{arm.name}-{seed}")
        else:
            model, info = self.transformed_model(arm)
            report = self.evaluate_transform(arm, model, out)
        _atomic_json(out / RESULT_FILE, {"arm": arm.name, "what": arm.what, "seed": seed, "trained": arm.trained,
                                         "datasets": report, "info": info, "wall_s": time.perf_counter() - t0})
        return f"{arm.name}/{out.name}"

    # -- training-free arms ----------------------------------------------------------------------------
    def transformed_model(self, arm: Arm):
        from ragcun.model import EmbeddingModel

        head = {"none": "identity", "center": "center", "whiten": "whiten"}[arm.transform]
        settings = {"head": {"whiten": {"dim": arm.whiten_dim}}} if arm.transform == "whiten" and arm.whiten_dim else None
        base = self.base_model()
        model = EmbeddingModel.build(self.plan.train.get("encoder", "all-minilm-l6-v2"), head,
                                     arm.distance or "cosine", settings)
        model.encoder = base.encoder  # the same weights: share them instead of holding two copies
        return model, {"transform": arm.transform, "distance": arm.distance or "cosine", "trainable_params": 0,
                       "fitted_on": "the corpus being searched (each dataset's own)"}

    def evaluate_transform(self, arm: Arm, model, out: Path) -> dict:
        report = {}
        for name in self.plan.datasets:
            if hasattr(model.head, "fit"):
                model.head.fit(self.base_features(name).documents.mean)
            report.update(self.evaluate(model, [name], reuse_base=True, out=out, tag=arm.name))
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


def _calibration(folder: Path) -> dict | None:
    return next((r["calibration"] for r in _records(folder) if "calibration" in r), None)


def _final_step(folder: Path) -> int | None:
    return next((r["step"] for r in reversed(_records(folder)) if "final" in r), None)


def resolve_slots(parallel: str, slots: int | None) -> int:
    """How many runs go at once: ``no`` -> 1; ``auto`` -> one per GPU when there are at least 2, else 1;
    ``yes`` -> one per GPU, or 2 CPU processes sharing the cores (``slots`` overrides the count)."""
    if parallel not in ("auto", "yes", "no"):
        raise ValueError(f"--parallel must be auto, yes or no, got {parallel!r}")
    if slots is not None and slots < 1:
        raise ValueError(f"--slots must be a positive integer, got {slots}")
    if parallel == "no":
        return 1
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parallel == "auto" and gpus < 2:
        return 1
    return slots or (gpus if gpus else 2)


def run_side_by_side(runner: PlanRunner, runs: list[tuple[Arm, int]], processes: int) -> list[str]:
    """Each run in its own ``ragcun ablation run --only ARM --seeds S`` process, ``processes`` at a time (GPU i
    of the node for slot i; on a CPU the cores are shared out); the finished ones write their result.json
    themselves, so an interrupted batch resumes like any plan."""
    import subprocess
    import sys

    import torch

    from ragcun.signals import ChildProcesses

    plan = runner.plan
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    threads = max(1, (os.cpu_count() or 1) // processes)
    logs = plan.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue, running, done, failed = list(runs), {}, [], []
    # the workers die with this process: a signal or an error here stops them (they save a checkpoint), and the
    # kernel stops them if this process is killed
    with ChildProcesses() as children:
        _supervise(runner, queue, running, done, failed, children, processes, gpus, threads, logs)
    if failed:
        raise ValueError("ablation: run(s) failed: " + "; ".join(f"{a} seed {s} (log {log})" for (a, s), log in failed)
                         + "; the finished ones are kept: run the plan again to retry the rest")
    return [f"{a}/seed-{s}" for (a, s), _ in done]


def _supervise(runner, queue, running, done, failed, children, processes: int, gpus: int, threads: int,
               logs: Path) -> None:
    """Start the queued runs ``processes`` at a time (as ``children``) and collect them as they finish."""
    import subprocess
    import sys

    plan = runner.plan
    while queue or running:
        while queue and len(running) < processes:
            arm, seed = queue.pop(0)
            slot = next(i for i in range(processes) if i not in {s for s, _, _ in running.values()})
            cmd = [sys.executable, "-m", "ragcun", "ablation", "run", str(plan.path), "--results", str(plan.results),
                   "--work-dir", str(plan.work_dir), "--only", arm.name, "--seeds", str(seed), "--parallel", "no",
                   "--no-compare"] + (["--data-dir", runner.data_dir] if runner.data_dir else [])
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            else:
                env.update(OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
            log = open(logs / f"{arm.name}-seed-{seed}.log", "a")  # noqa: SIM115 (outlives this block)
            runner.show(f"{arm.name} seed {seed}: started in its own process "
                        f"({'GPU ' + env['CUDA_VISIBLE_DEVICES'] if gpus else f'{threads} CPU thread(s)'}); log {log.name}")
            running[(arm.name, seed)] = (slot, children.popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        time.sleep(0.5)
        for key, (slot, proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[key]
            (done if proc.returncode == 0 else failed).append((key, log.name))
            runner.show(f"{key[0]} seed {key[1]}: " + ("finished" if proc.returncode == 0 else
                                                       f"failed (exit {proc.returncode}), see {log.name}"))


def run_plan(plan: Plan, *, data_dir: str | None = None, show=print, only: set[str] | None = None,
             seeds: set[int] | None = None, parallel: str = "no", slots: int | None = None) -> dict[str, Any]:
    """Run every arm x seed of ``plan`` not finished yet (see the module docstring)."""
    return PlanRunner(plan, data_dir=data_dir, show=show, only=only, seeds=seeds).run(parallel=parallel, slots=slots)
