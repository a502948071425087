"""Tiny randomly initialised Hugging Face video-LLM folders, written offline (tests, CPU recipes).

A test-model builder: never imported by the training runtime.

``python -m train.testing.hf_tiny --family qwen2_vl --out tiny_models/qwen2_vl`` writes a folder laid out
like a downloaded checkpoint of that family -- ``config.json`` + ``model.safetensors`` (saved by
the family's transformers class), a byte-level BPE tokenizer with the family's special tokens, a
ChatML chat template (``chat_template.jinja``) and the video preprocessor settings
(``video_preprocessor_config.json``) -- so that ``model.kind: hf_vlm`` loads it exactly as it
loads a real Qwen2-VL / LLaVA-OneVision folder. Nothing is downloaded.

The sizes are a few layers of width 32-64; frames of 32x32 give 8 (Qwen2-VL, 4 frames) or 17
(LLaVA-OneVision, 4 frames) video tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedTokenizerFast

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision")

# ChatML, the conversation format of Qwen2 / Qwen2-VL / LLaVA-OneVision (Qwen2 LLM); the video
# item renders as the family's placeholder (one token, expanded by the preprocessor).
_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}VIDEO{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_VIDEO_MARKUP = {"qwen2_vl": "<|vision_start|><|video_pad|><|vision_end|>",
                 "qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>",
                 "llava_onevision": "<video>\n"}
_SPECIALS = {"qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
             "llava_onevision": ["<image>", "<video>"]}
_SPECIALS["qwen2_5_vl"] = _SPECIALS["qwen2_vl"]
_BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "user assistant system video question options answer with the option's letter from the given choices",
    "What happened after the red ball moved left? (A) (B) (C) (D) (E) Describe step by step what the video shows",
    "the blue square turns right then the green circle stops. So the answer is B. Reason step by step",
    "Question: Options: Answer: Transition: frame first then after before why how when where count",
]


def build_tokenizer(family: str, corpus: list[str] | None = None, vocab_size: int = 512):
    """A fast byte-level BPE tokenizer with the family's special tokens and its chat template."""

    specials = _BASE_SPECIALS + _SPECIALS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = list(corpus or []) + _CORPUS * 4
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  extra_special_tokens=_SPECIALS[family])
    out.chat_template = _TEMPLATE.replace("VIDEO", _VIDEO_MARKUP[family])
    return out


def _qwen_config(family: str, tok, tie: bool):

    ids = {t: tok.convert_tokens_to_ids(t) for t in _BASE_SPECIALS + _SPECIALS[family]}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=1, hidden_size=64, num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, mlp_ratio=2)
    else:  # Qwen2.5-VL: windowed attention blocks, out_hidden_size = the LLM width
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16,
                      fullatt_block_indexes=[0])
    return AutoConfig.for_model(
        family, text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=tie)


def _llava_config(tok, tie: bool):

    ids = {t: tok.convert_tokens_to_ids(t) for t in _BASE_SPECIALS + _SPECIALS["llava_onevision"]}
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=tie)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=32, patch_size=8)
    return AutoConfig.for_model(
        "llava_onevision", text_config=text, vision_config=vision, image_token_index=ids["<image>"],
        video_token_index=ids["<video>"], vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]], tie_word_embeddings=tie)


def video_preprocessor_config(family: str) -> dict:
    """The family's video preprocessor settings (the keys of transformers' own config files)."""
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 8, "merge_size": 2,
                "temporal_patch_size": 2, "size": {"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
                "image_mean": clip_mean, "image_std": clip_std, "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, "do_resize": True, "do_sample_frames": False}
    return {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 32, "width": 32},
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "do_resize": True, "do_sample_frames": False}


def write_tiny_vlm(out: str | Path, family: str = "qwen2_vl", seed: int = 0, tie_word_embeddings: bool = False,
                   corpus: list[str] | None = None) -> Path:
    """Write a tiny random model folder of ``family`` (see the module doc); returns the folder.

    Args:
        out: the folder (created).
        family: one of :data:`FAMILIES`.
        seed: torch seed of the random initialisation (same seed -> same weights).
        tie_word_embeddings: share the LM head with the input embeddings (as small Qwen2-VL-2B).
        corpus: extra texts for the BPE (e.g. the dataset's questions).
    """

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(family, corpus)
    cfg = _llava_config(tok, tie_word_embeddings) if family == "llava_onevision" else \
        _qwen_config(family, tok, tie_word_embeddings)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(tok.chat_template)
    (out / "video_preprocessor_config.json").write_text(json.dumps(video_preprocessor_config(family), indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m train.testing.hf_tiny``: write a tiny random HF video-LLM folder."""
    p = argparse.ArgumentParser(prog="python -m train.testing.hf_tiny", description=main.__doc__)
    p.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tie-word-embeddings", action="store_true")
    args = p.parse_args(argv)
    path = write_tiny_vlm(args.out, args.family, args.seed, args.tie_word_embeddings)
    print(f"wrote a tiny random {args.family} model to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
