"""The gaussian head's data-dependent calibration: SIGReg gets unit-scale coordinates, the ranking and the
initial InfoNCE logits stay exactly what they were."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ragcun.distributed import DistributedContext
from ragcun.heads.gaussian import GaussianHead
from ragcun.losses.base import LossInputs

SINGLE = DistributedContext()

pytestmark = pytest.mark.usefixtures("single_thread")


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g) + 0.5, dim=1)  # unit, off-centre


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 40), d=st.integers(2, 24), out=st.integers(2, 32), seed=st.integers(0, 10_000))
def test_calibrated_outputs_are_centred_with_unit_rms_spread(n, d, out, seed):
    torch.manual_seed(seed)
    head = GaussianHead(in_dim=d, out_dim=out)
    x = _unit(n, d, seed)
    factor = head.calibrate(x)
    y = head(x).mean.detach().double()
    assert factor > 0 and head.init_scale == pytest.approx(factor)
    assert y.mean(0).abs().max() < 1e-4
    assert float(y.var(0, unbiased=False).mean()) == pytest.approx(1.0, rel=1e-4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), center=st.booleans())
def test_calibration_changes_no_euclidean_ranking(seed, center):
    torch.manual_seed(seed)
    head = GaussianHead(in_dim=12, out_dim=20)
    probe, q, d = _unit(30, 12, seed), _unit(5, 12, seed + 1), _unit(40, 12, seed + 2)
    with torch.no_grad():
        before = torch.cdist(head(q).mean.double(), head(d).mean.double())
    factor = head.calibrate(probe, center=center)
    after = torch.cdist(head(q).mean.double(), head(d).mean.double())
    torch.testing.assert_close(after, before * factor, rtol=1e-4, atol=1e-4)


def test_without_centering_the_bias_stays_zero():
    head = GaussianHead(in_dim=6, out_dim=8)
    head.calibrate(_unit(20, 6, 0), center=False)
    assert torch.count_nonzero(head.mean.bias) == 0


def test_a_number_keeps_the_old_behaviour_and_bad_values_are_refused():
    head = GaussianHead(in_dim=4, out_dim=6, init_scale=3.0)
    assert not head.calibrates
    w = head.mean.weight.detach()
    torch.testing.assert_close(w.T @ w, 9.0 * torch.eye(4), atol=1e-5, rtol=0)
    for bad in (0, -1.0, "big", True):
        with pytest.raises(ValueError, match="init_scale"):
            GaussianHead(in_dim=4, init_scale=bad)
    with pytest.raises(ValueError, match="at least 2"):
        GaussianHead(in_dim=4).calibrate(torch.ones(1, 4))


@pytest.mark.parametrize("distance,degree", [("euclidean", 1), ("sqeuclidean", 2), ("dot", 2), ("cosine", 0)])
def test_calibrate_keeps_the_initial_contrastive_loss(tiny_model_dir, distance, degree):
    from ragcun.losses.composite import build_loss
    from ragcun.model import EmbeddingModel
    from ragcun.training.calibration import calibrate

    torch.manual_seed(0)
    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", distance, {"head": {"gaussian": {"out_dim": 16}}})
    model.eval()
    loss = build_loss("contrastive+isotropy", {"loss": {"isotropy": {"num_slices": 16}}}, distance=model.distance)
    queries = [f"what is item {i}" for i in range(6)]
    docs = [f"item {i} is a thing with the number {i} in it" for i in range(6)]

    def contrastive():
        with torch.no_grad():
            out = loss(LossInputs(model.embed(queries), model.embed(docs), step=0))
        return float(out.terms["contrastive"]), float(out.terms["isotropy"])

    c0, iso0 = contrastive()
    result = calibrate(model, loss, queries + docs, SINGLE)
    c1, iso1 = contrastive()
    assert result.temperature_factor == pytest.approx(result.factor ** degree)
    assert result.centered == (distance in ("euclidean", "sqeuclidean"))
    assert c1 == pytest.approx(c0, rel=1e-4, abs=1e-5)
    assert loss.losses["contrastive"].temperature == pytest.approx(0.05 * result.factor ** degree)
    if distance == "euclidean":
        assert iso1 < iso0  # unit-scale, centred coordinates: closer to N(0, I)


def _calibrate_on_rank(rank: int, world_size: int, features: torch.Tensor):
    """Each rank calibrates the same head on a slightly different probe (as devices whose reductions differ)."""
    from ragcun.distributed import DistributedContext

    torch.manual_seed(0)
    head = GaussianHead(in_dim=features.shape[1], out_dim=10)
    ctx = DistributedContext(rank=rank, world_size=world_size)
    factor = head.calibrate(features * (1 + 1e-3 * rank), center=True, ctx=ctx)
    return factor, head.init_scale, head.mean.weight.detach().clone(), head.mean.bias.detach().clone()


@pytest.mark.distributed
@pytest.mark.slow  # two spawned gloo ranks
def test_the_head_calibrates_itself_identically_on_every_rank():
    """The head, not the training code, makes every rank hold the same calibrated weights and factor: the
    average of what each rank computed alone (issue 26, section 5)."""
    from ragcun.testing.distributed import run_on_ranks

    features = _unit(24, 6, 3)
    ranks = run_on_ranks(_calibrate_on_rank, 2, features)
    alone = []
    for rank in range(2):
        torch.manual_seed(0)
        head = GaussianHead(in_dim=6, out_dim=10)
        alone.append((head.calibrate(features * (1 + 1e-3 * rank), center=True), head.mean.weight.detach().clone(),
                      head.mean.bias.detach().clone()))
    assert alone[0][0] != alone[1][0]  # the ranks did compute different values alone
    (f0, s0, w0, b0), (f1, s1, w1, b1) = ranks
    assert f0 == f1 == s0 == s1
    assert f0 == pytest.approx((alone[0][0] + alone[1][0]) / 2, rel=1e-6)
    assert torch.equal(w0, w1) and torch.equal(b0, b1)
    torch.testing.assert_close(w0, (alone[0][1] + alone[1][1]) / 2)
    torch.testing.assert_close(b0, (alone[0][2] + alone[1][2]) / 2)


def test_a_head_without_calibration_is_left_alone(tiny_model_dir):
    from ragcun.model import EmbeddingModel
    from ragcun.training.calibration import calibrate

    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "identity", "euclidean")
    assert calibrate(model, None, ["a", "b"], SINGLE) is None


def test_training_calibrates_once_records_it_and_resume_keeps_the_temperature(tiny_model_dir, tmp_path):
    from _training_helpers import tiny_config, write_pairs

    from ragcun.training import checkpoint as ckpt
    from ragcun.training.loop import train

    data = write_pairs(tmp_path / "train.jsonl", n=40)
    config = tiny_config(tiny_model_dir, tmp_path / "run", data, steps=4, save_every=2)
    train(config, stop_after=2)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    calibration = [r["calibration"] for r in records if "calibration" in r]
    assert len(calibration) == 1 and calibration[0]["factor"] > 0 and calibration[0]["centered"]
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "run"))
    saved_log_scale = float(state["loss"]["losses.contrastive.log_scale"])
    assert saved_log_scale == pytest.approx(math.log(1 / (0.05 * calibration[0]["temperature_factor"])), rel=1e-5)
    train(config, resume=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("calibration" in r for r in records) == 1  # the resumed run did not calibrate again
    # and its final model records the factor its head was calibrated with, as an uninterrupted run's does
    saved = json.loads((tmp_path / "run" / "ragcun.json").read_text())["head"]["config"]["init_scale"]
    assert saved == pytest.approx(calibration[0]["factor"], rel=1e-12)
    train(tiny_config(tiny_model_dir, tmp_path / "whole", data, steps=4, save_every=2))
    assert json.loads((tmp_path / "whole" / "ragcun.json").read_text())["head"]["config"]["init_scale"] == saved


def test_the_checks_draw_the_first_texts_of_epoch_0(tmp_path):
    """Calibration's probe alternates queries and documents; diagnostics, the scale probe and a fitted head take
    documents only (duplicates kept): the first texts of epoch 0, in the source's order."""
    from ragcun.data.training import TrainingExample
    from ragcun.training.samples import first_texts

    class Source:
        def examples(self, epoch):
            assert epoch == 0
            return iter([TrainingExample(query=f"q{i}", positive=f"d{i % 3}") for i in range(10)])

    assert first_texts(Source(), 5, queries=True) == ["q0", "d0", "q1", "d1", "q2"]
    assert first_texts(Source(), 4) == ["d0", "d1", "d2", "d0"]
    assert first_texts(Source(), 100) == [f"d{i % 3}" for i in range(10)]
    assert first_texts(Source(), 0) == [] and first_texts(Source(), 0, queries=True) == []


def test_the_warning_names_the_setting_when_calibration_cannot_help():
    from ragcun.losses.composite import build_loss
    from ragcun.training.loop import isotropy_scale_warning

    loss = build_loss("contrastive+isotropy")
    small = torch.nn.functional.normalize(torch.randn(32, 384), dim=1)
    warning = isotropy_scale_warning(loss, small)
    assert warning is not None and "head.gaussian.init_scale=auto" in warning
    assert isotropy_scale_warning(loss, torch.randn(32, 384)) is None


@pytest.mark.slow
def test_calibrated_minilm_ranks_exactly_like_the_base_model(data_dir):
    """NDCG at step 0 equals the base model's: the calibrated gaussian head on MiniLM, Euclidean distance,
    against MiniLM as its authors evaluate it (cosine), on nq-utd."""
    from ragcun.data.training import open_source
    from ragcun.evaluation.beir_eval import evaluate_beir
    from ragcun.losses.composite import build_loss
    from ragcun.model import EmbeddingModel
    from ragcun.training.calibration import calibrate
    from ragcun.training.samples import CALIBRATION_TEXTS, first_texts

    torch.manual_seed(0)
    model = EmbeddingModel.build("all-minilm-l6-v2", "gaussian", "euclidean")
    loss = build_loss("contrastive+isotropy", distance=model.distance)
    probe = first_texts(open_source("beir:scifact:train", data_dir=str(data_dir)), CALIBRATION_TEXTS, queries=True)
    calibration = calibrate(model, loss, probe, SINGLE)
    assert 15 < calibration.factor < 40  # MiniLM's unit vectors spread ~1/sqrt(384) per coordinate
    base = evaluate_beir("all-minilm-l6-v2", "nq-utd", data_dir, k=100, show_progress=False)
    calibrated = evaluate_beir(model, "nq-utd", data_dir, k=100, show_progress=False)
    for metric in ("NDCG@10", "Recall@100"):
        assert calibrated["datasets"]["nq-utd"][metric] == pytest.approx(base["datasets"]["nq-utd"][metric], abs=1e-4)
