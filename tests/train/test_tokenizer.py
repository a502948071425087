"""The offline tokenizer: byte-level and locally trained BPE, determinism, save/load round trip."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from train.tokenizer import FRAME_TOKEN, build_tokenizer, corpus_from_samples, frame_token_id

CORPUS = [
    "What color is the ball that the boy throws?", "The boy throws a red ball to the dog.",
    "Why did the girl open the door after the bell rang?", "How many cups are on the table?",
    "The woman picks up the blue cup, then puts it on the shelf.", "So the answer is (B) red.",
] * 20


def test_byte_level_without_corpus_encodes_any_text():
    tok = build_tokenizer()
    assert len(tok) == 5 + 256
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(tok, name) is not None
    text = "Ünïcode ✓ and emoji 🎬, tabs\tand\nnewlines"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    # The placeholder is one token even inside text.
    ids = tok.encode(f"a{FRAME_TOKEN}b", add_special_tokens=False)
    assert ids.count(frame_token_id(tok)) == 1 and len(ids) == 3


def test_bpe_is_deterministic_and_compresses_the_corpus():
    a = build_tokenizer(corpus=CORPUS, vocab_size=400)
    b = build_tokenizer(corpus=list(CORPUS), vocab_size=400)
    assert json.loads(a.backend_tokenizer.to_str()) == json.loads(b.backend_tokenizer.to_str())
    assert 5 + 256 < len(a) <= 400
    byte = build_tokenizer()
    sent = "The boy throws a red ball to the dog."
    assert len(a.encode(sent, add_special_tokens=False)) < len(byte.encode(sent, add_special_tokens=False)) / 2
    assert a.decode(a.encode(sent, add_special_tokens=False)) == sent


def test_save_load_round_trip(tmp_path):
    tok = build_tokenizer(corpus=CORPUS, vocab_size=350)
    tok.save_pretrained(tmp_path / "tok")
    back = build_tokenizer(tmp_path / "tok")
    assert len(back) == len(tok)
    text = f"USER:\nFrame 1:{FRAME_TOKEN}{FRAME_TOKEN}\nQuestion: what color?"
    assert back.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert frame_token_id(back) == frame_token_id(tok)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(back, name) == getattr(tok, name)


def test_loading_an_llm_tokenizer_adds_the_missing_special_tokens(tmp_path):
    # An LLM-style tokenizer with bos/eos but no pad and no frame token.
    vocab = {t: i for i, t in enumerate(["<s>", "</s>"] + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path / "llm")
    tok = build_tokenizer(tmp_path / "llm")
    assert len(tok) == len(vocab) + 1
    assert frame_token_id(tok) == len(vocab)
    assert tok.pad_token_id == tok.eos_token_id  # pad falls back to eos


def test_missing_path_and_missing_frame_token_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        build_tokenizer(tmp_path / "nope")
    vocab = {t: i for i, t in enumerate(["<unk>"] + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")),
                                    unk_token="<unk>")
    with pytest.raises(ValueError, match="frame placeholder"):
        frame_token_id(plain)


def test_corpus_from_records_and_question_samples():
    record = {"video_id": "v", "qas": [{"question": "Q1?", "options": ["a", "b"],
                                        "extra": {"reasoning": "R1."}}]}
    sample = {"question": "Q2?", "options": ["c"], "extra": {},
              "reasoning": {"raw": "raw text", "refined": "refined text", "vcot": ["cap1", "cap2"]}}
    assert list(corpus_from_samples([record, sample])) == [
        "Q1?", "a", "b", "R1.", "Q2?", "c", "raw text", "refined text", "cap1", "cap2"]


def test_tokenizer_cli_on_records_and_reasoning(tmp_path):
    """python -m train tokenizer: one BPE for a study, from records (captions included) and reasoning."""
    import json

    from train.__main__ import main as train_main
    from train.tokenizer import build_tokenizer as load

    recs = tmp_path / "records.jsonl"
    recs.write_text(json.dumps({"qas": [{"question": "Where is the square? " + "zyxw " * 8, "options": ["left", "right"],
                                         "extra": {"caption": "Shot 1: " + "qqqq " * 8}}]}) + "\n")
    reasoning = tmp_path / "r.jsonl"
    reasoning.write_text(json.dumps({"qid": "a", "raw": "vvvv steps", "refined": "vvvv " * 8}) + "\n")
    assert train_main(["tokenizer", "--records", str(recs), "--reasoning", str(reasoning), "--vocab-size", "400",
                       "--out", str(tmp_path / "tok")]) == 0
    tok = load(tmp_path / "tok")
    for word in ("zyxw", "qqqq", "vvvv"):  # each text source reached the BPE (a pair seen twice is merged)
        assert len(tok.encode(" " + word, add_special_tokens=False)) < len(word) + 1, word
