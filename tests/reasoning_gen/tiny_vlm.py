"""A tiny randomly initialised LLaVA (CLIP vision tower + Llama) saved with its processor.

Everything is built offline: a word-level tokenizer from a small vocabulary (tokenizers
library), a CLIP image processor at 28x28, a chat template, and the model from configs. The
result is a local directory that ``AutoProcessor`` / ``AutoModelForImageTextToText`` load like
any downloaded checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {% if m['content'] is string %}{{ m['content'] }} {% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}"
    "{{ c['text'] }} {% endif %}{% endfor %}{% endif %}<|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
IMAGE_SIZE, PATCH = 28, 14
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2


def build_tiny_llava(path: Path, corpus: list[str]) -> Path:
    """Write a tiny LLaVA checkpoint to ``path``; its vocabulary is the words of ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = sorted({w for text in corpus for w in re.findall(r"\w+|[^\w\s]", text)})
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", additional_special_tokens=SPECIALS[4:])
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=1024,
                                pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", pad_token_id=0)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
