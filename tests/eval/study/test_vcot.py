"""The vCoT study's table: gains and interaction computed per seed from the runs' graded records."""

from __future__ import annotations

import json

import pytest

from eval.study.vcot import vcot_summary, vcot_table


def _records(d, right_tc: int, right_do: int, n: int = 10) -> None:
    """n TC and n DO questions, the first ``right_*`` of each answered right."""
    d.mkdir(parents=True)
    rows = [{"qid": f"synthetic/val/v{i}/{t}", "video_id": f"v{i}", "qtype": t, "gold": 0,
             "correct": i < (right_tc if t == "TC" else right_do)} for t in ("TC", "DO") for i in range(n)]
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_gains_and_interaction_per_seed(tmp_path):
    # TC right answers per (model, captions) and seed: captions add 4 and 6 for the image model, 1 and 1 for the video
    tc = {("image", False): (3, 2), ("image", True): (7, 8), ("video", False): (6, 5), ("video", True): (7, 6)}
    cells = {}
    for (align, cap), per_seed in tc.items():
        for seed, right in enumerate(per_seed):
            name = f"{align}{int(cap)}_s{seed}"
            _records(tmp_path / name, right, 5)
            cells.setdefault((align, cap), {})[seed] = name
    _records(tmp_path / "image0_s0" / "probes" / "vcot", 4, 5)  # eval-only: image seed 0 +1 TC, seed 1 missing
    s = vcot_summary(tmp_path, cells, ("TC",))
    assert s["seeds"] == [0, 1]
    assert s["gain"]["image"] == pytest.approx([40.0, 60.0]) and s["gain"]["video"] == pytest.approx([10.0, 10.0])
    assert s["interaction"] == pytest.approx([30.0, 50.0])
    assert s["eval_only_gain"] == {}  # a probe missing for one seed: no eval-only column for that model
    overall = vcot_summary(tmp_path, cells, None)
    assert overall["interaction"] == pytest.approx([15.0, 25.0])  # the same right answers over 20 questions
    md = vcot_table(tmp_path, cells, ("TC",))
    assert "gain(image) - gain(video): **+40.0 [-87.1, +167.1]**" in md and "is not shown" in md
    # a seed without all four cells is left out; no seed with all four: no table
    del cells["video", True][1]
    assert vcot_summary(tmp_path, cells, ("TC",))["seeds"] == [0]
    assert vcot_table(tmp_path, {k: v for k, v in cells.items() if k != ("video", True)}, ("TC",)) == ""
