"""``ragcun eval recall-at-k``: the example plugin's evaluator, a small real one.

Recall@k of a model on a local BEIR folder, computed here from first principles (the fraction of each query's
relevant documents found in its top k, averaged over queries) rather than by beir, so the plugin also serves
as an independent check of ragcun's own numbers: on the same model and data it equals beir's Recall@k.
"""

from __future__ import annotations


class RecallAtK:
    def __init__(self, dataset: str = "nq-utd", data_dir: str | None = None, split: str = "test", k: int = 100,
                 batch_size: int = 64) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"evaluator.recall-at-k.k must be a positive integer, got {k!r}")
        self.dataset, self.data_dir, self.split, self.k, self.batch_size = dataset, data_dir, split, k, batch_size

    def __call__(self, model) -> dict:
        from ragcun.data.beir import document_text, find_dataset, load_beir
        from ragcun.encoding import encode
        from ragcun.evaluation.search import search

        data = load_beir(find_dataset(self.dataset, self.data_dir, download=False), self.split)
        query_ids, doc_ids = sorted(data.queries), sorted(data.corpus)
        queries = encode(model, [model.query_prefix + data.queries[q] for q in query_ids], self.batch_size)
        docs = encode(model, [model.document_prefix + document_text(data.corpus[d]) for d in doc_ids],
                      self.batch_size)
        top = search(model.distance, queries, docs, self.k, query_ids=query_ids, doc_ids=doc_ids)
        recalls = []
        for qid in query_ids:
            relevant = {d for d, score in data.qrels[qid].items() if score > 0}
            if relevant:
                recalls.append(len(relevant & set(top[qid])) / len(relevant))
        return {"dataset": data.name, "split": self.split, "queries": len(recalls), f"Recall@{self.k}":
                sum(recalls) / len(recalls) if recalls else 0.0}
