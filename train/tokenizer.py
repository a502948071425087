"""An offline tokenizer: load one from a local path, or train a small byte-level BPE locally.

Nothing is downloaded. The tiny recipe trains a BPE with the `tokenizers` library on the
texts of the synthetic dataset (questions, options, reasoning, the fixed prompt texts); with
no corpus at all a pure byte-level tokenizer (256 byte symbols, no merges) is built. Both are
deterministic: the same corpus gives the same vocabulary and merges.

Every tokenizer returned has ``pad``, ``bos``, ``eos`` and the frame placeholder special token
``FRAME_TOKEN`` (one per visual token in the prompt; the model scatters the projected frame
features into the input embeddings at those positions).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from train.config import load_config
from train.prompts import fixed_texts

FRAME_TOKEN = "<|frame|>"
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, FRAME_TOKEN]


def build_tokenizer(path: str | Path | None = None, corpus: Iterable[str] | None = None,
                    vocab_size: int = 1024, min_frequency: int = 2) -> PreTrainedTokenizerBase:
    """Load or train a tokenizer, offline.

    Args:
        path: a local directory saved with ``save_pretrained`` (ours or an LLM's). Takes
            precedence over ``corpus``. Special tokens it lacks are added (the model then
            resizes its embeddings to ``len(tokenizer)``).
        corpus: texts to train a byte-level BPE on (e.g. :func:`corpus_from_samples`).
        vocab_size: target vocabulary size of the trained BPE (special tokens included); the
            result is smaller when the corpus has fewer distinct merges.
        min_frequency: a pair must occur this often to be merged.

    Returns:
        A fast tokenizer with pad/bos/eos/unk and ``FRAME_TOKEN``; ``save_pretrained`` works.

    Raises:
        FileNotFoundError: ``path`` is given but is not a directory.
    """
    if path is not None:
        return _load_local(Path(path))

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if corpus is None:
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    else:
        tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # Byte-level: every string is encodable, so the unk token is never produced.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if corpus is not None:
        if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
            raise ValueError(f"vocab_size {vocab_size} < {len(SPECIAL_TOKENS) + len(alphabet)} "
                             "(special tokens + 256 byte symbols)")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet,
                                      show_progress=False)
        texts = [str(t) for t in corpus] + fixed_texts()
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, unk_token=UNK_TOKEN,
                                   extra_special_tokens=[FRAME_TOKEN])


def _load_local(path: Path) -> PreTrainedTokenizerBase:
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer path {path} is not a directory")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if FRAME_TOKEN not in tok.get_vocab():
        tok.add_tokens([FRAME_TOKEN], special_tokens=True)  # same call in transformers 4 and 5
    if tok.pad_token is None:
        # LLM tokenizers often have no pad token; padded positions are masked anyway.
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": PAD_TOKEN})
    for name, default in (("bos_token", BOS_TOKEN), ("eos_token", EOS_TOKEN)):
        if getattr(tok, name) is None:
            tok.add_special_tokens({name: default})
    return tok


def frame_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of the frame placeholder token; a clear error when the tokenizer lacks it."""
    tid = tokenizer.convert_tokens_to_ids(FRAME_TOKEN)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no frame placeholder token {FRAME_TOKEN!r}: "
                         "build it with train.tokenizer.build_tokenizer")
    return int(tid)


def corpus_from_samples(items: Iterable[Any]) -> Iterator[str]:
    """Texts to train the tokenizer on, from records or question samples.

    Args:
        items: schema-v1 ``VideoRecord`` objects, record dicts (with "qas"), or question-sample
            dicts (contract 3: "question", "options", "extra", optional "reasoning" record).

    Yields:
        question, option, synthetic reasoning/steps and reasoning-record texts, in input order.
    """
    for item in items:
        qas = getattr(item, "qas", None)
        if qas is None and isinstance(item, dict):
            qas = item.get("qas", [item])
        for qa in qas or []:
            get = qa.get if isinstance(qa, dict) else (lambda k, d=None, _q=qa: getattr(_q, k, d))
            yield str(get("question", ""))
            yield from (str(o) for o in get("options", []) or [])
            extra = get("extra", {}) or {}
            for key in ("reasoning", "caption"):  # caption: stage-1 video-caption entries
                if isinstance(extra.get(key), str):
                    yield extra[key]
            rec = get("reasoning", None)
            if isinstance(rec, dict):
                yield from (rec[k] for k in ("raw", "refined") if isinstance(rec.get(k), str))
                yield from (c for c in rec.get("vcot") or [] if isinstance(c, str))


def main(argv: list[str] | None = None) -> int:
    """``python -m train tokenizer``: train the BPE on records and reasoning files, save it to --out.

    One tokenizer for several runs (``--tokenizer.path``), so that they differ only in what they
    train on (the demo's study uses it)."""
    p = argparse.ArgumentParser(prog="python -m train tokenizer", description=main.__doc__.split("\n")[0])
    p.add_argument("--records", nargs="+", required=True, help="records jsonl files (questions, options, captions)")
    p.add_argument("--reasoning", nargs="*", default=[], help="reasoning jsonl files (raw / refined texts)")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default: --config's tokenizer.vocab_size)")
    p.add_argument("--config", help="a recipe whose tokenizer.vocab_size is used")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    vocab = a.vocab_size
    if vocab is None:
        vocab = load_config(a.config).tokenizer.vocab_size
    texts: list[str] = []
    for path in a.records:
        with open(path, encoding="utf-8") as f:
            texts += list(corpus_from_samples(json.loads(line) for line in f if line.strip()))
    for path in a.reasoning:
        with open(path, encoding="utf-8") as f:
            texts += list(corpus_from_samples({"reasoning": json.loads(line)} for line in f if line.strip()))
    tok = build_tokenizer(None, corpus=texts, vocab_size=vocab)
    tok.save_pretrained(a.out)
    print(f"tokenizer: {len(tok)} tokens from {len(texts)} texts -> {a.out}")
    return 0
