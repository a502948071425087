"""scripts/generated_answers.py: letter vs option text vs the model's own last-shot reasoning."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "generated_answers", Path(__file__).resolve().parents[2] / "scripts" / "generated_answers.py")
ga = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ga)


def test_letter_text_and_reasoning_are_told_apart(tmp_path):
    opts = ["red", "blue", "green"]
    rows = [  # gold 1 (blue) each time
        # letter wrong, text right, reasoning right
        {"gen": "In the fourth shot, the circle is blue in the top left.\nAnswer: (A) blue", "correct": False},
        # letter right, text right, reasoning wrong
        {"gen": "In the fourth shot, the circle is red in the top left.\nAnswer: (B) blue", "correct": True},
        # letter wrong, text not an option, no reasoning
        {"gen": "Answer: (C) purple", "correct": False},
        # nothing usable
        {"gen": None, "correct": False},
    ]
    lines = [json.dumps({"qid": f"q{i}", "qtype": "DO", "options": opts, "gold": 1, "correct": r["correct"],
                         "generated": r["gen"]}) for i, r in enumerate(rows)]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    s = ga.diagnose(tmp_path / "records.jsonl")
    assert s["questions"] == 4 and s["letter"] == 25.0 and s["answer_text"] == 50.0
    assert s["agree"] == 25.0 and s["do_last_shot"] == 25.0
    (tmp_path / "ll").mkdir()
    (tmp_path / "ll" / "records.jsonl").write_text(json.dumps({"qid": "q", "gold": 0, "correct": True}) + "\n")
    with pytest.raises(ValueError, match="not a generate-mode"):
        ga.diagnose(tmp_path / "ll" / "records.jsonl")
