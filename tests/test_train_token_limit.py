"""Training's --max-seq-length truncates texts while training only: the saved model keeps its encoder's limit."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_training_limit_truncates_training_texts_and_is_not_saved(tiny_model_dir, tmp_path):
    from ragcun.model import load
    from ragcun.training.config import TrainConfig
    from ragcun.training.setup import build_training_model

    config = TrainConfig(output_dir=str(tmp_path / "run"), train_data="x", encoder=f"hf:{tiny_model_dir}",
                         head="identity", distance="cosine", steps=1, max_seq_length=8).validate()
    model = build_training_model(config)
    long_text = " ".join(["word"] * 100)
    assert model.tokenize([long_text])["input_ids"].shape[1] == 8
    own = model.encoder.max_seq_length
    assert own > 8 and model.encoder.tokenize([long_text])["input_ids"].shape[1] == own
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "ragcun.json").read_text())["encoder"]["config"]["max_seq_length"] == own
    assert load(tmp_path / "saved").tokenize([long_text])["input_ids"].shape[1] == own
    with pytest.raises(ValueError, match="--max-seq-length must be a positive integer"):
        TrainConfig(train_data="x", steps=1, max_seq_length=0).validate()
