"""Existing HF video-LLMs as the trainee (model.kind hf_vlm), one process: tiny random Qwen2-VL,
Qwen2.5-VL and LLaVA-OneVision folders written offline by ``train.testing.hf_tiny``.

* the loss of a batch = a plain transformers forward of the same folder (its own nn.Linear head)
  + torch cross-entropy weighted per token; the mean-weighted loss = transformers' own loss;
* prompts come from the folder's chat template, the target is one exact span ending with the
  template's end of turn, the video placeholder is expanded to the number of features;
* Qwen video patches in the layout of transformers' own (PIL) Qwen2-VL image processor;
* freezing per part, LoRA on the language model only, activation checkpointing (same gradients);
* export -> ``from_pretrained`` of the same class -> the same logits, LoRA merged or kept apart;
* the evaluation interface answers every question.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import assert_close_report
from tests.train import exactness_worker as W
from train.config import ModelConfig, TaskConfig, load_section
from train.loss import TASK_QA, TASK_REASON, token_weights
from train.models import build_model
from train.tasks import build_examples

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "llava_onevision"]
TASK = TaskConfig(mode="mtl", reasoning_source="gt", beta=0.7, max_prompt_len=256, max_target_len=64)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from train.testing.hf_tiny import write_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_vlms")
    out = {f: write_tiny_vlm(root / f, f) for f in FAMILIES}
    out["qwen2_vl_tied"] = write_tiny_vlm(root / "tied", "qwen2_vl", tie_word_embeddings=True)  # as Qwen2-VL-2B
    return out


def _cfg(path, **hf) -> ModelConfig:
    return load_section(ModelConfig, {"kind": "hf_vlm", "attn_implementation": "sdpa",
                                      "hf": {"path": str(path), "freeze_vision": False, **hf}}, "model")


def _batch(model, n_questions: int = 4) -> dict:
    questions = W.global_batch()[:n_questions]
    return model.collate([ex for q in questions for ex in build_examples(q, TASK)], TASK)


def _weights(batch) -> torch.Tensor:
    n_qa, n_re = int((batch["task_ids"] == TASK_QA).sum()), int((batch["task_ids"] == TASK_REASON).sum())
    return token_weights(batch["task_ids"], n_qa, n_re, TASK.alpha, TASK.beta)


def _plain(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True,
                                                       attn_implementation="sdpa").eval()


@pytest.mark.parametrize("family", FAMILIES + ["qwen2_vl_tied"])
def test_loss_equals_plain_transformers_forward_plus_weighted_torch_cross_entropy(folders, family):
    """Tolerance: fp32, rtol 1e-5 (the fused head sums chunk by chunk, torch in one pass)."""
    model = build_model(_cfg(folders[family]), None)
    batch = _batch(model)
    w = _weights(batch)
    ours = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                 attention_mask=batch["attention_mask"], labels=batch["labels"], loss_weight=w,
                 vision=batch["vision"])
    ref = _plain(folders[family])(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  labels=batch["labels"], **batch["vision"])
    logits, tgt = ref.logits[:, :-1].float(), batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    want = (ce * w[:, 1:].reshape(-1)).sum()
    assert int(ours["n_tokens"]) == int((tgt != -100).sum()) > 0
    assert abs(ours["loss"].item() - want.item()) <= 1e-5 * abs(want.item()), (ours["loss"].item(), want.item())
    plain = model(pixel_values=None, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  labels=batch["labels"], vision=batch["vision"])
    mean = plain["loss"] / plain["n_tokens"]  # weight 1 per token / N = transformers' mean CE
    assert abs(mean.item() - ref.loss.item()) <= 1e-5 * ref.loss.item()


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_prompt_from_the_chat_template_and_exact_target_span(folders, family):
    model = build_model(_cfg(folders[family]), None)
    proc = model.processor
    batch = _batch(model, 1)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    text = proc.tokenizer.decode(ids[batch["attention_mask"][0].bool()])
    assert text.startswith("<|im_start|>user\n") and "<|im_start|>assistant\n" in text
    target = proc.tokenizer.decode(labels[labels != -100])
    assert target == "(A)<|im_end|>", target  # question 0's answer, then the template's end of turn
    n_video = int((ids == proc.video_token_id).sum())
    want = 2 * (32 // 8 // 2) ** 2 if family == "qwen2_vl" else 4 * (32 // 8 // 2) ** 2 + 1
    assert n_video == want  # Qwen: 2 temporal patches x 2x2 merged; LLaVA: 4 frames x 2x2 pooled + newline
    assert batch["tasks"] == ["qa", "reasoning"]
    reasoning = proc.tokenizer.decode(batch["labels"][1][batch["labels"][1] != -100])
    assert reasoning.endswith("<|im_end|>") and W.global_batch()[0]["extra"]["reasoning"][:20] in reasoning


def test_qwen_video_patches_match_transformers_qwen2vl_image_processor(folders):
    """A video of 2 equal frames is one temporal patch holding that image twice: transformers'
    PIL image processor writes exactly that for an image, so the patch order must agree."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from train.models.hf_inputs import read_preprocessor_config

    model = build_model(_cfg(folders["qwen2_vl"]), None)
    pre = model.processor.video
    frame = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    ours = pre(torch.stack([frame, frame]))
    c = read_preprocessor_config(folders["qwen2_vl"])
    ip = Qwen2VLImageProcessorPil(patch_size=c["patch_size"], merge_size=c["merge_size"],
                                  temporal_patch_size=c["temporal_patch_size"], image_mean=c["image_mean"],
                                  image_std=c["image_std"], size=c["size"])
    ref = ip(images=[frame.permute(1, 2, 0).numpy()], return_tensors="pt")
    assert ours["video_grid_thw"].tolist() == ref["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert_close_report(ours["pixel_values_videos"], ref["pixel_values"], rtol=1e-5, atol=1e-5, name="patches")


def test_freezing_per_part_and_lora_on_the_language_model_only(folders):
    path = folders["llava_onevision"]  # its SigLIP tower has q_proj too: LoRA must not go there
    full = build_model(_cfg(path), None).trainable_summary()
    assert set(full) == {"vision", "projector", "llm"}
    frozen = build_model(_cfg(path, freeze_vision=True, freeze_llm=True), None)
    assert set(frozen.trainable_summary()) == {"projector"}
    lora = build_model(dataclasses.replace(_cfg(path, freeze_vision=True), lora=dataclasses.replace(
        ModelConfig().lora, enabled=True, r=4)), None)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert set(lora.trainable_summary()) == {"lora", "projector"}
    assert names and all("language_model" in n for n in names if "lora_" in n)
    assert any("vision_tower" in n for n, _ in lora.named_parameters())
    assert not any("vision_tower" in n and "lora_" in n for n, _ in lora.named_parameters())
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model\.hf\.path: model\.kind hf_vlm needs a local model folder"):
        load_config(None, ["--data.urls=/x.tar", "--model.kind=hf_vlm"])


def test_activation_checkpointing_gives_the_same_loss_and_gradients(folders):
    cfg = _cfg(folders["qwen2_vl"])
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(cfg, gradient_checkpointing=ckpt), None).train()
        batch = _batch(model, 2)
        out = model(pixel_values=None, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"], loss_weight=_weights(batch), vision=batch["vision"])
        out["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert model.hf_model.model.language_model.gradient_checkpointing
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        assert_close_report(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7, name=n)


@pytest.mark.parametrize("family,lora,merge", [("qwen2_vl", False, True), ("llava_onevision", True, True),
                                               ("qwen2_vl", True, False), ("qwen2_vl_tied", False, True)])
def test_export_then_from_pretrained_of_the_same_class_gives_the_same_logits(folders, tmp_path, family, lora, merge):
    cfg = _cfg(folders[family])
    if lora:
        cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, enabled=True, r=4))
    model = build_model(cfg, None).eval()
    with torch.no_grad():
        for i, p in enumerate(p for n, p in model.named_parameters() if "lora_B" in n):
            p.copy_(torch.linspace(-0.05, 0.05, p.numel()).view_as(p) * (i + 1))
    batch = _batch(model, 2)
    want = model.logits(batch["input_ids"], batch["attention_mask"], vision=batch["vision"])
    hf_class = type(model.hf_model)
    if family.endswith("tied"):  # the loss head holds the embedding Parameter itself
        assert model.loss_head.weight is model.hf_model.get_input_embeddings().weight
    out = model.save_export(tmp_path / "export", merge_lora=merge)
    if merge:  # the exported folder is a plain checkpoint of the family's class
        plain = hf_class.from_pretrained(str(out), local_files_only=True, attn_implementation="sdpa").eval()
        with torch.no_grad():
            got = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **batch["vision"]).logits
    else:
        from train.models.hf_vlm import load_hf_export

        assert (out / "adapter" / "adapter_config.json").is_file()
        got = load_hf_export(out, cfg)[0].logits(batch["input_ids"], batch["attention_mask"], vision=batch["vision"])
    assert_close_report(got, want, rtol=1e-4, atol=1e-5, name=f"{family} logits after export")
    if lora:
        base = build_model(dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, enabled=False)), None)
        diff = (base.logits(batch["input_ids"], batch["attention_mask"], vision=batch["vision"]) - want).abs().max()
        assert diff > 1e-3, "the adapters did not change the logits: the comparison would not see them dropped"


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_interface_answers_every_question(folders, family):
    model = build_model(_cfg(folders[family]), None).eval()
    qs = W.global_batch()[:3]
    frames = torch.stack([q["frames"] for q in qs])
    args = (None, frames, [q["question"] for q in qs], [q["options"] for q in qs])
    scores = model.score_options(*args)
    assert scores["pred"].shape == (3,) and torch.isfinite(scores["sum"]).all()
    assert (scores["n_tokens"] == 3).all()  # "(A)" is 3 tokens here; the end of turn is not scored
    texts = model.generate_text(*args, max_new_tokens=4)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_long_question_is_cut_to_fit_vcot_and_caption_prompts(folders):
    model = build_model(_cfg(folders["qwen2_vl"]), None)
    proc = model.processor
    q = {**W.global_batch()[0], "question": "why " * 200 + "?"}
    short = TaskConfig(mode="qa", max_prompt_len=120, max_target_len=16)
    batch = model.collate(build_examples(q, short), short)
    prompt_len = int((batch["labels"][0] == -100).sum() - (batch["attention_mask"][0] == 0).sum())
    assert batch["n_cut_prompts"] == 1 and prompt_len <= 120
    assert proc.tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100]) == "(A)<|im_end|>"
    with pytest.raises(ValueError, match=r"prompt without its question is \d+ tokens > max_prompt_len 20"):
        tiny = TaskConfig(mode="qa", max_prompt_len=20)
        model.collate(build_examples(q, tiny), tiny)
    caps = ["the ball starts", None, "it stops"]
    text = proc.user_text("What?", ["a", "b"], "Answer.", caps)
    assert text.startswith("Transitions between frames:\n1->2: the ball starts\n3->4: it stops\nQuestion: What?")
    cap_task = TaskConfig(mode="caption")
    cap = {**W.global_batch()[0], "qtype": "caption", "options": [], "answer": None, "question": "",
           "extra": {"caption": "a red ball rolls"}}
    batch = model.collate(build_examples(cap, cap_task), cap_task)
    text = proc.tokenizer.decode(batch["input_ids"][0])
    assert "Question:" not in text and "Options:" not in text and "Describe the video briefly." in text
    assert proc.tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100]) == "a red ball rolls<|im_end|>"


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_video_tensors_equal_transformers_video_processor_where_torchvision_is_installed(folders, family):
    """transformers 5's video processors need torchvision (not installed by the CPU set-up, so this
    runs only where it is): frames at the model's size must give the same tensors."""
    pytest.importorskip("torchvision")
    from transformers import AutoVideoProcessor

    model = build_model(_cfg(folders[family]), None)
    vp = AutoVideoProcessor.from_pretrained(str(folders[family]), local_files_only=True)
    frames = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ref = vp(videos=[frames], return_tensors="pt", do_sample_frames=False)
    ours = model.processor.video(frames)
    for key in ("pixel_values_videos", "video_grid_thw"):
        if key in ref:
            assert_close_report(ours[key].float(), ref[key].float(), rtol=1e-5, atol=1e-5, name=key)


@pytest.mark.parametrize("family", FAMILIES)
def test_frame_layout_counts_the_video_tokens_the_collate_places_and_flops_are_counted(folders, family):
    """The VideoModel interface for an HF family: frame_layout is the number of video placeholder tokens
    the processor puts in every prompt; flops_per_token and batch_flops come from its configs."""
    model = build_model(_cfg(folders[family]), None)
    batch = _batch(model, 2)
    T, size = int(batch["pixel_values"].shape[1]), tuple(batch["pixel_values"].shape[-2:])
    layout = model.frame_layout(T, size)
    per_row = (batch["input_ids"] == model.processor.video_token_id).sum(1).tolist()
    assert per_row == [layout.num_visual_tokens] * len(per_row) and layout.num_visual_tokens > 0
    flops = model.batch_flops(batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    # every sequence costs at least its LLM forward + backward on its own tokens (no padding counted)
    assert flops > sum(6 * n for n in lengths)
    per_token = model.flops_per_token(max(lengths), T, frame_size=size)
    assert 0 < per_token * max(lengths) * len(lengths) >= flops * 0.5
