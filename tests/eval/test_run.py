"""``python -m eval run`` on real synthetic shards with a real tiny VideoLLM (random weights).

The model is built from the tiny CPU recipe and saved the way ``python -m train export`` saves
it (``VideoModel.save_export`` + ``train_config.yaml``), then loaded back through
``train.export.load_for_eval`` like any export. Its weights are redrawn with a larger spread so
that its choices differ between questions (a freshly initialised model says "(A)" to
everything, which would make the rank-equality check hollow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from eval import __main__ as eval_cli
from eval.probes import frame_permutation, model_input, shuffle_text, vcot_captions
from eval.run import keep_for_rank, main, predictions_of, score_records
from tests.conftest import has_ffmpeg

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic val shards (2 shards, 4 videos, 12 questions), a vCoT reasoning jsonl, an export."""
    from data_shards.ingest.writer import main as write_main
    from data_shards.schema import read_records
    from data_shards.synth.make import make_synthetic
    from train.config import load_config, save_config
    from train.models import build_model
    from train.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("evalrun")
    recs = make_synthetic(root / "synth", videos=4, seed=3, split="val", width=64, height=64, duration=2.0,
                          questions_per_video=3, jobs=1)
    assert write_main(["--records", str(recs), "--out", str(root / "shards" / "val-%06d.tar"), "--max-count", "2"]) == 0
    records = list(read_records(recs))
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml")
    frames = cfg.data.num_frames
    with (root / "vcot.jsonl").open("w") as f:
        for r in records:
            for qa in r.qas:
                f.write(json.dumps({"qid": qa.qid, "teacher": "hand", "prompt_version": "t", "raw": None,
                                    "refined": None, "teacher_answer": None, "teacher_correct": None,
                                    "vcot": [f"the {qa.qtype} scene moves on ({j})" for j in range(frames - 1)],
                                    "created": "2026-01-01T00:00:00", "status": "ok", "error": None}) + "\n")
    texts = [t for r in records for qa in r.qas for t in (qa.question, *qa.options)]
    tok = build_tokenizer(None, corpus=texts, vocab_size=320)
    torch.manual_seed(7)
    model = build_model(cfg.model, tok)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.save_export(root / "export", tok)
    save_config(cfg, root / "export" / "train_config.yaml")
    return {"root": root, "shards": str(root / "shards" / "val-{000000..000001}.tar"), "export": root / "export",
            "vcot": root / "vcot.jsonl", "records": records, "n": sum(len(r.qas) for r in records),
            "frames": frames}


def _read(d: Path, name: str):
    if name.endswith(".jsonl"):
        return [json.loads(x) for x in (d / name).read_text().splitlines()]
    return json.loads((d / name).read_text())


def test_loglik_with_probes_and_generate(world, tmp_path, capsys):
    out = tmp_path / "ll"
    assert main(["--checkpoint", str(world["export"]), "--shards", world["shards"], "--out", str(out),
                 "--probe", "shuffle_text", "shuffle_frames", "vcot", "--reasoning", str(world["vcot"]),
                 "--batch-size", "5", "--label", "tiny", "--meta", "teacher_acc=66.5", "note=x"]) == 0
    preds, scores, info = _read(out, "predictions.json"), _read(out, "scores.json"), _read(out, "run.json")
    qids = sorted(qa.qid for r in world["records"] for qa in r.qas)
    assert sorted(preds) == qids and all(isinstance(v, int) for v in preds.values())
    gold = {qa.qid: (qa.answer, len(qa.options)) for r in world["records"] for qa in r.qas}
    assert all(0 <= preds[q] < gold[q][1] for q in qids)
    assert len(set(preds.values())) > 1, "the random model should not give one answer to everything"
    right = sum(preds[q] == gold[q][0] for q in qids)
    assert scores["count"] == world["n"] and scores["correct_total"] == right and scores["missing"] == 0
    assert info["label"] == "tiny" and info["meta"]["teacher_acc"] == 66.5 and info["meta"]["note"] == "x"
    assert info["meta"]["task_mode"] == "mtl" and info["meta"]["beta"] == 0.5 and info["n_questions"] == world["n"]
    recs = _read(out, "records.jsonl")
    assert [r["qid"] for r in recs] == qids
    r0 = recs[0]
    assert len(r0["option_scores"]) == len(r0["options"]) and r0["prediction"] == max(
        range(len(r0["options"])), key=lambda k: r0["option_scores"][k])
    for probe in ("shuffle_text", "shuffle_frames", "vcot"):
        p_scores = _read(out / "probes" / probe, "scores.json")
        assert info["probes"][probe]["delta"] == pytest.approx(p_scores["overall"] - scores["overall"])
        assert sorted(_read(out / "probes" / probe, "predictions.json")) == qids
    st = _read(out / "probes" / "shuffle_text", "records.jsonl")[0]
    assert sorted(st["shown_question"].split()) == sorted(st["question"].split())
    vc = _read(out / "probes" / "vcot", "records.jsonl")[0]
    assert len(vc["captions"]) == world["frames"] - 1
    assert "probe vcot" in capsys.readouterr().out
    # the scorer CLI reads the predictions directly
    ann = world["root"] / "synth" / "records.jsonl"
    assert eval_cli.main(["score", "--dataset", "synthetic", "--annotations", str(ann),
                          "--predictions", str(out / "predictions.json"), "--json", str(tmp_path / "s.json")]) == 0
    assert _read(tmp_path, "s.json")["overall"] == pytest.approx(scores["overall"])

    gen = tmp_path / "gen"
    assert main(["--checkpoint", str(world["export"]), "--shards", world["shards"], "--out", str(gen),
                 "--mode", "generate", "--max-new-tokens", "4", "--gen-reasoning", "--reasoning-tokens", "6"]) == 0
    g_preds, g_recs, g_info = _read(gen, "predictions.json"), _read(gen, "records.jsonl"), _read(gen, "run.json")
    assert sorted(g_preds) == qids
    for r in g_recs:
        assert isinstance(r["generated"], str) and isinstance(r["reasoning"], str)
        # the prediction is the extracted answer, or (when none could be read) the loglik choice
        assert r["prediction"] == (r["extracted"] if r["extracted"] is not None else preds[r["qid"]])
        assert r["fallback"] == (r["extracted"] is None)
    c = g_info["generation"]["plain"]
    assert c["generated"] == world["n"] and c["fallback_loglik"] == c["not_extracted"]


def test_fallback_none_leaves_unreadable_answers_missing(world, tmp_path):
    out = tmp_path / "none"
    assert main(["--checkpoint", str(world["export"]), "--shards", world["shards"], "--out", str(out),
                 "--mode", "generate", "--max-new-tokens", "2", "--fallback", "none",
                 "--annotations", str(world["root"] / "synth" / "records.jsonl")]) == 0
    recs, scores = _read(out, "records.jsonl"), _read(out, "scores.json")
    assert scores["count"] == world["n"]  # scored against the annotation file
    unread = [r["qid"] for r in recs if r["extracted"] is None]
    assert scores["missing"] == len(unread) and set(_read(out, "predictions.json")).isdisjoint(unread)


def test_bad_input_is_one_clear_line(world, tmp_path, capsys):
    args = ["--checkpoint", str(world["export"]), "--shards", world["shards"], "--out", str(tmp_path / "x")]
    assert main(args + ["--probe", "vcot"]) == 1
    assert "pass --reasoning" in capsys.readouterr().err
    assert main(args + ["--probe", "vcot", "--reasoning", str(world["vcot"]), "--frames", "3"]) == 1
    assert "reasoning field 'vcot' has 3 captions; 3 frames need 2" in capsys.readouterr().err


def test_every_skipped_shard_is_named_in_the_summary(world, tmp_path, capsys):
    """Three broken shards beside the good ones (two truncated, one missing): the skip warnings are
    rate-limited, but run.json and the printed summary name every one of them, each counted once."""
    root = world["root"] / "shards"
    bad = [tmp_path / "trunc_a.tar", tmp_path / "trunc_b.tar", tmp_path / "gone.tar"]
    for path, src in zip(bad[:2], sorted(root.glob("val-*.tar"))):
        with tarfile.open(src) as tf:
            last = tf.getmembers()[-1]
        path.write_bytes(src.read_bytes()[: last.offset_data + last.size // 2])  # inside its last member
    shards = "::".join([*map(str, bad), world["shards"]])
    assert main(["--checkpoint", str(world["export"]), "--shards", shards, "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    info = _read(tmp_path / "o", "run.json")
    assert info["skipped_shards"] == {str(p): 1 for p in bad}
    assert info["loader_stats"]["corrupt_tar"] == 2 and info["loader_stats"]["missing_shard"] == 1
    for p in bad:
        assert f"shard skipped: {p} (1x)" in printed


@pytest.mark.slow
def test_two_ranks_give_the_same_predictions_as_one(world, tmp_path):
    one = tmp_path / "one"
    common = ["--checkpoint", str(world["export"]), "--shards", world["shards"], "--probe", "shuffle_frames",
              "--batch-size", "4"]
    assert main(common + ["--out", str(one)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for shards, name in ((world["shards"], "two"), (world["shards"].replace("{000000..000001}", "000000"), "shared")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "eval", "run",
               *common, "--shards", shards, "--out", str(tmp_path / name), "--threads", "1"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = tmp_path / "two"
    assert _read(two, "run.json")["world_size"] == 2
    assert _read(two, "predictions.json") == _read(one, "predictions.json")
    assert _read(two / "probes" / "shuffle_frames", "predictions.json") == \
        _read(one / "probes" / "shuffle_frames", "predictions.json")
    a = {r["qid"]: r["option_scores"] for r in _read(one, "records.jsonl")}
    b = {r["qid"]: r["option_scores"] for r in _read(two, "records.jsonl")}
    assert a.keys() == b.keys() and all(a[q] == pytest.approx(b[q], abs=1e-3) for q in a)
    # one shard for two ranks: both read it, each keeps its own videos; every question once
    shared = _read(tmp_path / "shared", "records.jsonl")
    first_shard = {r["qid"] for r in _read(one, "records.jsonl") if r["video_id"] in
                   {rec.video_id for rec in world["records"][:2]}}
    assert [r["qid"] for r in shared] == sorted(first_shard)


def test_probe_building_blocks():
    q, opts = shuffle_text("what does the red ball do", ["it falls down", "it stays"], "d/s/v/q1", seed=0)
    assert sorted(q.split()) == sorted(["what", "does", "the", "red", "ball", "do"])
    assert [sorted(o.split()) for o in opts] == [sorted(["it", "falls", "down"]), ["it", "stays"]]
    assert (q, opts) == shuffle_text("what does the red ball do", ["it falls down", "it stays"], "d/s/v/q1", seed=0)
    for n in (2, 3, 8):
        order = frame_permutation(n, "d/s/v/q1")
        assert sorted(order) == list(range(n)) and order != list(range(n))
    assert frame_permutation(1, "x") == [0]
    frames = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    sample = {"qid": "d/s/v/q1", "question": "a b c", "options": ["x y", "z"], "frames": frames,
              "reasoning": {"vcot": ["c1", "c2", "c3"]}}
    plain = model_input([sample])
    assert plain.captions is None and torch.equal(plain.pixel_values[0], frames)
    shuf = model_input([sample], "shuffle_frames")
    order = shuf.notes[0]["frame_order"]
    assert shuf.pixel_values[0, :, 0, 0, 0].tolist() == order
    assert model_input([sample], "vcot").captions == [["c1", "c2", "c3"]]
    assert model_input([sample], "vcot", use_vcot=True).captions is None  # the probe switches it off
    assert model_input([sample], None, use_vcot=True).captions == [["c1", "c2", "c3"]]
    assert vcot_captions(dict(sample, reasoning=None)) is None
    with pytest.raises(ValueError, match="'vcot' has 2 captions; 4 frames need 3"):
        vcot_captions(dict(sample, reasoning={"vcot": ["a", "b"]}))
    with pytest.raises(ValueError, match="unknown probe"):
        model_input([sample], "mirror")
    assert sum(keep_for_rank(f"k{i}", r, 2) for i in range(10) for r in range(2)) == 10


def test_scoring_of_records_by_hand():
    recs = [{"qid": f"synthetic/val/v{i}/q0", "video_id": f"v{i}", "dataset": "synthetic", "split": "val",
             "qtype": t, "question": "q", "options": ["a", "b", "c"], "gold": 1, "prediction": p}
            for i, (t, p) in enumerate([("CW", 1), ("CW", 0), ("TN", 1), ("DC", None)])]
    s = score_records(recs)
    # Why 1/2, Bef&Aft 1/1, Cnt 0/1 (no prediction: missing), overall 2/4
    assert s["overall"] == 50.0 and s["per_type"]["Why"] == 50.0 and s["per_type"]["Bef&Aft"] == 100.0
    assert s["per_type"]["Cnt"] == 0.0 and s["missing"] == 1
    assert predictions_of(recs) == {"synthetic/val/v0/q0": 1, "synthetic/val/v1/q0": 0, "synthetic/val/v2/q0": 1}


def _collectively_worker(rank: int, init: str, results) -> None:
    """Rank 1 fails in the first phase; rank 0 fails in the second. Both must raise in both."""
    import torch.distributed as dist

    from eval.run import OtherRankFailed, collectively

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    seen = []
    for phase, bad in (("evaluation", 1), ("writing", 0)):
        def fn(bad=bad, phase=phase):
            if rank == bad:
                raise ValueError(f"rank {rank} broke in {phase}")
            return "ok"
        try:
            seen.append(collectively(fn, phase, 2))
        except OtherRankFailed as e:
            seen.append(f"other: {e}")
        except ValueError as e:
            seen.append(f"own: {e}")
    assert collectively(lambda: rank, "last", 2) == rank  # the group is still usable
    results[rank] = seen
    dist.destroy_process_group()


def test_a_failing_rank_makes_every_rank_fail_instead_of_waiting(tmp_path):
    """Without this a rank that fails (bad shard, unwritable --out) leaves the others blocked in
    the next collective until the process group's timeout."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_collectively_worker, args=(f"file://{tmp_path}/pg", results), nprocs=2, join=True)
    assert results[0] == ["other: evaluation: 1 other rank(s) failed (their error is in their log)",
                          "own: rank 0 broke in writing"]
    assert results[1] == ["own: rank 1 broke in evaluation",
                          "other: writing: 1 other rank(s) failed (their error is in their log)"]


def test_missing_or_empty_checkpoint_folder_is_one_line_saying_which(tmp_path):
    """A real `python -m eval run`: the error names the folder and says missing or empty."""
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for folder, says in (("absent", "no such folder"), ("empty", "the folder is empty")):
        proc = subprocess.run([sys.executable, "-m", "eval", "run", "--checkpoint", str(tmp_path / folder),
                               "--shards", str(tmp_path / "val-{000000..000001}.tar"), "--out", str(tmp_path / "o")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert errors == [f"error: checkpoint {tmp_path / folder}: {says}" + errors[0].split(says, 1)[1]], errors
