"""The video LLM on CPU: real decoded frames, the loss head against plain HF logits + cross-entropy,
frames reaching the LLM, training flags, export, generation and option scoring, FLOPs formula."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM

from tests.conftest import assert_close_report
from train import flops
from train.config import LanguageModelConfig, LoraSettings, ModelConfig, ProjectorConfig, TaskConfig, load_section
from train.loss import task_token_counts, token_weights
from train.models import build_model, load_export
from train.models.assembled import VideoLLM
from train.tasks import build_examples, collate
from train.tokenizer import build_tokenizer

CORPUS = ["What is the ball's color in the video?", "The ball is blue.", "A boy throws a red cup.",
          "Why did the man open the door?", "So the answer is (B) blue."] * 10


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(corpus=CORPUS, vocab_size=400)


def tiny(tok, **changes) -> VideoLLM:
    torch.manual_seed(0)
    return build_model(dataclasses.replace(ModelConfig(), **changes), tok)


def make_sample(frames: torch.Tensor, qid: str = "synthetic/train/v1/0", answer: int = 1) -> dict:
    return {"qid": qid, "frames": frames, "question": "What is the ball's color?",
            "options": ["red", "blue", "green"], "answer": answer, "extra": {},
            "reasoning": {"refined": "A boy throws a ball. The ball is blue.", "raw": None}}


def batch_for(model, tok, frames_list, cfg=None):
    cfg = cfg or TaskConfig(mode="mtl")
    exs = [e for i, f in enumerate(frames_list) for e in build_examples(make_sample(f, f"q/s/v{i}/0", i % 3), cfg)]
    b = collate(exs, tok, cfg, model.frame_layout(frames_list[0].shape[0]))
    b["loss_weight"] = token_weights(b["task_ids"], *task_token_counts(b["task_ids"]), 1.0, 0.5)
    return b


def run(model, b):
    return model(pixel_values=b["pixel_values"], input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 labels=b["labels"], loss_weight=b["loss_weight"])


def random_frames(n=2, t=4, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8, generator=g) for _ in range(n)]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_forward_on_real_decoded_frames(tok, tmp_path):
    from data_shards.stream.frames import decode_frames

    mp4 = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x72:rate=10",
                    "-t", "2", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(mp4)], check=True)
    frames = decode_frames(mp4, 4, size=(48, 64))  # 48x64 != the tower's 32x32: resized inside
    assert frames.shape == (4, 3, 48, 64) and frames.dtype == torch.uint8
    model = tiny(tok)
    b = batch_for(model, tok, [frames])
    out = run(model, b)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    assert int(out["n_tokens"]) == int((b["labels"] != -100).sum())
    out["loss"].backward()
    assert model.projector.fc1.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(p.grad is None for p in model.vision.parameters())  # frozen tower


def _reference_loss(model: VideoLLM, ref_llm: nn.Module, b: dict) -> torch.Tensor:
    """Independent path: plain HF model with an nn.Linear head, full logits, F.cross_entropy."""
    visual = model.encode_frames(b["pixel_values"])
    emb = ref_llm.get_input_embeddings()(b["input_ids"])
    rows = []
    for i in range(emb.shape[0]):
        pos = (b["input_ids"][i] == model.frame_token_id).nonzero().flatten().tolist()
        row = list(emb[i].unbind(0))
        for j, p in enumerate(pos):
            row[p] = visual[i, j]
        rows.append(torch.stack(row))
    logits = ref_llm(inputs_embeds=torch.stack(rows), attention_mask=b["attention_mask"]).logits.float()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                         ignore_index=-100, reduction="none")
    return (ce * b["loss_weight"][:, 1:].reshape(-1)).sum()


def test_loss_head_equals_hf_logits_plus_weighted_cross_entropy(tok):
    model = tiny(tok)
    ref_llm = AutoModelForCausalLM.from_config(model.causal_lm.config, attn_implementation="sdpa")
    ref_llm.load_state_dict(model.causal_lm.state_dict())  # same keys: lm_head.weight included
    assert isinstance(ref_llm.lm_head, nn.Linear)
    b = batch_for(model, tok, random_frames(3))
    ours = run(model, b)["loss"]
    ours.backward()
    got = {n: p.grad.clone() for n, p in model.causal_lm.named_parameters()}
    proj_got = model.projector.fc1.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    ref = _reference_loss(model, ref_llm, b)
    ref.backward()
    assert_close_report(ours, ref, rtol=1e-5, atol=1e-5, name="loss")
    for name, p in ref_llm.named_parameters():
        assert_close_report(got[name], p.grad, rtol=1e-4, atol=1e-6, name=f"grad {name}")
    assert_close_report(proj_got, model.projector.fc1.weight.grad, rtol=1e-4, atol=1e-6, name="grad projector")


def test_frames_reach_the_llm_and_placeholder_count_is_checked(tok):
    model = tiny(tok)
    fa, fb = random_frames(1, seed=1), random_frames(1, seed=2)
    with torch.no_grad():
        la, la2, lb = run(model, batch_for(model, tok, fa)), run(model, batch_for(model, tok, fa)), \
            run(model, batch_for(model, tok, fb))
    assert la["loss"] == la2["loss"]
    assert abs(float(la["loss"]) - float(lb["loss"])) > 1e-4
    b = batch_for(model, tok, fa)
    ids = b["input_ids"].clone()
    first = int((ids[0] == model.frame_token_id).nonzero()[0])
    ids[0, first] = tok.pad_token_id
    with pytest.raises(ValueError, match=r"exactly 16 .*\(0, 15\)"):
        model(pixel_values=b["pixel_values"], input_ids=ids, attention_mask=b["attention_mask"], labels=b["labels"],
              loss_weight=b["loss_weight"])
    with pytest.raises(TypeError, match="uint8"):
        model.encode_frames(b["pixel_values"].float())


def test_blind_model_sees_black_frames_only(tok):
    """model.frame_view=blind (the text-only reference): the loss no longer depends on the frames,
    and equals the same model's loss on black frames."""
    model = tiny(tok)
    blind = tiny(tok, frame_view="blind")
    blind.load_state_dict(model.state_dict())
    fa, fb = random_frames(1, seed=1), random_frames(1, seed=2)
    with torch.no_grad():
        la, lb = run(blind, batch_for(blind, tok, fa)), run(blind, batch_for(blind, tok, fb))
        black = run(model, batch_for(model, tok, [torch.zeros_like(fa[0])]))
    assert la["loss"] == lb["loss"] == black["loss"]
    assert ModelConfig(kind="hf_vlm", hf=ModelConfig().hf, frame_view="blind").problems()[-1][0] == "frame_view"


def test_last_and_shuffled_frame_views(tok):
    """frame_view=last sees only the last frame (the others black); frame_view=shuffled sees the same
    frames in a fresh order at each forward, so its loss changes between calls but not with the order
    of its input frames' contents beyond that."""
    model, last, shuf = tiny(tok), tiny(tok, frame_view="last"), tiny(tok, frame_view="shuffled")
    last.load_state_dict(model.state_dict())
    shuf.load_state_dict(model.state_dict())
    (f,) = random_frames(1, seed=3)
    only_last = torch.zeros_like(f)
    only_last[-1] = f[-1]
    other_early = f.clone()
    other_early[0] = 255 - other_early[0]
    with torch.no_grad():
        assert run(last, batch_for(last, tok, [f]))["loss"] == run(model, batch_for(model, tok, [only_last]))["loss"]
        assert run(last, batch_for(last, tok, [f]))["loss"] == run(last, batch_for(last, tok, [other_early]))["loss"]
        torch.manual_seed(0)
        losses = {float(run(shuf, batch_for(shuf, tok, [f]))["loss"]) for _ in range(6)}
        orders = {float(run(model, batch_for(model, tok, [f[list(p)]]))["loss"])
                  for p in itertools.permutations(range(4))}
    assert len(losses) > 1, "shuffled view gave the same loss at every forward: frames were not re-ordered"
    assert all(any(abs(x - y) < 1e-5 for y in orders) for x in losses), "shuffled view is not a frame permutation"


def test_temporal_position_embedding_tells_frames_apart(tok):
    """projector.temporal_pos adds one learned vector per frame group: the same frame in slot 0 and
    slot 3 gives different visual tokens; without it (and without centering) they are the same."""
    (f,) = random_frames(1, seed=4)
    still = f[:1].repeat(4, 1, 1, 1)[None]  # one frame shown four times
    plain = tiny(tok)
    proj = dataclasses.replace(ModelConfig().projector, temporal_pos=4)
    video = tiny(tok, projector=proj)
    with torch.no_grad():
        vp, vv = plain.encode_frames(still), video.encode_frames(still)
    n = plain.projector.tokens_per_group
    assert torch.allclose(vp[0, :n], vp[0, 3 * n:])
    assert not torch.allclose(vv[0, :n], vv[0, 3 * n:])
    with pytest.raises(ValueError, match="temporal_pos"):
        tiny(tok, projector=dataclasses.replace(proj, temporal_pos=2)).encode_frames(still)
    assert ("projector.temporal_pos" in dict(ModelConfig(projector=dataclasses.replace(proj, temporal_pos=-1))
                                             .problems()))


def test_freeze_and_lora_flags_choose_trainable_params(tok):
    def trainable(m):
        return {n for n, p in m.named_parameters() if p.requires_grad}

    default = tiny(tok)
    t = trainable(default)
    assert not any(n.startswith("vision.") for n in t)
    assert any(n.startswith("projector.") for n in t) and "llm.lm_head.weight" in t
    t = trainable(tiny(tok, vision=dataclasses.replace(ModelConfig().vision, freeze=False),
                       llm=dataclasses.replace(ModelConfig().llm, freeze=True)))
    assert any(n.startswith("vision.tower.") for n in t) and not any(n.startswith("llm.") for n in t)
    lora = tiny(tok, lora=LoraSettings(enabled=True, r=4, alpha=8))
    t = trainable(lora)
    llm_t = {n for n in t if n.startswith("llm.")}
    assert llm_t and all("lora_" in n for n in llm_t)
    assert {n.split(".")[-2] for n in llm_t} == {"default"}
    assert any("q_proj.lora_A" in n for n in llm_t) and any("o_proj.lora_B" in n for n in llm_t)
    out = run(lora, batch_for(lora, tok, random_frames(1)))
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)
    with pytest.raises(ValueError, match="lm_head"):
        tiny(tok, lora=LoraSettings(enabled=True, target_modules=["q_proj", "lm_head"]))


def _text_logits(model: VideoLLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.head_logits(model.causal_lm.get_decoder()(input_ids=ids).last_hidden_state)


def test_exported_llm_loads_with_automodel_and_gives_identical_logits(tok, tmp_path):
    model = tiny(tok, lora=LoraSettings(enabled=True, r=4, alpha=8))
    with torch.no_grad():  # adapters that change the output, as after training
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ids = torch.tensor([tok.encode("The ball is blue. A boy throws a red cup.", add_special_tokens=False)])
    want = _text_logits(model, ids)
    frames = random_frames(1)[0][None]
    b = batch_for(model, tok, [frames[0]])
    want_frames = model.logits(b["input_ids"][:1], b["attention_mask"][:1], pixel_values=frames)
    model.export_llm().save_pretrained(tmp_path / "llm")
    with safe_open(str(tmp_path / "llm" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" in keys and not any("lora" in k for k in keys)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "llm", local_files_only=True)
    assert isinstance(loaded.lm_head, nn.Linear)
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert_close_report(got, want, rtol=1e-4, atol=1e-5, name="exported llm logits")
    # The whole model (tower, projector, merged LLM, tokenizer) round-trips too.
    model.save_export(tmp_path / "parts", tok)
    back, back_tok = load_export(tmp_path / "parts")
    assert len(back_tok) == len(tok)
    got_frames = back.logits(b["input_ids"][:1], b["attention_mask"][:1], pixel_values=frames)
    assert_close_report(got_frames, want_frames, rtol=1e-4, atol=1e-5, name="parts round trip logits")


def test_generation_and_option_scoring_are_correct_and_deterministic(tok):
    model = tiny(tok).eval()
    frames = torch.stack(random_frames(2, seed=3))
    qs, opts = ["What is the ball's color?", "Why did the man open the door?"], [["red", "blue"], ["a", "b", "c"]]
    a = model.generate_text(tok, frames, qs, opts, max_new_tokens=6)
    assert a == model.generate_text(tok, frames, qs, opts, max_new_tokens=6)
    # KV-cache greedy (batched, left-padded) equals a no-cache greedy loop run per clip.
    from train.models.generation import _prompts
    from train.prompts import qa_instruction

    prompt_ids = _prompts(model, tok, frames, qs, opts, None, "Answer.")
    prompt_ids[1] = prompt_ids[1] + tok.encode(" extra words here", add_special_tokens=False)  # unequal lengths
    got = model.generate(frames, prompt_ids, max_new_tokens=5)
    for i in range(2):
        ids = list(prompt_ids[i])
        for _ in range(5):
            logits = model.logits(torch.tensor([ids]), pixel_values=frames[i:i + 1])
            ids.append(int(logits[0, -1].argmax()))
        assert got[i] == ids[len(prompt_ids[i]):], f"clip {i}"
    assert model.generate(frames, prompt_ids, max_new_tokens=5, eos_token_id=got[0][0])[0] == []
    # Option scores: batched == one clip at a time == a direct sum over full logits.
    s = model.score_options(tok, frames, qs, opts)
    assert s["sum"].shape == (2, 3) and s["sum"][0, 2] == float("-inf") and s["n_tokens"][0, 2] == 0
    one = model.score_options(tok, frames[1:], qs[1:], opts[1:])
    assert_close_report(one["sum"][0], s["sum"][1], rtol=1e-5, atol=1e-5, name="batched vs single")
    assert torch.equal(s["sum"], model.score_options(tok, frames, qs, opts)["sum"])
    p = _prompts(model, tok, frames[:1], qs[:1], opts[:1], None, qa_instruction("letter"))[0]
    opt = tok.encode(" (B)", add_special_tokens=False)
    logp = torch.log_softmax(model.logits(torch.tensor([p + opt]), pixel_values=frames[:1])[0], -1)
    direct = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(opt))
    assert abs(direct - float(s["sum"][0, 1])) < 1e-4
    assert s["pred"].tolist() == s["sum"].argmax(1).tolist()
    captions = [["c1", "c2", "c3"], None]
    assert not torch.equal(model.score_options(tok, frames, qs, opts, captions)["sum"][0], s["sum"][0])


def test_clip_tower_temporal_stride_and_gradient_checkpointing(tok):
    cfg = ModelConfig()
    vision = dataclasses.replace(cfg.vision, kind="clip")
    proj = dataclasses.replace(cfg.projector, pool=[1, 2], temporal_stride=2)
    model = tiny(tok, vision=vision, projector=proj)
    frames = random_frames(2, t=5)
    assert model.frame_layout(5).num_visual_tokens == 3 * 2  # ceil(5 / 2) groups x 2 tokens
    assert model.encode_frames(torch.stack(frames)).shape == (2, 6, 64)
    b = batch_for(model, tok, frames)
    base = run(model, b)
    base["loss"].backward()
    g0 = model.projector.fc2.weight.grad.clone()
    ckpt = tiny(tok, vision=vision, projector=proj, gradient_checkpointing=True)
    ckpt.train()
    out = run(ckpt, b)
    out["loss"].backward()
    assert_close_report(out["loss"], base["loss"], rtol=1e-6, atol=1e-6, name="loss with checkpointing")
    assert_close_report(ckpt.projector.fc2.weight.grad, g0, rtol=1e-5, atol=1e-7, name="grad with checkpointing")


def test_flops_formula_counts_the_models_matmul_weights(tok):
    model = tiny(tok)
    d = model.flops_dims()
    llm_linear = sum(m.weight.numel() for n, m in model.causal_lm.named_modules()
                     if isinstance(m, nn.Linear) and ".layers." in f".{n}")
    assert flops.llm_params(d) == llm_linear + model.loss_head.weight.numel()
    vis_linear = sum(m.weight.numel() for n, m in model.vision.tower.named_modules()
                     if isinstance(m, nn.Linear) and ".layers." in f".{n}")
    assert flops.vision_params(d) == vis_linear
    assert d.vis_patches == (32 // 8) ** 2 and d.tokens_per_group == 4
    f = flops.flops_per_sample(d, 128, 4)
    assert f["total"] == f["vision"] + f["projector"] + f["llm"]
    # Frozen tower: forward only (factor 1); trained LLM: factor 3 -> 6N per token at S -> 0.
    assert f["vision"] == pytest.approx(4 * (2 * 16 * flops.vision_params(d) + 2 * 16 * 3 * 64 * 32
                                             + 4 * 1 * 16 * 16 * 32))
    assert f["llm"] == pytest.approx(3 * (2 * flops.llm_params(d) + 2 * 2 * 64 * 128) * 128)
    assert model.flops_per_token(128, 4) == pytest.approx(f["total"] / 128)
    # the fused loss runs the head on target rows only: 3 x 2 x d x V FLOPs per skipped row fewer
    head_64 = flops.flops_per_sample(d, 128, 4, head_tokens=64)
    assert f["llm"] - head_64["llm"] == pytest.approx(3 * 2 * d.llm_hidden * d.vocab_size * 64)
    assert flops.flops_per_sample(d, 128, 4, head_tokens=128) == f
    frozen = flops.flops_per_sample(dataclasses.replace(d, train_llm=False), 128, 4)
    assert frozen["llm"] == pytest.approx(f["llm"] * 2 / 3)


ZERO3_SCRIPT = r"""
import os, sys, torch
import deepspeed
from transformers.integrations import HfDeepSpeedConfig
from train.config import ModelConfig, LoraSettings
from train.models import build_model, load_export
from train.config import TaskConfig
from train.tasks import build_examples, collate
from train.loss import task_token_counts, token_weights
from train.tokenizer import build_tokenizer

deepspeed.init_distributed(dist_backend="gloo")
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
      "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}}, "zero_allow_untested_optimizer": True}
keep = HfDeepSpeedConfig(ds)  # HF models then initialise their weights with gathered ZeRO-3 params
tok = build_tokenizer()
for lora in (False, True):
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = build_model(ModelConfig(lora=LoraSettings(enabled=lora)), tok)
    head = model.loss_head.weight
    assert head.shape == (0,) and head.ds_numel == len(tok) * 64, (head.shape, head.ds_numel)
    engine, *_ = deepspeed.initialize(model=model, config=ds,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    g = torch.Generator().manual_seed(0)
    sample = {"qid": "q/s/v/0", "frames": torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=g),
              "question": "What color?", "options": ["red", "blue"], "answer": 1, "extra": {},
              "reasoning": {"refined": "The ball is blue."}}
    cfg = TaskConfig()
    b = collate(build_examples(sample, cfg), tok, cfg, model.frame_layout(4))
    w = token_weights(b["task_ids"], *task_token_counts(b["task_ids"]), 1.0, 0.5)
    losses = []
    for step in range(4):
        labels = b["labels"] if step != 2 else torch.full_like(b["labels"], -100)  # a step without targets
        out = engine(pixel_values=b["pixel_values"], input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels, loss_weight=w)
        engine.backward(out["loss"])
        engine.step()
        losses.append(float(out["loss"]))
    assert all(map(lambda x: x == x, losses)) and losses[2] == 0.0, losses
    assert losses[3] < losses[0], losses
    engine.eval()
    scores = model.score_options(tok, b["pixel_values"][:1], ["What color?"], [["red", "blue"]])
    assert torch.isfinite(scores["sum"]).all()
    print("ok", lora, losses)
from data_shards.common.distenv import exit_process, shutdown
shutdown()
exit_process(0)  # see its doc: DeepSpeed keeps the gloo threads alive past destroy_process_group
"""


@pytest.mark.slow
def test_builds_and_trains_under_deepspeed_zero3_init(tmp_path):
    """The model built inside deepspeed.zero.Init (partitioned params, loss module owning a
    partitioned lm_head) trains, survives a micro-batch without targets, and scores options."""
    import os
    import socket
    import sys

    from tests.conftest import REPO

    with socket.socket() as s:  # a free port, so parallel test runs never collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0", TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"),
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", ZERO3_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == 2, proc.stdout[-2000:]


def test_adjacent_identical_clips_are_encoded_once(tok):
    model = tiny(tok)
    a, b = random_frames(2, seed=5)
    pv = torch.stack([a, a, b, b, a])  # the mtl layout: QA + reasoning rows of one question adjacent
    seen = []
    model.vision.tower.register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs["pixel_values"].shape[0]),
                                             with_kwargs=True)
    got = model.encode_frames(pv)
    assert seen == [3 * 4]  # 3 distinct runs x 4 frames
    want = torch.cat([model.encode_frames(pv[i:i + 1]) for i in range(5)])
    assert_close_report(got, want, rtol=1e-5, atol=1e-6, name="deduplicated visual tokens")
    batch = batch_for(model, tok, [a, b])  # mtl: 4 sequences, 2 clips
    d = model.flops_dims()
    L = batch["input_ids"].shape[1]
    lengths = batch["attention_mask"].sum(1).tolist()
    targets = (batch["labels"][:, 1:] != -100).sum(1).tolist()
    assert min(lengths) < L and max(targets) < max(lengths)  # padding and prompt rows: neither may count
    want = sum(flops.flops_per_sample(d, n, 4, 0.5, head_tokens=t)["total"] for n, t in zip(lengths, targets))
    assert model.batch_flops(batch) == pytest.approx(want)
    assert model.batch_flops(batch) < 4 * flops.flops_per_sample(d, L, 4, 0.5)["total"]


def test_pretrained_llm_from_a_local_path_tied_and_resized(tok, tmp_path):
    from transformers import AutoConfig

    qcfg = AutoConfig.for_model("qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                                tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(qcfg).save_pretrained(tmp_path / "qwen")
    llm = dataclasses.replace(ModelConfig().llm, path=str(tmp_path / "qwen"), config=None)
    model = tiny(tok, llm=llm)
    emb = model.causal_lm.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) > 300  # resized to the tokenizer (frame token etc.)
    assert model.loss_head.weight is emb  # the loss module shares the tied weight
    b = batch_for(model, tok, random_frames(1))
    out = run(model, b)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and emb.grad is not None
    ids = b["input_ids"][:1, :20]
    want = _text_logits(model, ids)
    model.export_llm().save_pretrained(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        assert_close_report(loaded(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5, name="tied export logits")


def test_model_config_problems_and_from_dict():
    assert ModelConfig().problems() == []
    cfg = ModelConfig(projector=ProjectorConfig(pool=[0, 2]), lora=LoraSettings(r=0, target_modules=["lm_head"]),
                      llm=LanguageModelConfig(config={"hidden_size": 8}), loss_chunk_size=0)
    fields = [f for f, _ in cfg.problems()]
    assert fields == ["loss_chunk_size", "projector.pool", "llm.config", "lora.r", "lora.target_modules"]
    with pytest.raises(ValueError, match=r"unknown key 'model\.vision\.size'"):
        load_section(ModelConfig, {"vision": {"kind": "clip", "size": 3}}, "model")
    assert ModelConfig().frame_layout(8).num_visual_tokens == 8 * 4


def test_tiny_model_learns_a_frame_dependent_answer_and_reasoning():
    """End to end on CPU: the answer and the reasoning depend only on the frames' colour; after
    a short multi-task run, option scoring picks the right option and generation names the colour."""
    torch.manual_seed(0)
    names = ["red", "blue", "green"]
    tok = build_tokenizer(corpus=["What color is the screen?", "The screen is red."] + names * 5, vocab_size=350)
    model = build_model(ModelConfig(), tok)
    rgb = torch.tensor([[255, 0, 0], [0, 0, 255], [0, 255, 0]])

    def sample(c: int, i: int) -> dict:
        f = rgb[c].view(1, 3, 1, 1).expand(4, 3, 32, 32) + torch.randint(-20, 21, (4, 3, 32, 32))
        return {"qid": f"q/s/v{i}/0", "frames": f.clamp(0, 255).to(torch.uint8), "question": "What color is the screen?",
                "options": names, "answer": c, "extra": {}, "reasoning": {"refined": f"The screen is {names[c]}."}}

    cfg = TaskConfig(mode="mtl")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        exs = [e for i, c in enumerate(torch.randint(0, 3, (6,)).tolist()) for e in build_examples(sample(c, i), cfg)]
        b = collate(exs, tok, cfg, model.frame_layout(4))
        b["loss_weight"] = token_weights(b["task_ids"], *task_token_counts(b["task_ids"]), 1.0, 0.5)
        loss = run(model, b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5
    model.eval()
    test = [sample(c, 100 + c) for c in range(3)]
    frames = torch.stack([s["frames"] for s in test])
    assert model.score_options(tok, frames, [s["question"] for s in test], [names] * 3)["pred"].tolist() == [0, 1, 2]
    texts = model.generate_text(tok, frames, [s["question"] for s in test], [names] * 3, task="reasoning",
                                max_new_tokens=8)
    assert [[n for n in names if n in t] for t in texts] == [[n] for n in names], texts
