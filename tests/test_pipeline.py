"""The one retrieval pipeline (ragcun.evaluation.pipeline, issue 26 section 3): one name per precision mode with the
old spelling read as each place meant it, and the options each caller keeps (document order, chunked or whole
corpus, prepared copy or not) composed from the same steps."""

from __future__ import annotations

import pytest
from _training_helpers import write_beir

pytestmark = pytest.mark.usefixtures("single_thread")


def test_one_name_per_precision_mode_and_the_old_spelling_keeps_each_places_meaning():
    import torch

    from ragcun.ablation.plan import KEYS
    from ragcun.evaluation import pipeline
    from ragcun.evaluation.beir_eval import DTYPES

    for mode in pipeline.PRECISIONS:  # the explicit names mean the same everywhere
        assert pipeline.precision(mode, "eval") == pipeline.precision(mode, "plan") == mode
    assert pipeline.precision("bfloat16", "eval") == "bfloat16-weights"  # eval's fast path since it became one
    assert pipeline.precision("bfloat16", "plan") == "bfloat16-autocast"  # every committed plan's meaning
    assert DTYPES == pipeline.precision_names("eval")
    assert set(pipeline.precision_names("plan")) == set(DTYPES)  # a plan and --dtype accept the same names
    assert next(k for k in KEYS[""] if k.name == "dtype").type == " | ".join(pipeline.precision_names("plan"))
    assert [pipeline.autocast_dtype(m) for m in pipeline.PRECISIONS] == [None, None, torch.bfloat16, torch.float16]
    assert pipeline.autocast_dtype(pipeline.precision("bfloat16", "eval")) is None
    assert pipeline.autocast_dtype(pipeline.precision("bfloat16-autocast", "eval")) is torch.bfloat16
    with pytest.raises(ValueError, match=r"^--dtype must be one of float32, bfloat16-weights, .*got 'auto'$"):
        pipeline.precision("auto", "eval")


def test_inference_model_prepares_a_copy_or_autocasts_the_model_itself(tiny_model):
    import torch

    from ragcun.ablation.scoring import encoding_model
    from ragcun.evaluation.pipeline import inference_model

    assert inference_model(tiny_model, "float32") is tiny_model
    assert inference_model(tiny_model, "bfloat16-autocast", prepared=False) is tiny_model
    prepared = inference_model(tiny_model, "bfloat16-autocast")
    assert prepared is not tiny_model and prepared.head.mean.weight.dtype is torch.bfloat16
    weights = inference_model(tiny_model, "bfloat16-weights", prepared=False)
    assert {p.dtype for p in weights.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tiny_model.parameters()} == {torch.float32}  # the caller's model is never changed
    # the ablation: a plan's bfloat16 is autocast on the model as it is
    assert encoding_model(tiny_model, "bfloat16") == (tiny_model, torch.bfloat16)
    assert encoding_model(tiny_model, "float32") == (tiny_model, None)


def test_the_callers_options_compose_the_same_steps(tiny_model, tmp_path):
    import torch

    from ragcun.ablation.scoring import encode_dataset, score
    from ragcun.data.beir import load_beir
    from ragcun.evaluation.pipeline import evaluate_dataset, ordered_ids

    torch.manual_seed(0)
    dataset = load_beir(write_beir(tmp_path / "tiny"), "test", name="tiny")
    by_length, by_id = ordered_ids(dataset, "length"), ordered_ids(dataset, "id")
    assert by_length[0] == list(dataset.queries) and by_id == (sorted(dataset.queries), sorted(dataset.corpus))
    lengths = [len(dataset.corpus[d]["title"] + dataset.corpus[d]["text"]) for d in by_length[1]]
    assert lengths == sorted(lengths, reverse=True)

    common = {"k": 10, "k_values": [1, 5, 10], "batch_size": 8, "per_query": True}
    # eval beir: BEIR's order, encoded while searching; one chunk is one encoding call, as the whole corpus is
    one_chunk = evaluate_dataset(tiny_model, dataset, corpus_chunk_size=1000, isotropy_sample=30, keep_encoded=True,
                                 **common)
    whole = evaluate_dataset(tiny_model, dataset, corpus_chunk_size=None, isotropy_sample=30, keep_encoded=True,
                             **common)
    assert one_chunk["results"] == whole["results"] and one_chunk["metrics"] == whole["metrics"]
    assert one_chunk["per_query"] == whole["per_query"] and one_chunk["isotropy"] == whole["isotropy"]
    assert torch.equal(one_chunk["encoded"].documents.mean, whole["encoded"].documents.mean)
    # smaller chunks batch (and pad) the documents differently: the same ranking up to float round-off
    chunked = evaluate_dataset(tiny_model, dataset, corpus_chunk_size=10, isotropy_sample=30, **common)
    for name, value in whole["metrics"].items():
        assert chunked["metrics"][name] == pytest.approx(value, abs=1e-6), name

    # the ablation's scoring is the pipeline with its options (id order, whole corpus, isotropy of what it searched)
    encoded = encode_dataset(tiny_model, dataset, batch_size=8, dtype="float32")
    assert (encoded.query_ids, encoded.doc_ids) == by_id
    scored = score(tiny_model.distance, encoded, dataset, k=10, k_values=[1, 5, 10], isotropy_sample=30)
    direct = evaluate_dataset(tiny_model, dataset, order="id", corpus_chunk_size=None, shard=False,
                              isotropy_sample=30, **common)
    for key in ("results", "metrics", "per_query", "isotropy"):
        assert scored[key] == direct[key], key
    assert scored["counts"] == {"queries": 9, "documents": 37}
    assert scored["metrics"]["NDCG@10"] == pytest.approx(whole["metrics"]["NDCG@10"], abs=1e-6)  # no ties here
