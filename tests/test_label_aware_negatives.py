"""Label-aware in-batch negatives: a candidate judged relevant to a query (training qrels) is never one of its
negatives, on one process and across gloo ranks; and ``--no-duplicate-queries``, which keeps each query to one
pair per global batch.

The contrastive loss takes ``LossInputs.relevant_ids`` (per query, the ids of documents judged relevant to it);
:class:`ragcun.data.training.BatchStream` fills them from the training data (BEIR qrels, JSONL ``pos`` lists,
identical query text = the same query), trimmed to the candidates of the global batch.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ragcun.components import build
from ragcun.data.training import (BatchStream, DataPosition, JsonlExamples, TrainingExample, TrainingSource,
                                  batch_relevance, distinct_query_order, query_key)
from ragcun.distances.base import exact_similarity
from ragcun.embedding import Embedding
from ragcun.losses.base import LossInputs
from ragcun.losses.contrastive import ContrastiveLoss
from ragcun.testing.distributed import run_on_ranks

D = 5
FAST = settings(max_examples=40, deadline=None)
IDS = ["a", "b", "c", "d", "e", "f"]


# -- the loss: properties against a float64 reference ---------------------------------------------------------
@st.composite
def labelled(draw, min_b=1, max_b=6, max_k=2):
    """(q, p, n or None, positive ids, negative ids, relevant ids per query) with colliding ids."""
    b = draw(st.integers(min_b, max_b))
    k = draw(st.integers(0, max_k))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    q, p = (torch.randn(m, D, generator=g) * scale for m in (b, b))
    n = torch.randn(b * k, D, generator=g) * scale if k else None
    ids = st.sampled_from(IDS)
    pos_ids = draw(st.lists(ids, min_size=b, max_size=b))
    neg_ids = draw(st.lists(ids, min_size=b * k, max_size=b * k)) if k else None
    relevant = draw(st.lists(st.lists(ids, max_size=4), min_size=b, max_size=b))
    return q, p, n, pos_ids, neg_ids, relevant


def _inputs(q, p, n, pos_ids, neg_ids, relevant):
    return LossInputs(Embedding(q), Embedding(p), None if n is None else Embedding(n), positive_ids=pos_ids,
                      negative_ids=neg_ids, relevant_ids=relevant)


def _reference(q, p, n, pos_ids, neg_ids, relevant, distance, tau, symmetric):
    """InfoNCE in float64, written out: row i's log-softmax over the candidates that are not masked, where a
    candidate (not row i's own positive column) is masked when its id is i's positive's or in relevant[i]."""
    cands = p if n is None else torch.cat([p, n])
    cand_ids = pos_ids + (neg_ids or [])
    judged = [{pos_ids[i], *(relevant[i] if relevant is not None else ())} for i in range(len(q))]
    sims = exact_similarity(distance, Embedding(q.double()), Embedding(cands.double())) / tau
    rows = []
    for i in range(len(q)):
        keep = [j for j in range(len(cands)) if j == i or cand_ids[j] not in judged[i]]
        rows.append(torch.logsumexp(sims[i, keep], 0) - sims[i, i])
    losses = torch.stack(rows)
    if symmetric:
        d2q = exact_similarity(distance, Embedding(p.double()), Embedding(q.double())) / tau
        back = []
        for j in range(len(q)):
            keep = [k for k in range(len(q)) if k == j or pos_ids[j] not in judged[k]]
            back.append(torch.logsumexp(d2q[j, keep], 0) - d2q[j, j])
        losses = 0.5 * (losses + torch.stack(back))
    return losses.mean()


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine", "dot"])
@pytest.mark.parametrize("symmetric", [False, True])
@FAST
@given(batch=labelled())
def test_loss_equals_the_float64_reference(distance, symmetric, batch):
    dist = build("distance", distance)
    loss = ContrastiveLoss(dist, temperature=0.5, symmetric=symmetric)
    got = loss(_inputs(*batch))
    expected = _reference(*batch, dist, 0.5, symmetric)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


@FAST
@given(batch=labelled(min_b=2, max_k=0))
def test_without_relevance_lists_the_reference_is_todays_duplicate_masking(batch):
    q, p, n, pos_ids, neg_ids, _ = batch
    dist = build("distance", "euclidean")
    got = ContrastiveLoss(dist, temperature=0.5)(_inputs(q, p, n, pos_ids, neg_ids, None))
    torch.testing.assert_close(got.double(), _reference(q, p, n, pos_ids, neg_ids, None, dist, 0.5, False),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("symmetric", [False, True])
@FAST
@given(batch=labelled(max_k=3), data=st.data())
def test_masking_a_candidate_equals_removing_it(symmetric, batch, data):
    """Hard-negative slot s of every query judged relevant to every query: the loss is the loss without that
    slot (K - 1 negatives per query), and the removed rows get no gradient."""
    q, p, n, pos_ids, neg_ids, relevant = batch
    if n is None:
        return
    b, k = len(q), len(n) // len(q)
    slot = data.draw(st.integers(0, k - 1))
    in_slot = [i * k + slot for i in range(b)]
    neg_ids = [f"m{j}" if j in in_slot else f"u{j}" for j in range(len(n))]  # distinct ids, none relevant
    everyone = [f"m{j}" for j in in_slot]
    loss = ContrastiveLoss(build("distance", "euclidean"), temperature=0.3, symmetric=symmetric)
    n = n.clone().requires_grad_(True)
    masked = loss(_inputs(q, p, n, pos_ids, neg_ids, [r + everyone for r in relevant]))
    masked.backward()
    keep = [j for j in range(len(n)) if j not in in_slot]
    removed = loss(_inputs(q, p, n.detach()[keep] if keep else None, pos_ids,
                           [neg_ids[j] for j in keep] if keep else None, relevant))
    torch.testing.assert_close(masked, removed, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(n.grad[in_slot]) == 0


@pytest.mark.parametrize("symmetric", [False, True])
@FAST
@given(batch=labelled(min_b=2))
def test_a_batch_with_no_shared_queries_gives_exactly_todays_loss(symmetric, batch):
    """Relevance lists that name only the query's own positive, or documents not in the batch, change nothing:
    the value and the gradients are bit for bit those without relevance lists."""
    q, p, n, pos_ids, neg_ids, _ = batch
    loss = ContrastiveLoss(build("distance", "euclidean"), temperature=0.2, symmetric=symmetric)
    results = []
    for relevant in (None, [[d, "not-in-batch"] for d in pos_ids]):
        leaves = [t.clone().requires_grad_(True) for t in (q, p)]
        value = loss(_inputs(*leaves, n, pos_ids, neg_ids, relevant))
        value.backward()
        results.append((value.detach(), [t.grad for t in leaves]))
    (v0, g0), (v1, g1) = results
    assert torch.equal(v0, v1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_the_label_column_is_never_masked_and_mask_duplicates_false_masks_nothing():
    q = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = q + 0.1
    pos_ids, relevant = ["a", "b", "c"], [["a", "b", "c"], ["a", "b", "c"], ["c"]]
    dist = build("distance", "euclidean")
    loss = ContrastiveLoss(dist, temperature=1.0)
    got = loss(_inputs(q, p, None, pos_ids, None, relevant))
    # queries 0 and 1 keep only their own positive (loss 0); query 2 keeps all three
    expected = _reference(q, p, None, pos_ids, None, relevant, dist, 1.0, False)
    torch.testing.assert_close(got.double(), expected)
    row2 = -torch.log_softmax(dist.similarity(Embedding(q), Embedding(p))[2], 0)[2]
    torch.testing.assert_close(got, row2 / 3)
    plain = ContrastiveLoss(dist, temperature=1.0, mask_duplicates=False)
    assert torch.equal(plain(_inputs(q, p, None, pos_ids, None, relevant)),
                       plain(_inputs(q, p, None, None, None, None)))
    with pytest.raises(ValueError, match="relevant ids for 2 queries, expected 3"):
        loss(_inputs(q, p, None, pos_ids, None, relevant[:2]))


# -- the loss on 2 gloo ranks ---------------------------------------------------------------------------------
K = 2
# queries 0, 1 and 4 are one query (its documents a0, a1, a2); query 2 finds b0 relevant and also a hard
# negative of query 1 (n3) and query 5's positive (d0); query 5's first hard negative is a2, relevant to queries
# 0, 1, 4. With [3, 3] or [2, 4] ranks much of this crosses ranks; the relevance lists have different widths.
POSITIVE_IDS = ["a0", "a1", "b0", "c0", "a2", "d0"]
NEGATIVE_IDS = ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "a2", "n11"]
RELEVANT = [["a0", "a1", "a2"], ["a1", "a0", "a2"], ["b0", "n3", "d0"], ["c0"], ["a2", "a0", "a1", "zz"], ["d0"]]
DIST_CASES = {
    "euclidean": ({"temperature": 0.1}, "euclidean", True),
    "symmetric-learnable": ({"temperature": 0.2, "symmetric": True, "learnable_temperature": True}, "sqeuclidean",
                            True),
    "cosine-noneg-symmetric": ({"temperature": 0.05, "symmetric": True}, "cosine", False),
}


def _dist_compute(case: str, split: list[int], rank: int, relevant: bool = True):
    settings_, distance, with_negatives = DIST_CASES[case]
    g = torch.Generator().manual_seed(99)
    total = sum(split)
    q = torch.randn(total, D, generator=g)
    p = q + torch.randn(total, D, generator=g)
    n = torch.randn(total * K, D, generator=g)
    start = sum(split[:rank])
    rows, neg_rows = slice(start, start + split[rank]), slice(start * K, (start + split[rank]) * K)
    leaves = {"q": q[rows].clone().requires_grad_(True), "p": p[rows].clone().requires_grad_(True),
              "n": n[neg_rows].clone().requires_grad_(True)}
    inputs = LossInputs(Embedding(leaves["q"]), Embedding(leaves["p"]),
                        Embedding(leaves["n"]) if with_negatives else None, positive_ids=POSITIVE_IDS[rows],
                        negative_ids=NEGATIVE_IDS[neg_rows] if with_negatives else None, step=3,
                        relevant_ids=RELEVANT[rows] if relevant else None)
    loss = ContrastiveLoss(build("distance", distance), **settings_)
    value = loss(inputs)
    value.backward()
    grads = {k: v.grad.clone() for k, v in leaves.items() if k != "n" or with_negatives}
    grads.update({f"param:{k}": t.grad.clone() for k, t in loss.named_parameters()})
    return value.detach(), grads


def _dist_worker(rank: int, world_size: int, split: list[int]):
    out = {}
    for case in DIST_CASES:
        value, grads = _dist_compute(case, split, rank)
        out[case] = (value.numpy(), {k: g.numpy() for k, g in grads.items()})
    return out


@pytest.mark.distributed
@pytest.mark.slow  # two spawned gloo ranks: about 5 s of wall time on a busy 2-core machine
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("split", [[3, 3], [2, 4]])
def test_two_ranks_mask_relevant_documents_of_the_other_rank_like_one_process(split):
    results = run_on_ranks(_dist_worker, 2, split, timeout=240)
    for case in DIST_CASES:
        ref_value, ref_grads = _dist_compute(case, [sum(split)], 0)
        plain_value, _ = _dist_compute(case, [sum(split)], 0, relevant=False)
        assert abs(float(ref_value) - float(plain_value)) > 1e-3, case  # the relevance lists do mask something
        values = torch.stack([torch.as_tensor(results[r][case][0]) for r in range(2)])
        torch.testing.assert_close(values.mean(), ref_value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, case=case: f"{case}: {m}")
        for key, ref in ref_grads.items():
            if key.startswith("param:"):
                got = torch.stack([torch.as_tensor(results[r][case][1][key]) for r in range(2)]).mean(0)
            else:
                got = torch.cat([torch.as_tensor(results[r][case][1][key]) for r in range(2)]) / 2
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, case=case, key=key: f"{case} grad {key}: {m}")


# -- the data path ----------------------------------------------------------------------------------------------
def test_batch_relevance_pools_a_query_and_keeps_only_the_batch_candidates():
    ex = [TrainingExample("q one", "text", [], "q1", "d1", ["n1"], ["d1", "d2", "d9"]),
          TrainingExample("q two", "text", [], "q2", "d2", ["d1"], ["d2"]),
          TrainingExample("q one", "text", [], "q1", "d3", ["n3"], ["d1", "d2", "d9"]),  # d3 unjudged: pooled
          TrainingExample("same text, no id", "t", [], None, "p1", [], ["p1", "p4"]),
          TrainingExample("same text, no id", "t", [], None, "p2", ["p4"], ["p2"])]
    assert batch_relevance(ex, 1) == [["d1", "d2", "d3"], ["d2"], ["d1", "d2", "d3"], ["p1", "p2", "p4"],
                                      ["p1", "p2", "p4"]]
    assert batch_relevance(ex, 0) == [["d1", "d2", "d3"], ["d2"], ["d1", "d2", "d3"], ["p1", "p2"], ["p1", "p2"]]
    assert batch_relevance([TrainingExample("q", "p")], 0) is None  # no ids, nothing to compare


def _write_repeated_queries(path, queries: int, per_query: int):
    with path.open("w") as fh:
        for q in range(queries):
            for j in range(per_query):
                fh.write(json.dumps({"query": f"query {q}", "pos": [f"passage {q}.{j}", f"passage {q}.x"],
                                     "neg": [f"negative {q}.{j}"]}) + "\n")
    return path


def test_jsonl_batches_carry_relevance_and_the_loss_masks_same_query_pairs(tmp_path):
    source = JsonlExamples(_write_repeated_queries(tmp_path / "t.jsonl", 6, 4), seed=0, negatives=1, buffer=24)
    batch = BatchStream(source, 12).next_batch()
    by_query = {}
    for query, positive in zip(batch.queries, batch.positives):
        by_query.setdefault(query, set()).add(positive)
    assert any(len(v) > 1 for v in by_query.values())  # the default order puts pairs of one query together
    for query, relevant in zip(batch.queries, batch.relevant_ids):
        assert by_query[query] <= set(relevant)
        assert set(relevant) <= set(batch.positive_ids) | set(batch.negative_ids)


class ListSource(TrainingSource):
    """In memory: examples of the given queries, shuffled per (seed, epoch)."""

    def __init__(self, query_of: list[str], seed: int = 0) -> None:
        self.query_of, self.seed = query_of, seed

    def __len__(self) -> int:
        return len(self.query_of)

    def examples(self, epoch: int, start: int = 0):
        order = list(range(len(self.query_of)))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        for i in order[start:]:
            yield TrainingExample(f"text of {self.query_of[i]}", f"doc {i}", [], self.query_of[i], f"d{i}", [],
                                  [f"d{i}"])


@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.integers(1, 6), min_size=1, max_size=25), batch_size=st.integers(1, 8),
       seed=st.integers(0, 1000), tail_batches=st.sampled_from([0, 1, 2, 8]))
def test_distinct_query_order_is_a_permutation_that_repeats_a_query_only_where_it_must(counts, batch_size, seed,
                                                                                      tail_batches):
    query_of = [f"q{q}" for q, c in enumerate(counts) for _ in range(c)]
    original = list(ListSource(query_of, seed).examples(0))
    order = list(distinct_query_order(original, batch_size, tail_batches))
    assert sorted(e.positive_id for e in order) == sorted(e.positive_id for e in original)  # each exactly once
    again = distinct_query_order(list(ListSource(query_of, seed).examples(0)), batch_size, tail_batches)
    assert [e.positive_id for e in again] == [e.positive_id for e in order]  # deterministic
    full = len(order) // batch_size
    for b in range(full):
        if len({query_key(e) for e in order[b * batch_size:(b + 1) * batch_size]}) < batch_size:
            # only in an end stretch where some query has more examples than the stretch has batches, so that
            # no order of that stretch could avoid a repeat
            assert any(max(Counter(query_key(e) for e in order[s * batch_size:]).values()) > full - s
                       for s in range(b + 1))
            break


def test_the_end_of_an_epoch_is_re_dealt_instead_of_repeating_queries():
    # greedy alone ends with "q0 q0 q0 q0" style batches: q0 comes last, four times, after 12 singletons
    examples = [TrainingExample(f"s{i}", "d", [], None, f"s{i}") for i in range(12)]
    examples += [TrainingExample("q0", "d", [], None, f"q0-{i}") for i in range(4)]
    greedy = list(distinct_query_order(examples, 4, tail_batches=0))
    assert len({e.query for e in greedy[12:]}) == 1  # what the greedy pass alone would leave
    order = list(distinct_query_order(examples, 4))
    assert all(len({e.query for e in order[b:b + 4]}) == 4 for b in range(0, 16, 4))
    assert sorted(e.positive_id for e in order) == sorted(e.positive_id for e in examples)


def _drain(stream: BatchStream, n: int):
    return [(b.queries, b.positive_ids) for b in (stream.next_batch() for _ in range(n))]


def test_no_duplicate_queries_stream_every_example_once_no_repeat_deterministic_resumable(tmp_path):
    query_of = [f"q{q}" for q in range(40) for _ in range(1 + q % 3)]  # 79 examples; 2 queries x 3 twice...
    query_of = query_of[:72]  # 72 = 9 global batches of 8: every example used each epoch
    source = ListSource(query_of, seed=5)
    plain = _drain(BatchStream(source, 8), 9)
    assert any(len(set(q)) < 8 for q, _ in plain)  # without the option, some batch repeats a query
    stream = BatchStream(source, 8, no_duplicate_queries=True)
    epoch = _drain(stream, 9)
    assert stream.state.as_dict() == {"epoch": 0, "position": 72}
    assert all(len(set(q)) == 8 for q, _ in epoch)
    assert Counter(d for _, ids in epoch for d in ids) == Counter(f"d{i}" for i in range(72))
    full = _drain(BatchStream(source, 8, no_duplicate_queries=True), 14)  # into the next epoch
    assert full[:9] == epoch and full[9:] != epoch[:5]  # the next epoch is another order
    assert _drain(BatchStream(ListSource(query_of, seed=6), 8, no_duplicate_queries=True), 9) != epoch
    resumed = BatchStream(source, 8, no_duplicate_queries=True, position=DataPosition(0, 40))
    assert _drain(resumed, 9) == full[5:]  # resuming mid-epoch continues the same order, across the epoch end
    ranks = [_drain(BatchStream(source, 4, rank=r, world_size=2, no_duplicate_queries=True), 9) for r in range(2)]
    assert [(a[0] + b[0], a[1] + b[1]) for a, b in zip(*ranks)] == epoch  # per global batch, split over ranks


def test_training_passes_relevance_and_no_duplicate_queries_to_the_loss(tiny_model_dir, tmp_path, monkeypatch):
    from _training_helpers import tiny_config

    from ragcun.training.loop import train

    seen = []
    original = ContrastiveLoss._forward

    def spy(self, inputs):
        seen.append(inputs.relevant_ids)
        return original(self, inputs)

    monkeypatch.setattr(ContrastiveLoss, "_forward", spy)
    data = _write_repeated_queries(tmp_path / "t.jsonl", 8, 3)
    train(tiny_config(tiny_model_dir, tmp_path / "run", data, steps=2, no_duplicate_queries=True, save_every=10))
    assert len(seen) == 2 and all(r is not None and len(r) == 4 for r in seen)
    assert all(len(judged) == 1 for r in seen for judged in r)  # one pair per query: its own positive only
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["no_duplicate_queries"] is True


# -- real data: NFCorpus train ----------------------------------------------------------------------------------
def _codes(values: list[str]) -> torch.Tensor:  # equal strings, equal integers
    first = {}
    return torch.tensor([first.setdefault(v, len(first)) for v in values])


def _masked_counts(batch) -> dict[str, int]:
    """What the loss masks in one batch (the -inf logits it computes), split by why: the same document as the
    query's positive (masked before too), another pair of the same query, a document another query brought
    that the qrels judge relevant to this one."""
    logits = []
    saved = ContrastiveLoss.__dict__["_mask"]  # the staticmethod itself, to put back as it was
    original = ContrastiveLoss._mask

    def recording(scores, relevant, labels):
        logits.append(original(scores, relevant, labels))
        return logits[-1]

    b = len(batch)
    inputs = {"queries": Embedding(torch.randn(b, 4)), "positives": Embedding(torch.randn(b, 4)),
              "positive_ids": batch.positive_ids}
    ContrastiveLoss._mask = staticmethod(recording)
    try:
        ContrastiveLoss()(LossInputs(**inputs, relevant_ids=batch.relevant_ids))
        ContrastiveLoss()(LossInputs(**inputs))  # the rule before: duplicates of the positive only
    finally:
        ContrastiveLoss._mask = saved
    masked, before = (torch.isinf(x) for x in logits)
    query, doc = _codes(batch.queries), _codes(batch.positive_ids)
    same_doc = doc[:, None] == doc[None, :]
    same_query = (query[:, None] == query[None, :]) & ~same_doc  # other pairs of the same query
    counts = Counter(masked_before=int(before.sum()), duplicate_documents=int((masked & same_doc).sum()),
                     same_query=int((masked & same_query).sum()),
                     other_queries=int((masked & ~same_doc & ~same_query).sum()))
    assert counts["same_query"] == int(same_query.sum())  # every other pair of the same query is masked
    assert counts["duplicate_documents"] == counts["masked_before"]
    counts["masked"] = int(masked.sum())
    return counts


@pytest.mark.parametrize("no_duplicate_queries", [False, True])
def test_nfcorpus_batches_of_64_mask_relevant_in_batch_candidates(data_dir, no_duplicate_queries):
    from ragcun.training.config import TrainConfig
    from ragcun.training.setup import training_data

    if not (data_dir / "nfcorpus" / "qrels" / "train.tsv").is_file():
        pytest.skip("nfcorpus train split not present")
    config = TrainConfig(train_data="beir:nfcorpus:train", data_dir=str(data_dir), batch_size=64, steps=1,
                         no_duplicate_queries=no_duplicate_queries)
    _, stream = training_data(config, None, SimpleNamespace(rank=0, world_size=1))
    steps = 100
    totals, repeated = Counter(), 0
    for _ in range(steps):
        batch = stream.next_batch()
        repeated += len(set(batch.queries)) < len(batch)
        totals.update(_masked_counts(batch))
    per_batch = {k: round(v / steps, 2) for k, v in totals.items()}
    print(f"\nnfcorpus train, {steps} batches of 64, no_duplicate_queries={no_duplicate_queries}: "
          f"{repeated} batches repeat a query; masked (query, candidate) pairs per batch {per_batch}")
    if no_duplicate_queries:
        assert repeated == 0 and totals["same_query"] == 0  # each query once: no same-query pair to mask
    else:
        assert repeated > steps // 2 and totals["same_query"] > steps  # ~5 same-query pairs in a batch of 64
    # NFCorpus qrels share documents between queries: most masked candidates are another query's positives
    assert totals["other_queries"] > totals["same_query"] and totals["other_queries"] > 0
