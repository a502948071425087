"""The transformers backend: batched generation with a tiny LLaVA on frames decoded from a real mp4."""

from __future__ import annotations

import subprocess

import pytest
import torch

from reasoning_gen.backends import GenRequest, build_backend
from reasoning_gen.prompts import (
    REASVQA_TEMPLATE,
    VCOT_BRIDGE_TEMPLATE,
    VCOT_COMMON_TEMPLATE,
    reasvqa_prompt,
    vcot_common_prompt,
)
from tests.conftest import has_ffmpeg
from tests.reasoning_gen.tiny_vlm import TOKENS_PER_IMAGE, build_tiny_llava

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")


def _mp4(path, pattern: str) -> bytes:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=96x64:rate=10",
                    "-t", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    corpus = [REASVQA_TEMPLATE, VCOT_COMMON_TEMPLATE, VCOT_BRIDGE_TEMPLATE, "What does the ball do? red blue rolls"]
    model_dir = build_tiny_llava(root / "tiny-llava", corpus)
    from data_shards.stream.frames import decode_frames

    a = decode_frames(_mp4(root / "a.mp4", "testsrc2"), num_frames=4, size=(48, 64))
    b = decode_frames(_mp4(root / "b.mp4", "mandelbrot"), num_frames=4, size=(48, 64))
    return model_dir, a, b


def _requests(a, b):
    return [
        GenRequest(reasvqa_prompt("What does the ball do?", ["rolls", "stops", "bounces"], 4), a, key="q-a"),
        GenRequest(vcot_common_prompt(0, 4), b[:2], key="q-b#pair0"),
        GenRequest(reasvqa_prompt("What does the red ball do after it rolls?", ["rolls", "stops"], 4), b, key="q-b"),
    ]


def test_batched_generation_on_decoded_frames(tiny):
    model_dir, a, b = tiny
    assert a.dtype == torch.uint8 and a.shape == (4, 3, 48, 64) and not torch.equal(a, b)
    backend = build_backend("transformers", model=str(model_dir), device="cpu", max_new_tokens=6,
                            generate_kwargs={"min_new_tokens": 3})
    assert backend.frames_as == "images" and backend.name == "transformers:tiny-llava"
    reqs = _requests(a, b)
    inputs = backend.build_inputs(reqs)
    # every frame becomes one image: 4 + 2 + 4 images, each TOKENS_PER_IMAGE placeholder tokens
    assert inputs["pixel_values"].shape == (10, 3, 28, 28)
    image_id = backend.tokenizer.convert_tokens_to_ids("<image>")
    per_row = (inputs["input_ids"] == image_id).sum(1).tolist()
    assert per_row == [4 * TOKENS_PER_IMAGE, 2 * TOKENS_PER_IMAGE, 4 * TOKENS_PER_IMAGE]
    assert (inputs["attention_mask"][:, 0] == 0).any()  # left padding for generation

    batched = backend.generate(reqs)
    assert all(r.ok for r in batched), [r.error for r in batched]
    assert all(len(r.text.split()) >= 3 for r in batched)
    # greedy decoding: a request gives the same text alone as inside the padded batch
    single = [backend.generate([r])[0].text for r in reqs]
    assert [r.text for r in batched] == single
    # the frames reach the model: other frames, other output distribution
    with torch.inference_mode():
        x = backend.build_inputs([reqs[0]])
        y = backend.build_inputs([GenRequest(reqs[0].prompt, b, key="swap")])
        la, lb = backend.model(**x).logits[0, -1], backend.model(**y).logits[0, -1]
    assert not torch.allclose(la, lb)


def test_bad_request_fails_alone(tiny):
    model_dir, a, b = tiny
    backend = build_backend("transformers", model=str(model_dir), device="cpu", max_new_tokens=3)
    bad = GenRequest(reasvqa_prompt("What?", ["x", "y"], 2), torch.zeros(2, 5, 8, 8, dtype=torch.uint8), key="bad")
    reqs = _requests(a, b)
    results = backend.generate([reqs[0], bad, reqs[2]])
    assert results[0].ok and results[2].ok
    assert not results[1].ok and results[1].error.startswith("bad: ")
    text_only = backend.generate([GenRequest(reqs[0].prompt, None, key="no-frames")])
    assert text_only[0].ok


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_backend("transformers", model=str(tmp_path / "nope"))


def test_vllm_backend_says_how_to_install():
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            build_backend("vllm", model="/nonexistent")
    else:
        pytest.skip("vllm is installed: the missing-vllm error cannot be shown")


def test_generate_job_with_the_transformers_backend(tiny, synthetic_shards, tmp_path):
    """The job decodes frames with the real loader and feeds them to the model backend."""
    import json

    from reasoning_gen.generate import main as generate_main

    model_dir, _, _ = tiny
    one_shard = synthetic_shards["pattern"].replace("{000000..000005}", "000000")
    code = generate_main(["--shards", one_shard, "--out", str(tmp_path / "out"), "--backend", "transformers",
                          "--model", str(model_dir), "--opt", "device=cpu", "--opt", "max_new_tokens=4",
                          "--frames", "3", "--size", "28x28", "--batch-size", "4", "--workers", "0",
                          "--no-progress"])
    assert code == 0
    recs = [json.loads(x) for x in (tmp_path / "out" / "val.rank00000.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and all(r["status"] == "ok" and r["teacher"] == "transformers:tiny-llava" for r in recs)
    assert all(isinstance(r["raw"], str) and r["refined"] is not None for r in recs)
