"""Trainer config: recipes load, overrides are typed, bad keys/values give one line naming them,
and the CLI stops on a missing shard or an empty dataset before any process group exists."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import tarfile
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from train import config as C
from train.config import ConfigError, TrainConfig, field_docs, load_config, save_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert cfg.deepspeed.zero_stage == 3
    assert cfg.data.urls


def test_overrides_are_typed_and_nested():
    cfg = load_config(TINY, ["--optim.lr=3e-4", "--run.max_steps=7", "--logging.tensorboard=false",
                             "--data.frame_size=[48,64]", "--data.urls=/a/{0..1}.tar",
                             "--model.llm.config.hidden_size=32",
                             "--run.name=123", "--data.epoch_batches=null", "--task.beta=1"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.run.max_steps == 7 and cfg.logging.tensorboard is False
    assert cfg.data.frame_size == [48, 64] and cfg.data.urls == ["/a/{0..1}.tar"]
    assert cfg.model.llm.config["hidden_size"] == 32 and cfg.model.llm.config["model_type"] == "llama"
    assert cfg.run.name == "123" and cfg.data.epoch_batches is None and cfg.task.beta == 1.0


@pytest.mark.parametrize("override, named", [
    ("--optim.lrr=1", "'optim.lrr' (did you mean 'optim.lr'?)"),
    ("--bogus.x=1", "'bogus'"),
    ("--model.vision.kindd=clip", "'model.vision.kindd'"),
    ("--task.mode=foo", "task.mode"),
    ("--optim.lr=-0.1", "optim.lr: must be > 0"),
    ("--run.max_steps=abc", "run.max_steps: expected an integer"),
    ("--deepspeed.zero_stage=5", "deepspeed.zero_stage"),
    ("--deepspeed.precision=fp8", "deepspeed.precision: must be one of"),
    ("--data.frame_size=[32]", "data.frame_size"),
    ("--logging.tensorboard=maybe", "logging.tensorboard: expected true or false"),
    ("--model.vision.kind=vit", "model.vision.kind"),
    ("--optim.warmup_steps=50", "optim.warmup_steps"),
    ("--optim=3", "'optim' is a section"),
])
def test_bad_key_or_value_is_one_line_naming_it(override, named):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override])
    msg = str(e.value)
    assert named in msg and "\n" not in msg, msg


def test_unknown_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("  seed: 0\n", "  seed: 0\n  sed: 1\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'run\.sed'"):
        load_config(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(TINY, ["--optim.lr=1e-3", "--model.llm.config.num_hidden_layers=1"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg


def test_every_trainer_field_has_a_docstring():
    for cls in (C.DataConfig, C.OptimConfig, C.DeepSpeedSection, C.CheckpointConfig, C.LoggingConfig,
                C.TokenizerConfig, C.RunConfig, TrainConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"
    lines = C.describe()
    assert any(line.strip().startswith("optim.lr: float = 0.0001  # Peak learning rate") for line in lines)


def _main_error(argv: list[str]) -> str:
    from train.__main__ import main

    err = io.StringIO()
    with redirect_stderr(err):
        assert main(argv) == 2
    return err.getvalue().strip()


def test_cli_config_error_is_one_line():
    text = _main_error(["--config", str(TINY), "--optim.lrr=1"])
    assert text.count("\n") == 0 and "optim.lrr" in text and text.startswith("error: config:")
    assert "unexpected argument" in _main_error(["--config", str(TINY), "positional"])


def test_missing_shard_and_empty_dataset_stop_before_deepspeed(tmp_path, monkeypatch):
    # Other tests in this process may already hold a process group (train.bench runs in-process),
    # so "before DeepSpeed starts" is checked on the call itself, not on torch.distributed's state.
    started = []
    monkeypatch.setattr("train.loop.init_distributed", lambda *a, **k: started.append(a) or "gloo")
    tar = tmp_path / "train-000000.tar"
    with tarfile.open(tar, "w"):
        pass  # a valid tar with no sample
    text = _main_error(["--config", str(TINY), f"--data.urls={tmp_path}/train-{{000000..000001}}.tar",
                        f"--run.output_dir={tmp_path}/runs"])
    assert "shard not found" in text and "train-000001.tar" in text and text.count("\n") == 0
    text = _main_error(["--config", str(TINY), f"--data.urls={tar}", f"--run.output_dir={tmp_path}/runs"])
    assert "dataset is empty" in text
    (tmp_path / "sizes.json").write_text(json.dumps({"shards": {tar.name: {"videos": 0, "questions": 0}}}))
    assert "dataset is empty" in _main_error(["--config", str(TINY), f"--data.urls={tar}"])
    text = _main_error(["--config", str(TINY), f"--data.urls={tar}", "--data.reasoning=[/nope/r.jsonl]"])
    assert "data.reasoning: file not found: /nope/r.jsonl" in text
    assert started == []
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, needle", [
    ("--optim.lr=inf", "optim.lr: must be a finite number"),
    ("--optim.lr=.nan", "optim.lr: must be a finite number"),
    ("--task.beta=.inf", "task.beta: must be a finite number"),
    ("--task.alpha=nan", "task.alpha: must be a finite number"),
])
def test_non_finite_numbers_are_rejected(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(TINY, [override])


@pytest.mark.parametrize("overrides, needle", [
    (["--model.llm.config.hiden_size=64"],
     "model.llm.config.hiden_size: unknown key for LlamaConfig (did you mean 'model.llm.config.hidden_size'?)"),
    (["--model.vision.config.num_hiden_layers=2"], "model.vision.config.num_hiden_layers: unknown key"),
    (["--model.llm.config.hidden_size=100", "--model.llm.config.num_attention_heads=3"],
     "not a multiple of the number of attention heads"),
    (["--model.vision.config.num_attention_heads=3"], "model.vision.config.num_attention_heads: 3 heads do not divide"),
    (["--model.llm.config.model_type=lama"], "unknown model type 'lama' (did you mean 'llama'?)"),
    # values transformers stores but cannot build a model from (issue 26 item 8): they crashed after
    # DeepSpeed started
    (["--model.llm.config.hidden_act=gleu"], "model.llm.config.hidden_act: unknown activation 'gleu'"),
    (["--model.llm.config.hidden_size=-128"], "model.llm.config.hidden_size"),
    (["--model.vision.config.patch_size=0"], "model.vision.config.patch_size"),
    (["--model.llm.config.rope_scaling={type: foo, factor: 2.0}"], "unknown RoPE type 'foo'"),
    (["--model.llm.config.rms_norm_eps=.nan"], "model.llm.config.rms_norm_eps: must be a finite number"),
    (["--deepspeed.extra={zero_optimization: {reduce_bucket_size: .inf}}"],
     "deepspeed.extra.zero_optimization.reduce_bucket_size: must be a finite number"),
    (["--data.num_frames=100000"], "data.num_frames"),
])
def test_nested_hf_config_typos_and_bad_values_are_one_line(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_nested_config_typo_stops_python_m_train_before_anything_starts(tmp_path):
    """A real `python -m train`: exit 2, one line on stderr, no run dir created."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "train", "--config", str(TINY), "--model.llm.config.hiden_size=64",
                           f"--run.output_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "model.llm.config.hiden_size" in errors[0], proc.stderr[-3000:]
    assert not any(tmp_path.iterdir())


def test_a_field_given_in_a_row_with_other_values_is_a_shell_expansion_and_refused():
    """`--data.urls=shards/train-{000000..000003}.tar` unquoted becomes four words in any shell (a remote one
    too: pdsh under the DeepSpeed launcher); taking the last silently trained on one shard of four."""
    from train.config import split_overrides

    expanded = [f"--data.urls=shards/train-{i:06d}.tar" for i in range(4)]
    with pytest.raises(ConfigError, match=r"--data.urls given 4 times in a row \(shards/train-000000.tar, .*quote it"):
        split_overrides([*expanded, "--run.max_steps=3"])
    # a later override of the same field still wins when it is not an expansion
    assert split_overrides(["--run.max_steps=1", "--optim.lr=0.1", "--run.max_steps=2"])[-1] == "--run.max_steps=2"
    assert split_overrides(["--run.max_steps=2", "--run.max_steps=2"]) == ["--run.max_steps=2"] * 2
