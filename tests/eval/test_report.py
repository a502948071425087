"""``python -m eval report`` on hand-made run directories; every expected number worked out by hand.

Runs written below:
  MTL(refined), beta 0.5, teacher 70 %, seeds 0/1/2: overall 50, 60, 70; Why 40, 50, 90;
      probe shuffle_text overall 40, 55, 61 (deltas -10, -5, -9).
  QA-only, seed 0: overall 45, Why 30 (How has no question: None); no probe.
  MTL(raw), beta 0.5, teacher 70 %, seeds 0/1: overall 30, 40.
Hand computation (t_{0.975,2} = 4.303, t_{0.975,1} = 12.706):
  MTL(refined) overall: mean 60, s = 10, half = 4.303 * 10 / sqrt(3) = 24.8434
  MTL(refined) Why: mean 60, deviations -20, -10, 30 -> s = sqrt(1400 / 2) = 26.4575,
      half = 4.303 * 26.4575 / 1.73205 = 65.7302; min/max 40/90
  shuffle_text deltas: mean -8, deviations -2, 3, -1 -> s = sqrt(14 / 2) = 2.64575,
      half = 4.303 * 2.64575 / 1.73205 = 6.57302
  MTL(raw) overall: mean 35, s = 7.07107, half = 12.706 * 7.07107 / 1.41421 = 63.53
"""

from __future__ import annotations

import json
import os

import pytest

from eval import __main__ as eval_cli
from eval.report import find_runs, main, summarize
from eval.stats import interval, t975

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(root, name, label, seed, overall, why, meta=None, probes=None):
    d = root / name
    d.mkdir(parents=True)
    per_type = {"Why": why, "How": None}
    (d / "scores.json").write_text(json.dumps({"dataset": "synthetic", "overall": overall, "per_type": per_type,
                                               "count": 10}))
    info = {"label": label, "meta": {"seed": seed, **(meta or {})}, "probes": {}}
    for pname, pov in (probes or {}).items():
        (d / "probes" / pname).mkdir(parents=True)
        (d / "probes" / pname / "scores.json").write_text(json.dumps({"overall": pov, "per_type": {}}))
        info["probes"][pname] = {"overall": pov}
    (d / "run.json").write_text(json.dumps(info))
    return d


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    mtl = {"task_mode": "mtl", "reasoning_source": "refined", "beta": 0.5, "teacher_acc": 70.0}
    for seed, (ov, why, sh) in enumerate([(50, 40, 40), (60, 50, 55), (70, 90, 61)]):
        _run(root, f"mtl_refined_s{seed}", "MTL(refined)", seed, ov, why, mtl, {"shuffle_text": sh})
    _run(root, "qa_s0", "QA-only", 0, 45, 30, {"task_mode": "qa", "reasoning_source": "none", "beta": 0.0})
    raw = dict(mtl, reasoning_source="raw")
    _run(root, "mtl_raw_s0", "MTL(raw)", 0, 30, 20, raw)
    _run(root, "mtl_raw_s1", "MTL(raw)", 1, 40, 20, raw)
    return root


def test_t_quantiles_and_interval_by_hand():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042 and t975(100) == 1.96
    cell = interval([50, 60, 70])
    assert cell["mean"] == pytest.approx(60) and cell["half"] == pytest.approx(24.8434, abs=1e-4)
    assert (cell["lo"], cell["hi"]) == (pytest.approx(60 - 24.8434, abs=1e-4), pytest.approx(60 + 24.8434, abs=1e-4))
    mm = interval([50, 60, 70], "minmax")
    assert (mm["lo"], mm["hi"], mm["half"]) == (50, 70, None)
    one = interval([45.0])
    assert (one["mean"], one["lo"], one["half"]) == (45.0, None, None)
    assert interval([])["mean"] is None
    with pytest.raises(ValueError, match="interval must be"):
        interval([1.0], "sd")


def test_summary_numbers_by_hand(runs_root):
    s = summarize(find_runs([runs_root]))
    groups = {g["label"]: g for g in s["groups"]}
    assert set(groups) == {"MTL(refined)", "QA-only", "MTL(raw)"}
    ref = groups["MTL(refined)"]
    assert ref["seeds"] == [0, 1, 2]
    assert ref["overall"]["half"] == pytest.approx(24.8434, abs=1e-4)
    assert ref["per_type"]["Why"]["mean"] == pytest.approx(60)
    assert ref["per_type"]["Why"]["half"] == pytest.approx(65.7302, abs=1e-3)
    assert ref["per_type"]["How"]["n"] == 0  # no question of that type in any seed
    assert ref["probe_delta"]["shuffle_text"]["mean"] == pytest.approx(-8)
    assert ref["probe_delta"]["shuffle_text"]["half"] == pytest.approx(6.57302, abs=1e-4)
    assert ref["meta"] == {"task_mode": "mtl", "reasoning_source": "refined", "beta": 0.5, "teacher_acc": 70.0}
    assert groups["MTL(raw)"]["overall"]["half"] == pytest.approx(63.53, abs=1e-2)
    assert groups["QA-only"]["overall"] == {"n": 1, "mean": 45.0, "lo": None, "hi": None, "half": None,
                                            "values": [45.0]}
    assert groups["QA-only"]["probe_delta"]["shuffle_text"]["n"] == 0
    mm = summarize(find_runs([runs_root]), "minmax")
    why = {g["label"]: g for g in mm["groups"]}["MTL(refined)"]["per_type"]["Why"]
    assert (why["lo"], why["hi"]) == (40, 90)


def test_cli_writes_markdown_json_and_pngs(runs_root, tmp_path, capsys):
    out = tmp_path / "report"
    assert eval_cli.main(["report", str(runs_root), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "| MTL(refined) | 3 | 60.0 ± 24.8 | 60.0 ± 65.7 | - |" in md
    assert "| QA-only | 1 | 45.0 | 30.0 | - |" in md
    assert "| MTL(raw) | 2 | 35.0 ± 63.5 | 20.0 ± 0.0 | - |" in md
    assert "| MTL(refined) | -8.0 ± 6.6 |" in md and "| QA-only | - |" in md
    assert "95% Student-t" in md and "| run | seeds | overall | Why | How |" in printed
    for name in ("acc_per_type.png", "acc_vs_beta.png", "acc_vs_teacher.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"![{name}]({name})" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interval"] == "t95" and len(summary["runs"]) == 6
    # paths relative to the report's folder: a committed report names no directory of the machine that made it
    paths = [r["path"] for r in summary["runs"]] + [p for g in summary["groups"] for p in g["runs"]]
    assert all(not os.path.isabs(p) and (out / p / "run.json").is_file() for p in paths), paths
    assert str(tmp_path) not in md and str(tmp_path) not in (out / "summary.json").read_text()
    assert summary["plots"]["learning_curves.png"].startswith("skipped: no run has a learning curve")
    assert {k: v for k, v in summary["plots"].items() if k != "learning_curves.png"} == dict.fromkeys(
        ("acc_per_type.png", "acc_vs_beta.png", "acc_vs_teacher.png"), "written")
    assert main([str(runs_root / "mtl_raw_s0"), str(runs_root / "mtl_raw_s1"), "--out", str(tmp_path / "mm"),
                 "--interval", "minmax"]) == 0
    assert "| MTL(raw) | 2 | 35.0 [30.0, 40.0] |" in (tmp_path / "mm" / "report.md").read_text()


def test_plot_skipped_without_beta_and_teacher(tmp_path):
    _run(tmp_path / "r", "a", "A", 0, 50, 50)
    out = tmp_path / "out"
    assert main([str(tmp_path / "r"), "--out", str(out)]) == 0
    assert (out / "acc_per_type.png").is_file() and not (out / "acc_vs_beta.png").exists()
    md = (out / "report.md").read_text()
    assert "acc_vs_beta.png: not drawn (no run has a numeric 'beta' in its meta)" in md


def test_learning_curves_from_metrics_and_curve_json(tmp_path):
    """train loss from the metrics.jsonl next to the evaluated checkpoints, val accuracy from curve.json;
    drawn next to the accuracy table; a bad curve.json is named."""
    d = _run(tmp_path / "r", "qa_s0", "QA-only", 0, 50, 50)
    ckpt = tmp_path / "train" / "qa_s0" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt.parent / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-3})
                                                        for s in (10, 20, 30)) + "\n")
    info = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**info, "checkpoint": str(ckpt)}))
    (d / "curve.json").write_text(json.dumps({"val_acc": [[15, 30.0], [30, 50.0]]}))
    out = tmp_path / "out"
    assert main([str(d), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["curve"] == {"train_loss": [[10, 0.3], [20, 0.15], [30, 0.1]],
                                           "val_acc": [[15, 30.0], [30, 50.0]]}
    assert (out / "learning_curves.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "report.md").read_text()
    assert md.index("![learning_curves.png]") < md.index("## Settings")
    assert md.index("| QA-only |") < md.index("![learning_curves.png]")
    (d / "curve.json").write_text(json.dumps({"val_acc": [1, 2]}))
    with pytest.raises(ValueError, match="curve.json: field 'val_acc'"):
        find_runs([d])


def test_bad_run_directories_name_the_problem(tmp_path, capsys):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "run.json").write_text("{}")
    assert main([str(d), "--out", str(tmp_path / "o")]) == 1
    assert f"{d}: not an evaluated run (missing scores.json" in capsys.readouterr().err
    (d / "scores.json").write_text('{"overall": 1.0,')
    assert main([str(d), "--out", str(tmp_path / "o")]) == 1
    assert "scores.json:1: invalid JSON" in capsys.readouterr().err
    (d / "scores.json").write_text('{"overall": 1.0}')
    assert main([str(d), "--out", str(tmp_path / "o")]) == 1
    assert "missing field 'per_type'" in capsys.readouterr().err
    _run(tmp_path / "dup", "a", "A", 0, 50, 50)
    _run(tmp_path / "dup", "b", "A", 0, 60, 50)
    assert main([str(tmp_path / "dup"), "--out", str(tmp_path / "o")]) == 1
    assert "runs labelled 'A' repeat seed(s) 0" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such run directory" in capsys.readouterr().err


def test_sweeps_by_hand(runs_root, tmp_path):
    """Beta sweep: MTL(refined) at teacher 70 % has beta 0 (seeds 20, 30) and 0.5 (50, 60, 70).
    Teacher sweep: MTL(refined) at beta 0.5 has teacher 70 % (50, 60, 70) and 90 % (80).
    Single-point series (MTL(raw); the other sweep's runs) are left out of each sweep."""
    base = {"task_mode": "mtl", "reasoning_source": "refined"}
    _run(runs_root, "beta0_s0", "MTL(refined) beta=0", 0, 20, 20, dict(base, beta=0.0, teacher_acc=70.0))
    _run(runs_root, "beta0_s1", "MTL(refined) beta=0", 1, 30, 20, dict(base, beta=0.0, teacher_acc=70.0))
    _run(runs_root, "t90_s0", "MTL(refined) teacher=t90", 0, 80, 20, dict(base, beta=0.5, teacher_acc=90.0))
    out = tmp_path / "rep"
    assert main([str(runs_root), "--out", str(out)]) == 0
    sw = json.loads((out / "summary.json").read_text())["sweeps"]
    beta = sw["beta"]["lines"]
    assert list(beta) == ["mtl(refined) teacher 70%"]
    line = beta["mtl(refined) teacher 70%"]
    assert line["0.0"]["mean"] == 25 and line["0.5"]["mean"] == 60
    assert sw["beta"]["refs"]["QA-only"]["mean"] == 45
    teacher = sw["teacher_acc"]["lines"]
    assert list(teacher) == ["mtl(refined) beta=0.5"]
    assert teacher["mtl(refined) beta=0.5"]["70.0"]["n"] == 3 and teacher["mtl(refined) beta=0.5"]["90.0"]["mean"] == 80
    md = (out / "report.md").read_text()
    assert "## Overall accuracy vs beta\n\n| series | 0 | 0.5 |" in md
    assert "| mtl(refined) teacher 70% | 25.0 ± 63.5 | 60.0 ± 24.8 |" in md
    assert "| QA-only (reference) | 45.0 | 45.0 |" in md
    assert "| mtl(refined) beta=0.5 | 60.0 ± 24.8 | 80.0 |" in md


def _records_run(root, name, label, seed, order_right, why_right, meta=None):
    """A run as ``python -m eval run`` writes it, with records.jsonl: 20 order-dependent (TC) questions, the
    first ``order_right`` right, and 20 Why (CW) questions, the first ``why_right`` right; 2 per video."""
    d = root / name
    d.mkdir(parents=True)
    rows = [{"qid": f"synthetic/val/v{i // 2}/q{i % 2}", "video_id": f"v{i // 2}", "qtype": "TC" if i < 20 else "CW",
             "gold": 0, "correct": (i < order_right) if i < 20 else (i - 20 < why_right)} for i in range(40)]
    (d / "records.jsonl").write_text("".join(json.dumps({**r, "prediction": 0 if r["correct"] else 1}) + "\n"
                                             for r in rows))
    when, why = 100 * order_right / 20, 100 * why_right / 20
    (d / "scores.json").write_text(json.dumps({"overall": (when + why) / 2, "per_type": {"When": when, "Why": why},
                                               "count": 40}))
    (d / "run.json").write_text(json.dumps({"label": label, "meta": {"seed": seed, **(meta or {})}}))


def test_references_null_control_and_reasoning_over_time(tmp_path):
    """Order-type accuracy (20 TC questions; %) by hand, against Order-invariant (seeds 0-2: 50, 60, 40):
      QA-only 65, 70, 55 -> paired differences 15, 10, 15: mean 13.33, sd 2.887, half 4.303 * 2.887 / sqrt(3)
          = 7.172 -> [6.16, 20.51]: reasons over time;
      MTL(refined) 80, 70, 90 -> 30, 10, 50: mean 30, sd 20, half 49.69 -> [-19.7, 79.7]: not decided, no;
      MTL(raw) seeds 0, 1 only: 75, 85 -> unpaired (Welch) 80 - 50 = 30, half 4.303 * sqrt(25 + 33.3) = 32.86: no.
    MTL(refined) beta=0 is QA-only again (a null control)."""
    root = tmp_path / "runs"
    for seed, (qa, mtl, inv, raw) in enumerate([(13, 16, 10, 15), (14, 14, 12, 17), (11, 18, 8, None)]):
        _records_run(root, f"inv_s{seed}", "Order-invariant", seed, inv, 12, {"reference": "order_invariant"})
        _records_run(root, f"qa_s{seed}", "QA-only", seed, qa, 10)
        _records_run(root, f"beta0_s{seed}", "MTL(refined) beta=0", seed, qa, 10, {"beta": 0.0})
        _records_run(root, f"mtl_s{seed}", "MTL(refined)", seed, mtl, 14)
        if raw is not None:
            _records_run(root, f"raw_s{seed}", "MTL(raw)", seed, raw, 14)
    _records_run(root, "text_s0", "Text only", 0, 5, 4, {"reference": "text_only"})
    _records_run(root, "last_s0", "Last frame only", 0, 7, 9, {"reference": "last_frame"})
    out = tmp_path / "rep"
    assert main([str(root), "--out", str(out), "--compare", "QA-only", "MTL(refined)",
                 "--null", "QA-only", "MTL(refined) beta=0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [g["label"] for g in summary["groups"]][-3:] == ["Text only", "Last frame only", "Order-invariant"]
    om = summary["order_margin"]
    assert om["types"] == ["TC", "TN", "TP", "CH", "DC"] and om["reference"] == "Order-invariant"
    assert om["reference_acc"]["mean"] == pytest.approx(50.0)
    rows = {r["label"]: r for r in om["rows"]}
    assert set(rows) == {"QA-only", "MTL(refined) beta=0", "MTL(refined)", "MTL(raw)"}
    qa = rows["QA-only"]
    assert qa["margin"] == pytest.approx(40 / 3) and qa["diff"]["paired"] and qa["reasons_over_time"]
    assert (qa["diff"]["lo"], qa["diff"]["hi"]) == (pytest.approx(40 / 3 - 7.172, abs=1e-3),
                                                    pytest.approx(40 / 3 + 7.172, abs=1e-3))
    mtl = rows["MTL(refined)"]
    assert mtl["margin"] == pytest.approx(30.0) and mtl["diff"]["lo"] == pytest.approx(30 - 49.69, abs=1e-2)
    assert not mtl["reasons_over_time"]
    raw = rows["MTL(raw)"]
    assert not raw["diff"]["paired"] and raw["margin"] == pytest.approx(30.0) and not raw["reasons_over_time"]
    assert raw["diff"]["lo"] == pytest.approx(30 - 4.303 * (25 + 100 / 3) ** 0.5, abs=1e-3)
    assert om["references"]["Text only"]["mean"] == pytest.approx(25.0)
    md = (out / "report.md").read_text()
    assert "| Order-invariant (reference) | 3 | 55.0 ± 12.4 | 50.0 ± 24.8 | 60.0 ± 0.0 |" in md
    assert md.index("| MTL(raw) | 2 |") < md.index("| Text only (reference) | 1 |") < md.index("| Order-invariant (ref")
    assert "## Reasoning over time" in md
    assert "| QA-only | 3 | 63.3 ± 19.0 | +13.3 | [+6.2, +20.5] | yes | yes |" in md
    assert "| MTL(refined) | 3 | 80.0 ± 24.8 | +30.0 | [-19.7, +79.7] | yes | no |" in md
    assert "| MTL(raw) | 2 | 80.0 ± 63.5 | +30.0 | [-2.9, +62.9] | no | no |" in md
    assert "| Text only (reference) | 1 | 25.0 | - | - | - | - |\n| Last frame only (reference) | 1 | 35.0 |" in md
    # the null control sits in the comparison table, marked, with the FPR of the test on simulated nulls
    cmp, null = summary["comparisons"]
    assert (cmp["role"], null["role"]) == ("comparison", "null")
    assert null["diffs"] == [0.0, 0.0, 0.0] and null["boot"]["p"] == 1.0
    assert cmp["fpr"]["sims"] == 200 and cmp["fpr"]["fpr"] is not None
    null_row = next(x for x in md.splitlines() if x.startswith("| QA-only | MTL(refined) beta=0 | 3 |"))
    assert "**null control**" in null_row and "simulated nulls" in null_row
    assert "FPR on nulls" in md and "Secondary, pooled over (seed, question)" in md
    # another set of order-dependent types: only When-type TC questions count anyway; CW alone -> Why accuracy
    assert main([str(root), "--out", str(tmp_path / "why"), "--order-types", "CW"]) == 0
    why = json.loads((tmp_path / "why" / "summary.json").read_text())["order_margin"]
    assert why["types"] == ["CW"] and why["reference_acc"]["mean"] == pytest.approx(60.0)
