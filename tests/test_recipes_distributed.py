"""The recipe losses on 2 gloo ranks: margin-mse, distill-kl and matryoshka give the single-process loss and
gradients on the concatenated batch (the convention of tests/test_losses_distributed.py: the rank average of
the per-rank losses is the single-process loss; each rank's gradient divided by the world size is the
single-process gradient of its slice), for equal and unequal rank batches."""

from __future__ import annotations

import pytest
import torch

from ragcun.testing.distributed import run_on_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

WORLD = 2
D, K = 6, 2
POSITIVE_IDS = ["d0", "d1", "d2", "d3", "d4", "d0"]
NEGATIVE_IDS = ["d3", "x0", "d1", "x1", "d4", "x2", "x3", "d0", "x4", "x5", "d0", "x6"]

CASES = {
    # spec, settings, distance
    "margin-mse-euclidean": ("distill-margin-mse", {"margin-mse": {"teacher_scale": 0.5}}, "euclidean"),
    "margin-mse-cosine+isotropy": ("margin-mse+0.2*isotropy", {"isotropy": {"num_slices": 16}}, "cosine"),
    "distill-kl-sqeuclidean": ("distill-kl", {"distill-kl": {"temperature": 0.5, "teacher_temperature": 2.0}},
                               "sqeuclidean"),
    "distill-kl-wasserstein": ("distill-kl", {"distill-kl": {"temperature": 0.7}}, "wasserstein"),
    "matryoshka-contrastive": ("matryoshka:contrastive", {"matryoshka": {"dims": [6, 3, 2]},
                                                          "contrastive": {"temperature": 0.1}}, "euclidean"),
    "matryoshka-margin-mse+isotropy": ("matryoshka:margin-mse+0.1*isotropy",
                                       {"matryoshka": {"dims": [6, 4], "weights": [1.0, 3.0]},
                                        "isotropy": {"num_slices": 8}}, "sqeuclidean"),
}


def _data(total: int):
    g = torch.Generator().manual_seed(4321)
    q = torch.randn(total, D, generator=g)
    p = q + 0.5 * torch.randn(total, D, generator=g)
    n = torch.randn(total * K, D, generator=g)
    lv = [0.3 * torch.randn(m, D, generator=g) for m in (total, total, total * K)]
    teacher = torch.randn(total, 1 + K, generator=g) * 2
    return q, p, n, lv, teacher


def _compute(case: str, split: list[int], rank: int):
    import warnings

    from ragcun.components import build
    from ragcun.embedding import Embedding
    from ragcun.losses.base import LossInputs
    from ragcun.losses.composite import build_loss

    spec, settings, distance = CASES[case]
    settings = {name: dict(values) for name, values in settings.items()}
    for name in ("margin-mse", "distill-kl"):  # build_loss ignores the settings of a loss the spec does not name
        settings.setdefault(name, {})["check_scale"] = False
    total = sum(split)
    q, p, n, lv, teacher = _data(total)
    start = sum(split[:rank])
    stop = start + split[rank]
    rows, neg_rows = slice(start, stop), slice(start * K, stop * K)
    leaves = {"q": q[rows], "p": p[rows], "n": n[neg_rows], "q_lv": lv[0][rows], "p_lv": lv[1][rows],
              "n_lv": lv[2][neg_rows]}
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    inputs = LossInputs(Embedding(leaves["q"], leaves["q_lv"]), Embedding(leaves["p"], leaves["p_lv"]),
                        Embedding(leaves["n"], leaves["n_lv"]), positive_ids=POSITIVE_IDS[rows],
                        negative_ids=NEGATIVE_IDS[neg_rows], step=5, teacher_scores=teacher[rows])
    loss = build_loss(spec, {"loss": settings}, distance=build("distance", distance), dim=D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scale warning: every distillation term has check_scale=false
        value = loss(inputs).total
    value.backward()
    grads = {k: v.grad.clone() if v.grad is not None else torch.zeros_like(v) for k, v in leaves.items()}
    return value.detach(), grads


def _worker(rank: int, world_size: int, split: list[int]):
    out = {}
    for case in CASES:
        value, grads = _compute(case, split, rank)
        out[case] = (value.numpy(), {k: g.numpy() for k, g in grads.items()})
    return out


def _check(split: list[int]):
    results = run_on_ranks(_worker, WORLD, split, timeout=240)
    for case in CASES:
        ref_value, ref_grads = _compute(case, [sum(split)], 0)
        values = torch.stack([torch.as_tensor(results[r][case][0]) for r in range(WORLD)])
        torch.testing.assert_close(values.mean(), ref_value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, case=case: f"{case}: {m}")
        for key, ref in ref_grads.items():
            got = torch.cat([torch.as_tensor(results[r][case][1][key]) for r in range(WORLD)]) / WORLD
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, case=case, key=key: f"{case} grad {key}: {m}")


def test_two_ranks_equal_batches_match_one_process():
    _check([3, 3])


def test_two_ranks_unequal_batches_match_one_process():
    _check([2, 4])
