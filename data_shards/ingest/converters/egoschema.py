"""EgoSchema: ``questions.json`` (all questions) plus ``subset_answers.json`` (the public answers).

``questions.json`` is a json list of ``{q_uid, google_drive_id, question, "option 0".."option 4"}``
(the option keys contain a space). There is one question per video, so ``video_id`` = ``q_uid``
and ``video`` = ``{q_uid}.mp4`` (the name of the released clips). ``subset_answers.json`` maps
``q_uid`` -> answer index for the public subset (500 of 5,031); every other question gets a null
answer, never a guess. EgoSchema has no question types: every question has qtype ``"EgoSchema"``.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_shards.ingest.converters.common import Row, check_answer, parse_id, parse_int, parse_text
from data_shards.ingest.converters.star import load_json_list
from data_shards.schema import QA, SchemaError, make_qid

QTYPE = "EgoSchema"
OPTION_KEYS = tuple(f"option {i}" for i in range(5))


def load_answers(path: str | Path, n_options: int = len(OPTION_KEYS)) -> dict[str, int]:
    """``subset_answers.json``: q_uid -> answer index, each checked to be an int in range.

    Raises:
        SchemaError: naming the file and the q_uid of a bad value.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}:{e.lineno}", "<json>", f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise SchemaError(str(path), "<root>", f"expected an object q_uid -> answer, got {type(data).__name__}")
    answers = {}
    for q_uid, value in data.items():
        source = f"{path}[{q_uid!r}]"
        if isinstance(value, str):  # "3" is not an answer index; a json int is
            raise SchemaError(source, q_uid, f"expected an integer answer, got {value!r}")
        answers[q_uid] = check_answer(parse_int(value, source, q_uid), n_options, source, q_uid)
    return answers


def read_egoschema_rows(path: str | Path, split: str, answers_path: str | Path | None = None
                        ) -> tuple[list[Row], list[str]]:
    """Parse ``questions.json`` (and the answers, if given) into one :class:`Row` per question.

    Returns:
        ``(rows, notes)``: notes report answers whose q_uid is not among the questions.

    Raises:
        SchemaError: naming ``path[INDEX] (q_uid ...)`` and the key, on a missing key, empty
            question or option; or naming the answers file and q_uid of a bad answer.
    """
    path = Path(path)
    answers = load_answers(answers_path) if answers_path is not None else {}
    rows = []
    for i, item in enumerate(load_json_list(path)):
        source = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise SchemaError(source, "<item>", f"expected an object, got {type(item).__name__}")
        if isinstance(item.get("q_uid"), str):
            source += f" (q_uid {item['q_uid']})"
        for key in ("q_uid", "question") + OPTION_KEYS:
            if key not in item:
                raise SchemaError(source, key, "missing key")
        q_uid = parse_id(item["q_uid"], source, "q_uid")
        options = [parse_text(item[k], source, k) for k in OPTION_KEYS]
        meta = {"google_drive_id": item["google_drive_id"]} if "google_drive_id" in item else {}
        qa = QA(qid=make_qid("egoschema", split, q_uid, q_uid),
                question=parse_text(item["question"], source, "question"),
                options=options, answer=answers.get(q_uid), qtype=QTYPE, extra={"source_qid": q_uid})
        rows.append(Row(source=source, video_id=q_uid, video=f"{q_uid}.mp4", qa=qa, meta=meta))
    known = {row.video_id for row in rows}
    unused = [q for q in answers if q not in known]
    notes = []
    if unused:
        notes.append(f"{answers_path}: {len(unused)} answers name q_uids not in {path} (first: {unused[:3]})")
    return rows, notes
