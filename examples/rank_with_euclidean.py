"""Rank a few documents for a query with the embedded model under three distances.

    python examples/rank_with_euclidean.py

A fresh gaussian head is initialised orthogonally, so before training it ranks exactly like the encoder
under Euclidean distance; cosine and Euclidean agree here because all-MiniLM-L6-v2 outputs unit vectors.
"""

import ragcun

QUERY = "How do vaccines train the immune system?"
DOCS = [
    "Vaccines expose the immune system to a harmless piece of a pathogen so it learns to recognise it.",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates.",
    "Antibodies produced after vaccination remember the antigen and respond faster to later infections.",
    "A recipe for sourdough bread needs flour, water, salt and a starter culture.",
]

for head, distance in [("identity", "cosine"), ("identity", "euclidean"), ("gaussian", "euclidean")]:
    model = ragcun.build_model("all-minilm-l6-v2", head=head, distance=distance)
    q = model.encode_embeddings([QUERY])
    d = model.encode_embeddings(DOCS)
    scores = model.distance.similarity(q, d)[0]
    order = scores.argsort(descending=True).tolist()
    print(f"{head:>8} + {distance:<9} ranking: {order}  scores: {[round(float(scores[i]), 3) for i in order]}")
