"""The guides in docs/ cannot rot: every ``python`` block runs, every ``bash`` line runs with tiny settings or is
marked with what it needs, every link resolves, and the CLI reference equals the commands' own ``--help``.

The examples run in a scratch copy of the layout they are written for (a repository folder with ``shared/``
beside it), where ``shared/data/beir`` holds small real subsets of the BEIR datasets (a few queries of each split
with their judged documents and some others), so a command written for SciFact runs in seconds on real text.
A bash block that cannot run here is preceded by ``<!-- needs: REASON -->``, REASON starting with one of
:data:`NEEDS`; each such line is reported as a skip that says which.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SHARED = ROOT.parent / "shared" / "data"
NEEDS = ("gpu", "several machines", "network", "long")
FENCE = re.compile(r"(?:<!--\s*needs:\s*(?P<needs>.*?)\s*-->\s*\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def blocks(page: Path, lang: str) -> list[tuple[int, str, str | None]]:
    """(line number, body, needs) of every fenced block of ``lang`` in ``page``."""
    text = page.read_text()
    out = []
    for match in FENCE.finditer(text):
        if match.group("lang") == lang:
            out.append((text[:match.start("body")].count("\n") + 1, match.group("body"), match.group("needs")))
    return out


def command_lines(body: str) -> list[str]:
    """The commands of a bash block: comments dropped, continuation lines joined."""
    joined = body.replace("\\\n", " ")
    return [" ".join(line.split(" #", 1)[0].split()) for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


# -- a scratch layout with small real datasets ----------------------------------------------------------------
def _subset(src: Path, dst: Path, queries_per_split: int = 8, extra_docs: int = 40) -> None:
    splits = sorted(p.stem for p in (src / "qrels").glob("*.tsv"))
    qrels: dict[str, list[list[str]]] = {}
    keep_queries: set[str] = set()
    keep_docs: set[str] = set()
    for split in splits:
        rows = [line.split("\t") for line in (src / "qrels" / f"{split}.tsv").read_text().splitlines()[1:] if line]
        judged: dict[str, int] = {}
        for r in rows:
            if int(r[2]) > 0:
                judged[r[0]] = judged.get(r[0], 0) + 1
        # the queries with the fewest judgements, so the subset stays small (NFCorpus judges hundreds per query)
        chosen = sorted(judged, key=lambda q: (judged[q], q))[:queries_per_split]
        qrels[split] = [r for r in rows if r[0] in chosen]
        keep_queries.update(chosen)
        keep_docs.update(r[1] for r in qrels[split])
    dst.mkdir(parents=True)
    (dst / "qrels").mkdir()
    for split, rows in qrels.items():
        (dst / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                                    + "".join("\t".join(r) + "\n" for r in rows))
    with (src / "queries.jsonl").open() as fh, (dst / "queries.jsonl").open("w") as out:
        out.writelines(line for line in fh if json.loads(line)["_id"] in keep_queries)
    others = 0
    with (src / "corpus.jsonl").open() as fh, (dst / "corpus.jsonl").open("w") as out:
        for line in fh:
            doc_id = json.loads(line)["_id"]
            if doc_id in keep_docs or others < extra_docs:
                others += doc_id not in keep_docs
                out.write(line)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """``BASE/shared/data``: tiny BEIR subsets and the real MS MARCO sample; each page runs in ``BASE/<page>``."""
    if not (SHARED / "beir").is_dir():
        pytest.skip(f"the BEIR datasets are not at {SHARED / 'beir'}")
    base = tmp_path_factory.mktemp("docs")
    for dataset in sorted(p for p in (SHARED / "beir").iterdir() if (p / "corpus.jsonl").is_file()):
        _subset(dataset, base / "shared" / "data" / "beir" / dataset.name)
    (base / "shared" / "data" / "msmarco-train-sample").symlink_to(SHARED / "msmarco-train-sample")
    return base / "shared"


def page_folder(shared: Path, page: Path) -> Path:
    """The repository-like folder a page's examples run in (one per page: a page's commands build on each other,
    other pages' outputs are not there), with ``../shared`` beside it and the committed ablation results, which
    ``ragcun ablation compare`` reads (and writes its report beside)."""
    folder = shared.parent / page.stem
    if not folder.is_dir():
        shutil.copytree(ROOT / "benchmarks" / "ablation", folder / "benchmarks" / "ablation")
    return folder


def _env(shared: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGCUN_")}
    env.update(RAGCUN_DATA=str(shared / "data" / "beir"), RAGCUN_OFFLINE="1", RAGCUN_CACHE=str(shared.parent / "cache"),
               RAGCUN_HOME=os.environ.get("RAGCUN_HOME", str(Path.home() / ".cache" / "ragcun")),
               OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    return env


def tiny(argv: list[str]) -> list[str]:
    """A documented command with tiny settings: a couple of steps and small samples (later flags win in click)."""
    if argv[:2] == ["ragcun", "train"] and "--resume" not in argv:
        if "--epochs" in argv:
            i = argv.index("--epochs")
            argv = argv[:i] + argv[i + 2:]
        return argv + ["--steps", "2", "--batch-size", "4", "--no-progress"]
    if argv[:2] == ["ragcun", "train"]:
        return argv + ["--no-progress"]
    if argv[:2] == ["ragcun", "preflight"]:
        return argv + ["--batch-size", "4", "--steps", "2"]
    if argv[:3] == ["ragcun", "isotropy", "report"]:
        return argv + ["--sample", "20", "--no-plots"]
    if argv[:3] == ["ragcun", "eval", "beir"]:
        return argv + ["--batch-size", "16"]
    return argv


def _bash_cases():
    for page in PAGES:
        for line, body, needs in blocks(page, "bash"):
            yield pytest.param(page, line, body, needs, id=f"{page.name}:{line}")


@pytest.mark.slow
@pytest.mark.parametrize("page,line,body,needs", list(_bash_cases()))
def test_every_bash_line_of_the_guides_runs_with_tiny_settings(page, line, body, needs, shared):
    if needs is not None:
        assert needs.startswith(NEEDS), f"{page.name}:{line}: 'needs: {needs}' should start with one of {NEEDS}"
        pytest.skip(f"{page.name}:{line} needs {needs}: " + " | ".join(command_lines(body)))
    for command in command_lines(body):
        argv = shlex.split(command)
        assert argv[0] in ("ragcun", "python"), f"{page.name}:{line}: {command!r} is neither ragcun nor python"
        argv = [sys.executable, "-m", "ragcun", *tiny(argv)[1:]] if argv[0] == "ragcun" else [sys.executable, *argv[1:]]
        done = subprocess.run(argv, cwd=page_folder(shared, page), env=_env(shared), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{page.name}:{line}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def _python_cases():
    for page in PAGES:
        for line, body, _ in blocks(page, "python"):
            yield pytest.param(page, line, body, id=f"{page.name}:{line}")


@pytest.mark.slow
@pytest.mark.parametrize("page,line,body", list(_python_cases()))
def test_every_python_example_of_the_guides_runs(page, line, body, shared, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(body)
    done = subprocess.run([sys.executable, str(script)], cwd=page_folder(shared, page), env=_env(shared),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{page.name}:{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_the_guides_have_examples_of_both_kinds():
    assert list(_python_cases()) and list(_bash_cases())
    assert {p.name for p in PAGES} >= {"training.md", "data.md", "evaluation.md", "python-api.md", "plugins.md",
                                       "cli.md"}


def test_bash_blocks_are_read_as_a_shell_would():
    assert command_lines("ragcun eval beir \\\n  --datasets scifact   # a comment\n# only a comment\n") == [
        "ragcun eval beir --datasets scifact"]
    assert tiny(["ragcun", "train", "--epochs", "1", "--lr", "5e-5"]) == [
        "ragcun", "train", "--lr", "5e-5", "--steps", "2", "--batch-size", "4", "--no-progress"]


# -- links ------------------------------------------------------------------------------------------------------
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES + [ROOT / "README.md"], ids=lambda p: p.name)
def test_every_link_between_pages_and_to_the_repository_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no {file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page}: broken links: {broken}"


def test_slugs_follow_github():
    assert slug("SIGReg on the defaults: the gaussian head calibrates itself") == \
        "sigreg-on-the-defaults-the-gaussian-head-calibrates-itself"
    assert slug("`ragcun train`") == "ragcun-train"


# -- the CLI reference ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_cli_reference_matches_the_commands_help():
    done = subprocess.run([sys.executable, "-m", "ragcun.cli.reference", "--check", str(DOCS / "cli.md")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_cli_reference_covers_every_built_in_command():
    text = (DOCS / "cli.md").read_text()
    for command in ("ragcun train", "ragcun eval beir", "ragcun isotropy report", "ragcun ablation run",
                    "ragcun export", "ragcun preflight", "ragcun sweep", "ragcun list", "ragcun plugins",
                    "ragcun compare"):
        assert f"## `{command}`" in text


# -- the ablation plan-file reference ---------------------------------------------------------------------------
def test_the_plan_reference_is_generated_from_the_plan_checker():
    """docs/ablation-plans.md is exactly what the key tables of ragcun/ablation/plan.py give."""
    from ragcun.ablation.reference import render

    committed = (DOCS / "ablation-plans.md").read_text()
    assert committed == render(), "run: python -m ragcun.ablation.reference > docs/ablation-plans.md"


def test_the_plan_reference_example_loads_and_shows_every_table(tmp_path):
    from ragcun.ablation.plan import KEYS, load_plan
    from ragcun.ablation.reference import example

    path = tmp_path / "example.toml"
    path.write_text(example())
    plan = load_plan(path)
    assert plan.primary is not None and plan.secondary and plan.select_arm
    text = example()
    for table in KEYS:
        if table:
            assert f"[{table.replace('NAME', '')}" in text, table


def test_the_plan_key_tables_are_the_defaults_the_plan_uses():
    """The defaults the reference shows are those of the dataclasses a plan is built into."""
    from dataclasses import MISSING, fields

    from ragcun.ablation.plan import KEYS, REQUIRED, Arm, Primary

    for table, cls in (("arms.NAME", Arm), ("primary", Primary)):
        defaults = {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(cls)
                    if f.default is not MISSING or f.default_factory is not MISSING}
        for key in KEYS[table]:
            if key.default_text is None and key.default is not REQUIRED and key.name in defaults:
                assert defaults[key.name] == key.default, (table, key.name)


def test_a_key_outside_the_tables_is_refused(tmp_path):
    from ragcun.ablation.plan import load_plan
    from ragcun.ablation.reference import example

    path = tmp_path / "typo.toml"
    path.write_text(example().replace("[primary]", "[primary]\nmargn = 0.02", 1))
    with pytest.raises(ValueError, match=r"\[primary\]: unknown key 'margn'; did you mean 'margin'\?"):
        load_plan(path)
