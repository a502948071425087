"""The model registry: every family behind the one interface, looked up by ``model.kind``; exports
name their family, and exports written before the ``kind`` key load as assembled models."""

from __future__ import annotations

import json

import pytest
import torch

from train.config import ModelConfig, TaskConfig
from train.config.model import FAMILY_TRAITS
from train.models import FAMILIES, VideoModel, build_model, family, load_export
from train.models.registry import export_kind
from train.tasks import build_examples
from train.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(corpus=["What colour is the ball?", "The ball is red."] * 4, vocab_size=300)


def test_every_config_kind_is_a_registered_family_and_the_other_way_round():
    assert set(FAMILIES) == set(FAMILY_TRAITS)
    assert all(f.kind == kind for kind, f in FAMILIES.items())
    with pytest.raises(KeyError, match=r"model.kind 'nope' is not a registered model family.*assembled"):
        family("nope")


def test_build_collate_forward_export_load_through_the_interface(tok, tmp_path):
    """The loop's path with no family test: build -> collate -> model_inputs -> forward; export ->
    load_export (by the folder's kind) -> the same logits."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(), tok)
    assert isinstance(model, VideoModel)
    frames = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    sample = {"qid": "s/t/v/0", "frames": frames, "question": "What colour is the ball?",
              "options": ["red", "blue"], "answer": 0, "extra": {}, "reasoning": {"refined": "It is red."}}
    batch = model.collate(build_examples(sample, TaskConfig(mode="mtl")), TaskConfig(mode="mtl"))
    inputs = model.model_inputs(batch, torch.ones_like(batch["labels"], dtype=torch.float32), torch.device("cpu"))
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask", "labels", "loss_weight"}
    out = model(**inputs)
    assert int(out["n_tokens"]) == int((batch["labels"][:, 1:] != -100).sum()) > 0
    model.eval()
    want = model.logits(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"])
    folder = model.save_export(tmp_path / "export")
    assert export_kind(folder) == "assembled"
    back, _ = load_export(folder)
    got = back.logits(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"])
    assert torch.allclose(got, want, atol=1e-5)
    # an export from before video_llm.json named its family loads as an assembled model
    meta = json.loads((folder / "video_llm.json").read_text())
    del meta["kind"]
    (folder / "video_llm.json").write_text(json.dumps(meta))
    assert export_kind(folder) == "assembled" and isinstance(load_export(folder)[0], type(model))
    assert export_kind(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="not an export folder"):
        load_export(tmp_path)
