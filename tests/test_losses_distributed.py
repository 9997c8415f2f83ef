"""Distributed exactness: 2 gloo ranks give the single-process loss and gradients on the concatenated batch.

Convention (see ragcun.distributed): DDP averages gradients over ranks, so the objective is the rank average
of the per-rank losses. We check  mean_r(value_r) == value_single  and  grad_r / world_size == the
single-process gradient of rank r's slice, for every input embedding (and learnable loss parameters, whose
DDP gradient is the rank average).
"""

from __future__ import annotations

import pytest
import torch

from ragcun.testing.distributed import run_on_ranks

# 2 gloo ranks: ~3 s of CPU per rank, 5-6 s of wall time each on a busy 2-core machine
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


WORLD = 2
D, K = 6, 2
# positives: "d0" is the positive of query 0 (rank 0) and of query 5 (rank 1 in the equal split);
# negatives: some repeat a query's own positive (masked), others are other queries' positives (kept).
POSITIVE_IDS = ["d0", "d1", "d2", "d3", "d4", "d0"]
NEGATIVE_IDS = ["d3", "x0", "d1", "x1", "d4", "x2", "x3", "d0", "x4", "x5", "d0", "x6"]

CASES = {
    "contrastive-euclidean-ids": ("contrastive", {"temperature": 0.1}, "euclidean", True, True),
    "contrastive-sym-learnable": ("contrastive", {"temperature": 0.2, "symmetric": True,
                                                  "learnable_temperature": True}, "sqeuclidean", True, True),
    "contrastive-cosine-noneg": ("contrastive", {"temperature": 0.05}, "cosine", False, False),
    "contrastive-wasserstein": ("contrastive", {"temperature": 0.5}, "wasserstein", True, True),
    "isotropy": ("isotropy", {"num_slices": 32}, None, True, False),
    "isotropy-projector": ("isotropy", {"num_slices": 16, "projector_dim": 4, "projector_hidden": 8}, None, True,
                           False),
    "isotropy-queries": ("isotropy", {"num_slices": 16, "apply_to": "queries", "num_points": 9}, None, False, False),
    "variance-covariance": ("variance-covariance", {}, None, True, False),
    "uniformity": ("uniformity", {}, None, True, False),
    "uniformity-raw": ("uniformity", {"normalize": False, "t": 0.05}, None, True, False),
    "norm": ("norm", {}, None, True, False),
    "gaussian-kl": ("gaussian-kl", {}, "wasserstein", True, False),
}


def _data(total: int, logvar: bool):
    g = torch.Generator().manual_seed(1234)
    q = torch.randn(total, D, generator=g)
    p = q + 0.5 * torch.randn(total, D, generator=g)
    n = torch.randn(total * K, D, generator=g)
    lv = [0.3 * torch.randn(m, D, generator=g) for m in (total, total, total * K)] if logvar else [None] * 3
    return q, p, n, lv


def _compute(case: str, split: list[int] | None, rank: int):
    """Loss value and gradients on rank ``rank``'s slice of ``split`` (or the whole batch when split is None)."""
    from ragcun.components import build
    from ragcun.embedding import Embedding
    from ragcun.losses.base import LossInputs

    name, settings, distance, with_negatives, with_ids = CASES[case]
    needs_logvar = distance == "wasserstein"
    total = sum(split) if split else 6
    q, p, n, lv = _data(total, needs_logvar)
    start = sum(split[:rank]) if split else 0
    stop = start + (split[rank] if split else total)
    rows = slice(start, stop)
    neg_rows = slice(start * K, stop * K)
    leaves = {"q": q[rows], "p": p[rows], "n": n[neg_rows]}
    if needs_logvar:
        leaves.update(q_lv=lv[0][rows], p_lv=lv[1][rows], n_lv=lv[2][neg_rows])
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    inputs = LossInputs(
        Embedding(leaves["q"], leaves.get("q_lv")), Embedding(leaves["p"], leaves.get("p_lv")),
        Embedding(leaves["n"], leaves.get("n_lv")) if with_negatives else None,
        positive_ids=POSITIVE_IDS[rows] if with_ids else None,
        negative_ids=NEGATIVE_IDS[neg_rows] if with_ids and with_negatives else None, step=7)
    dist_obj = build("distance", distance) if distance else None
    torch.manual_seed(0)  # loss parameters (a projector) start equal on every rank, as seeded training does
    loss = build("loss", name, {"loss": {name: settings}}, distance=dist_obj, dim=D)
    value = loss(inputs)
    value.backward()
    grads = {k: v.grad.clone() if v.grad is not None else torch.zeros_like(v)
             for k, v in leaves.items() if k != "n" or with_negatives}
    grads.update({f"param:{k}": p.grad.clone() for k, p in loss.named_parameters()})
    return value.detach(), grads


def _gather_check(rank: int, split: list[int]):
    """gather_with_grad on unequal slices: the concatenation in rank order, and gradient from every rank."""
    from ragcun.distributed import gather_with_grad, world

    assert world() == (rank, WORLD)
    full = torch.arange(sum(split) * 2, dtype=torch.float32).reshape(-1, 2)
    start = sum(split[:rank])
    local = full[start:start + split[rank]].clone().requires_grad_(True)
    gathered = gather_with_grad(local)
    weights = torch.arange(1, gathered.numel() + 1, dtype=torch.float32).reshape(gathered.shape) * (rank + 1)
    (gathered * weights).sum().backward()  # rank r weighs the gathered rows by (r + 1) * position
    return gathered.detach().numpy(), local.grad.numpy()


def _worker(rank: int, world_size: int, split: list[int]):
    # numpy, not tensors: run_on_ranks' torch queue shares tensors through file descriptors that vanish
    # when the worker exits, so tensors would not survive the trip back to the parent.
    out = {"gather": _gather_check(rank, split)}
    for case in CASES:
        value, grads = _compute(case, split, rank)
        out[case] = (value.numpy(), {k: g.numpy() for k, g in grads.items()})
    return out


def _check(split: list[int]):
    results = run_on_ranks(_worker, WORLD, split, timeout=240)
    full = torch.arange(sum(split) * 2, dtype=torch.float32).reshape(-1, 2)
    # every rank's loss used gathered row j with weight (r + 1) * position; the gradient sums them over ranks
    position = torch.arange(1, full.numel() + 1, dtype=torch.float32).reshape(full.shape)
    expected_grad = position * sum(r + 1 for r in range(WORLD))
    for r in range(WORLD):
        gathered, grad = results[r]["gather"]
        torch.testing.assert_close(torch.as_tensor(gathered), full)
        start = sum(split[:r])
        torch.testing.assert_close(torch.as_tensor(grad), expected_grad[start:start + split[r]])
    for case in CASES:
        ref_value, ref_grads = _compute_full(case, split)
        values = torch.stack([torch.as_tensor(results[r][case][0]) for r in range(WORLD)])
        torch.testing.assert_close(values.mean(), ref_value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, case=case: f"{case}: {m}")
        for key, ref in ref_grads.items():
            if key.startswith("param:"):
                got = torch.stack([torch.as_tensor(results[r][case][1][key]) for r in range(WORLD)]).mean(0)
            else:
                got = torch.cat([torch.as_tensor(results[r][case][1][key]) for r in range(WORLD)]) / WORLD
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, case=case, key=key: f"{case} grad {key}: {m}")


def _compute_full(case: str, split: list[int]):
    return _compute(case, [sum(split)], 0)


def test_two_ranks_equal_batches_match_one_process():
    _check([3, 3])


def test_two_ranks_unequal_batches_match_one_process():
    # the last batch of an epoch: ranks hold different numbers of queries
    _check([2, 4])
