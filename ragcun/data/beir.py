"""BEIR-format retrieval datasets: find them, download them (when the network allows), load them.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line), ``queries.jsonl``
(``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id<TAB>corpus-id<TAB>score`` after a header).
:func:`load_beir` returns what ``beir.datasets.data_loader.GenericDataLoader(folder).load(split)`` returns
(corpus, the queries that have judgments, qrels), but a broken file gives an error that names the file and the
line instead of a traceback from ``json``/``csv``, and qrels rows naming an unknown id are counted, not fatal:

* a row whose query id is not in ``queries.jsonl`` cannot be evaluated (there is no query text): it is dropped;
* a row whose document id is not in the corpus is kept, as BEIR keeps it (the document counts as relevant but
  can never be retrieved, which is what the published numbers do); both are reported in :class:`QrelsReport`.

Differences from ``GenericDataLoader`` that cannot change a result on well-formed data: blank lines are skipped,
a missing ``title``/``text`` becomes ``""`` rather than ``None``, and the qrels header is recognised (its score
column is not a number) instead of the first row being skipped unconditionally.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# The datasets BEIR distributes (https://github.com/beir-cellar/beir), downloadable from BEIR_URL.
BEIR_DATASETS = ("msmarco", "trec-covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana", "webis-touche2020",
                 "cqadupstack", "quora", "dbpedia-entity", "scidocs", "fever", "climate-fever", "scifact",
                 "bioasq", "signal1m", "trec-news", "robust04")
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
DATA_ENV = "RAGCUN_DATA"
OFFLINE_ENV = "RAGCUN_OFFLINE"
CORPUS_FILE, QUERIES_FILE, QRELS_FOLDER = "corpus.jsonl", "queries.jsonl", "qrels"


@dataclass
class QrelsReport:
    """What :func:`load_beir` had to do about qrels rows that name ids it does not know."""

    rows: int = 0
    unknown_query_rows: int = 0  # dropped: no query text
    unknown_doc_rows: int = 0  # kept, as BEIR does
    unknown_query_ids: list[str] = field(default_factory=list)  # a few examples
    unknown_doc_ids: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.unknown_query_rows or self.unknown_doc_rows)

    def messages(self, qrels_file: Path | str) -> list[str]:
        out = []
        if self.unknown_query_rows:
            out.append(f"{qrels_file}: {self.unknown_query_rows} of {self.rows} rows name a query id that is not "
                       f"in {QUERIES_FILE} (e.g. {', '.join(map(repr, self.unknown_query_ids))}); they were dropped")
        if self.unknown_doc_rows:
            out.append(f"{qrels_file}: {self.unknown_doc_rows} of {self.rows} rows name a document id that is not "
                       f"in {CORPUS_FILE} (e.g. {', '.join(map(repr, self.unknown_doc_ids))}); kept as relevant "
                       "but unretrievable, as BEIR does")
        return out

    def as_dict(self) -> dict:
        return {"rows": self.rows, "unknown_query_rows": self.unknown_query_rows,
                "unknown_doc_rows": self.unknown_doc_rows, "unknown_query_ids": self.unknown_query_ids,
                "unknown_doc_ids": self.unknown_doc_ids}


@dataclass
class BeirDataset:
    name: str
    folder: Path
    split: str
    corpus: dict[str, dict[str, str]]  # doc id -> {"title": ..., "text": ...}
    queries: dict[str, str]  # query id -> text, only the queries that have judgments in this split
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}
    qrels_report: QrelsReport = field(default_factory=QrelsReport)
    empty_query_ids: list[str] = field(default_factory=list)  # judged queries whose text is empty

    @property
    def qrels_file(self) -> Path:
        return self.folder / QRELS_FOLDER / f"{self.split}.tsv"

    def warnings(self) -> list[str]:
        out = self.qrels_report.messages(self.qrels_file)
        if self.empty_query_ids:
            out.append(f"{self.folder / QUERIES_FILE}: {len(self.empty_query_ids)} of {len(self.queries)} judged "
                       f"queries have empty text (e.g. {', '.join(map(repr, self.empty_query_ids[:5]))}); they "
                       "are scored as empty strings")
        return out


# -- reading -------------------------------------------------------------------------------------------
def _read_jsonl(path: Path, what: str):
    """Yield ``(line_number, record)``; a line that is not a JSON object with a string ``_id`` is an error."""
    if not path.is_file():
        raise ValueError(f"{path}: {what} file is missing (a BEIR folder holds {CORPUS_FILE}, {QUERIES_FILE} "
                         f"and {QRELS_FOLDER}/<split>.tsv)")
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = decode_line(raw, path, number)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: malformed JSON ({exc.msg}; column {exc.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")  # noqa: TRY004 (user data)
            if not isinstance(record.get("_id"), (str, int)) or isinstance(record.get("_id"), bool):
                raise ValueError(f"{path}:{number}: the record has no string '_id'")  # noqa: TRY004
            yield number, record


def decode_line(raw: bytes, path: Path, number: int) -> str:
    """One line of a UTF-8 file; anything else is an error naming the file, line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                         "convert the file to UTF-8") from None


def _text_field(record: dict, key: str, path: Path, number: int) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{path}:{number}: '{key}' must be a string, got {type(value).__name__}")  # noqa: TRY004
    return value


def document_text(doc: dict[str, str]) -> str:
    """A BEIR document as sentence-transformers and beir encode it: ``title + " " + text``, stripped (the one
    place this join is written)."""
    return ((doc.get("title") or "") + " " + (doc.get("text") or "")).strip()


def load_corpus(folder: str | os.PathLike) -> dict[str, dict[str, str]]:
    path = Path(folder) / CORPUS_FILE
    corpus: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    for number, record in _read_jsonl(path, "corpus"):
        doc_id = str(record["_id"])
        if doc_id in lines:  # a later document would silently replace the earlier one
            raise ValueError(f"{path}:{number}: duplicate document id {doc_id!r} (first on line {lines[doc_id]}); "
                             "document ids must be unique")
        lines[doc_id] = number
        corpus[doc_id] = {"text": _text_field(record, "text", path, number),
                          "title": _text_field(record, "title", path, number)}
    if not corpus:
        raise ValueError(f"{path}: the corpus is empty (no documents); there is nothing to retrieve")
    return corpus


def load_queries(folder: str | os.PathLike) -> dict[str, str]:
    path = Path(folder) / QUERIES_FILE
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, record in _read_jsonl(path, "queries"):
        query_id = str(record["_id"])
        if query_id in lines:
            raise ValueError(f"{path}:{number}: duplicate query id {query_id!r} (first on line {lines[query_id]}); "
                             "query ids must be unique")
        lines[query_id] = number
        queries[query_id] = _text_field(record, "text", path, number)
    return queries


def available_splits(folder: str | os.PathLike) -> list[str]:
    qrels = Path(folder) / QRELS_FOLDER
    return sorted(p.stem for p in qrels.glob("*.tsv")) if qrels.is_dir() else []


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """``qrels/<split>.tsv`` as ``{query id: {doc id: score}}`` (later duplicate rows win, as in BEIR)."""
    path = Path(path)
    if not path.is_file():
        folder = path.parent.parent
        splits = available_splits(folder)
        hint = f"available splits: {', '.join(splits)}" if splits else f"{folder} has no {QRELS_FOLDER}/*.tsv"
        raise ValueError(f"{path}: split file is missing ({hint})")
    qrels: dict[str, dict[str, int]] = {}
    with path.open("rb") as fh:
        text_lines = (decode_line(raw, path, n) for n, raw in enumerate(fh, start=1))
        for number, row in enumerate(csv.reader(text_lines, delimiter="\t", quoting=csv.QUOTE_MINIMAL), start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{number}: expected 3 tab-separated columns "
                                 f"(query-id, corpus-id, score), got {len(row)}")
            try:
                score = int(row[2])
            except ValueError:
                if number == 1:  # the header row: query-id corpus-id score
                    continue
                raise ValueError(f"{path}:{number}: score {row[2]!r} is not an integer") from None
            qrels.setdefault(row[0], {})[row[1]] = score
    return qrels


def load_beir(folder: str | os.PathLike, split: str = "test", *, name: str | None = None) -> BeirDataset:
    """Load a BEIR folder's corpus, the queries judged in ``split`` and its qrels (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (expected a BEIR dataset folder)")
    qrels_path = folder / QRELS_FOLDER / f"{split}.tsv"
    raw_qrels = load_qrels(qrels_path)  # first: a wrong split fails before reading a big corpus
    corpus = load_corpus(folder)
    all_queries = load_queries(folder)
    report = QrelsReport()
    qrels: dict[str, dict[str, int]] = {}
    for qid, docs in raw_qrels.items():
        report.rows += len(docs)
        if qid not in all_queries:
            report.unknown_query_rows += len(docs)
            if len(report.unknown_query_ids) < 5:
                report.unknown_query_ids.append(qid)
            continue
        for did in docs:
            if did not in corpus:
                report.unknown_doc_rows += 1
                if len(report.unknown_doc_ids) < 5:
                    report.unknown_doc_ids.append(did)
        qrels[qid] = docs
    if not qrels:
        raise ValueError(f"{qrels_path}: no judgments for any query in {folder / QUERIES_FILE}")
    queries = {qid: all_queries[qid] for qid in qrels}
    empty = [qid for qid, text in queries.items() if not text.strip()]
    return BeirDataset(name or folder.name, folder, split, corpus, queries, qrels, report, empty)


# -- finding -------------------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """``$RAGCUN_DATA``, else ``$XDG_CACHE_HOME/ragcun/beir`` (``~/.cache/ragcun/beir``)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ragcun" / "beir"


def is_beir_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CORPUS_FILE).is_file() and (path / QUERIES_FILE).is_file() and (path / QRELS_FOLDER).is_dir()


def present_datasets(data_dir: str | os.PathLike) -> list[str]:
    """Names of the BEIR-format folders directly under ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir() and is_beir_folder(p))


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


def download_beir(name: str, data_dir: str | os.PathLike) -> Path:
    """Download and unzip a BEIR dataset from its official location with beir's own downloader."""
    from beir import util

    url = BEIR_URL.format(name=name)
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    return Path(util.download_and_unzip(url, str(data_dir)))


def find_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The folder of dataset ``name``: ``name`` itself when it is a BEIR folder, else ``data_dir/name``.

    A missing BEIR dataset is downloaded into ``data_dir`` when ``download`` is true and the network allows
    (``RAGCUN_OFFLINE=1`` forbids it); otherwise the error says where it looked and how to provide the data.
    """
    direct = Path(name).expanduser()
    if os.sep in name or name.startswith("."):
        if is_beir_folder(direct):
            return direct
        raise ValueError(f"{direct}: not a BEIR dataset folder (it needs {CORPUS_FILE}, {QUERIES_FILE} and "
                         f"{QRELS_FOLDER}/<split>.tsv)")
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    folder = data_dir / name
    if is_beir_folder(folder):
        return folder
    how = (f"put a BEIR-format folder ({CORPUS_FILE}, {QUERIES_FILE}, {QRELS_FOLDER}/<split>.tsv) at {folder}, "
           f"or point --data-dir (or ${DATA_ENV}) at the folder that holds it")
    if folder.exists():
        raise ValueError(f"dataset {name!r}: {folder} exists but is not a BEIR folder; {how}")
    if name.lower() not in BEIR_DATASETS:
        present = present_datasets(data_dir)
        found = f"; found there: {', '.join(present)}" if present else ""
        raise ValueError(f"dataset {name!r} not found in {data_dir}{found}; {how}")
    if not download or _offline():
        why = "downloads are disabled" + (f" (${OFFLINE_ENV})" if _offline() else "")
        raise ValueError(f"dataset {name!r} not found in {data_dir} and {why}; {how}, "
                         f"or download {BEIR_URL.format(name=name)} and unzip it there")
    try:
        got = download_beir(name, data_dir)
    except Exception as exc:  # noqa: BLE001 -- no network, proxy, bad zip: all mean the same thing to the user
        raise ValueError(f"dataset {name!r} not found in {data_dir}, and downloading it from "
                         f"{BEIR_URL.format(name=name)} failed ({type(exc).__name__}: {exc}); {how}") from None
    if not is_beir_folder(got):
        raise ValueError(f"downloaded {name!r} into {got}, but it is not a BEIR folder; {how}")
    return got
