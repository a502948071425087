"""What a generate-mode eval run's model wrote, beyond the letter it was scored by.

    python scripts/generated_answers.py EVAL_RUN_DIR [...]

For each run directory of ``python -m eval run --mode generate`` (its ``records.jsonl``), prints:

- ``letter``: accuracy as scored (the option letter the answer extractor read);
- ``answer text``: accuracy if the option text written after the letter ("Answer: (B) red") were
  taken instead (a text that is not one of the options counts as wrong);
- ``agree``: how often letter and text name the same option;
- ``DO last shot``: for the synthetic colour questions (qtype DO, "what colour is it at the end"),
  how often the colour the model's own reasoning gives for the last shot is the gold answer.

A diagnosis of STL models (reason, then answer) in docs/RESULTS.md; the scoring rule itself is
unchanged (the letter).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_ANSWER = re.compile(r"Answer:\s*\(([A-Z])\)\s*(.*?)\s*$")
_LAST_SHOT = re.compile(r"(?:fourth|last) shot, the \w+ is (\w+)")


def diagnose(records: Path) -> dict[str, float | int]:
    rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("gold") is not None]
    if not rows or any("generated" not in r for r in rows):
        raise ValueError(f"{records}: not a generate-mode eval run (no 'generated' text per question)")
    letter = text = agree = do = do_right = 0
    for r in rows:
        letter += bool(r["correct"])
        m = _ANSWER.search(r["generated"] or "")
        t = m.group(2) if m else None
        t_idx = r["options"].index(t) if t in r["options"] else None
        text += t_idx == r["gold"]
        agree += m is not None and t_idx is not None and ord(m.group(1)) - ord("A") == t_idx
        if r.get("qtype") == "DO":
            do += 1
            shots = _LAST_SHOT.findall(r["generated"] or "")
            do_right += bool(shots) and shots[-1] == r["options"][r["gold"]]
    n = len(rows)
    return {"questions": n, "letter": 100.0 * letter / n, "answer_text": 100.0 * text / n, "agree": 100.0 * agree / n,
            "do_questions": do, "do_last_shot": 100.0 * do_right / do if do else float("nan")}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print("| run | questions | letter % | answer text % | letter = text % "
          "| DO: last-shot colour in reasoning = gold % |")
    print("|---|---|---|---|---|---|")
    for d in argv:
        try:
            s = diagnose(Path(d) / "records.jsonl")
        except (OSError, ValueError, json.JSONDecodeError) as e:
            print(f"error: {d}: {e}", file=sys.stderr)
            return 1
        print(f"| {Path(d).name} | {s['questions']} | {s['letter']:.1f} | {s['answer_text']:.1f} | {s['agree']:.1f} | "
              f"{s['do_last_shot']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
