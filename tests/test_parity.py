"""The embedded all-MiniLM-L6-v2 encoder equals sentence-transformers on real BEIR texts."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def real_texts(data_dir, n=150):
    texts = []
    for dataset, file in [("scifact", "queries.jsonl"), ("nq-utd", "corpus.jsonl"), ("nfcorpus", "corpus.jsonl")]:
        with open(data_dir / dataset / file) as fh:
            for line, _ in zip(fh, range(n // 3)):
                row = json.loads(line)
                texts.append(((row.get("title") or "") + " " + row["text"]).strip())
    return texts


def test_embedded_encoder_matches_sentence_transformers(data_dir, minilm_model):
    from sentence_transformers import SentenceTransformer

    from ragcun.encoders.embedded import embedded_model_path

    texts = real_texts(data_dir)
    assert len(texts) >= 100 and any(len(t) > 2000 for t in texts)  # long ones exercise truncation at 256
    ours = minilm_model.encode(texts, batch_size=16)
    st_model = SentenceTransformer(embedded_model_path(), device="cpu", local_files_only=True)
    theirs = st_model.encode(texts, batch_size=16, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (len(texts), 384)
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cosine.min() > 0.9999, f"worst text: {texts[int(cosine.argmin())][:80]!r} cos={cosine.min()}"
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
