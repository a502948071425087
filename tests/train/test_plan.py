"""``python -m train plan`` against what can be measured on a CPU: DeepSpeed's own memory estimators,
FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``, activations and head memory of tiny bf16
runs (``torch.distributed._tools.mem_tracker.MemTracker`` and the tensors autograd saves), and the
shipped recipes planned from their configs without weights."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from train import flops as flops_mod
from train.config import TrainConfig, load_config, load_section
from train.config.model import FrameLayout, ModelConfig
from train.models import build_model
from train.models.projector import build_vision_tower
from train.models.registry import load_tokenizer
from train.plan import (
    FACTS,
    GPUS,
    ModelFacts,
    activation_bytes,
    assembled_facts,
    llm_layer_bytes,
    logits_bytes,
    main,
    make_plan,
    model_state_bytes,
)
from train.testing.hf_tiny import write_tiny_vlm
from train.tokenizer import build_tokenizer
from vqa_kernels import LinearWeightedCrossEntropy

REPO = Path(__file__).resolve().parents[2]
GPU_RECIPES = {  # recipe -> (nodes, GPUs per node) it is written for (its header comment, docs/TRAINING.md)
    "bench_1b_gpu": (1, 1), "llava7b_siglip_multinode": (4, 8), "llava_ov7b_lora_nextqa_multinode": (4, 8),
    "qwen25vl7b_lora_nextqa_multinode": (4, 8), "stage1_align_llava7b_siglip": (4, 8)}
LLAMA = {"hidden_size": 128, "intermediate_size": 672, "num_hidden_layers": 3, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 320, "tie_word_embeddings": False}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dims(c: dict, **train) -> flops_mod.FlopsDims:
    """FlopsDims of a bare LLM config (no vision side)."""
    heads = c["num_attention_heads"]
    flags = {"train_vision": False, "train_projector": False, "train_llm": True, **train}
    return flops_mod.FlopsDims(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], heads,
                               c["num_key_value_heads"], c["hidden_size"] // heads, c["vocab_size"],
                               1, 1, 1, 1, 1, 3, 1, 1, 1, **flags)


def _llama(**over) -> torch.nn.Module:
    cfg = AutoConfig.for_model("llama", **{**LLAMA, **over})
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(torch.bfloat16).train()


# ------------------------------------------------------------------ model states vs DeepSpeed's estimators
@pytest.mark.parametrize("world", [(1, 1), (1, 8), (4, 8)])
def test_model_states_match_deepspeed_estimators(world):
    """Same parameter counts, every parameter trained, bf16. DeepSpeed 0.19.8's estimators count, per
    parameter, 2 (bf16 weights) + 16 / W (fp32 weights, Adam m and v, fp32 gradients) for stage 2 and
    4 * largest layer + 18 / W for stage 3. Ours agrees exactly except for one known difference: stage 3
    keeps its gradient partitions in the model dtype as well (``grad_partitions_flat_buffer``,
    ``grad_accum_dtype`` unset = bf16), 2 bytes per parameter / W that the stage-3 estimator leaves out
    (its 18 has no 16-bit gradient, the stage-2 one does): +11.1 % (2 / 18) of the sharded part. And
    stage 3 casts gradients to fp32 one optimizer sub-group (1e9 elements) at a time, so on one GPU a 7B
    model needs 4 GB of fp32 gradients at the step, not the estimator's 4 bytes x N (ours is lower)."""
    nodes, per_node = world
    W = nodes * per_node
    N, largest = 7_615_616_512, 545_128_448  # Qwen2-7B and its embedding
    cfg = TrainConfig()
    ds = cfg.deepspeed
    ds.prefetch_bucket_size, ds.reduce_bucket_size, ds.overlap_comm = 0, 0, False  # not in the estimators
    cases = [(3, "none", "none"), (3, "cpu", "none"), (3, "cpu", "cpu"), (2, "none", "none"), (2, "cpu", "none")]
    for stage, opt, par in cases:
        ds.zero_stage, ds.offload_optimizer, ds.offload_param = stage, opt, par
        s = model_state_bytes(N, N, largest, 0, cfg, W)
        ours = s["params"] + s["grads"] + s["optimizer"] + s["step_fp32_grads"] + s["zero_buffers"]
        if stage == 3:
            _, theirs, _ = estimate_zero3_model_states_mem_needs(N, largest, per_node, nodes, cpu_offload=opt != "none",
                                                                 cpu_offload_params=par != "none")
        else:
            _, theirs = estimate_zero2_model_states_mem_needs(N, per_node, nodes, cpu_offload=opt != "none")
        known = 2 * N / W - 4 * max(0.0, N / W - 1e9) if stage == 3 and opt == "none" else 0.0
        assert ours - known == pytest.approx(theirs, rel=1e-9, abs=8), (stage, opt, par, ours, theirs)
        assert abs(ours - theirs) / theirs <= 0.2, (stage, opt, par, ours / theirs)


def test_parameter_counts_on_meta_match_the_built_model():
    """The planner's meta-device counts = DeepSpeed's ``model_to_params`` of the same parts built for real
    (tiny tower + LLM of configs/tiny_cpu.yaml); the 7B configs match their published sizes."""
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml", [])
    facts = assembled_facts(cfg)
    m = cfg.model
    tower = build_vision_tower(m.vision.kind, None, m.vision.config, m.vision.image_size, "sdpa")
    llm_kw = dict(m.llm.config)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(llm_kw.pop("model_type"), **{
        "tie_word_embeddings": False, **llm_kw, "vocab_size": cfg.tokenizer.vocab_size}))
    for part, module in (("vision", tower), ("llm", llm)):
        total, largest = model_to_params(module)
        assert facts.params[part] == total, part
        assert facts.largest_layer >= largest
    plan = make_plan(load_config(REPO / "configs" / "llava7b_siglip_multinode.yaml", []), 4, 8, "h100")
    assert plan.facts.params["llm"] == 7_615_616_512  # Qwen2-7B-Instruct's model card: 7.62B
    assert plan.facts.params["vision"] == pytest.approx(428e6, rel=0.01)  # SigLIP so400m: the "400M" tower


@pytest.mark.parametrize("kind", ["assembled", "qwen2_5_vl", "llava_onevision"])
def test_facts_match_the_built_model(tmp_path, kind):
    """What the planner reads from configs (parameters per part, trained ones with LoRA, FLOPs dims,
    visual tokens) = what the real model of that family reports once built (tiny, LoRA on)."""
    cfg = TrainConfig()
    cfg.data.num_frames, cfg.data.frame_size = 4, [56, 84]
    lora = {"enabled": True, "r": 4, "dropout": 0.05}
    if kind == "assembled":
        build_tokenizer(corpus=["What color is the screen?", "The screen is red."] * 5,
                        vocab_size=300).save_pretrained(tmp_path / "tok")
        cfg.tokenizer.path = str(tmp_path / "tok")
        cfg.model = load_section(ModelConfig, {"vision": {"freeze": False}, "lora": lora}, "model")
        tokenizer = build_tokenizer(cfg.tokenizer.path)
    else:
        folder = write_tiny_vlm(tmp_path / kind, kind)
        cfg.model = load_section(ModelConfig, {"kind": "hf_vlm", "hf": {"path": str(folder)}, "lora": lora}, "model")
        tokenizer = load_tokenizer(cfg.model)
    facts = FACTS[cfg.model.kind](cfg)
    model = build_model(cfg.model, tokenizer)
    assert facts.total == sum(p.numel() for p in model.parameters())
    assert facts.total_trained == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if kind == "assembled":
        assert facts.dims == model.flops_dims() and facts.layout == model.frame_layout(4)
        assert facts.params["vision"] == sum(p.numel() for p in model.vision.parameters())
    else:
        assert (facts.dims, facts.tower_frames) == (model.flops_dims((56, 84))[0], facts.layout.groups)
        assert facts.layout == model.frame_layout(4, (56, 84))
        assert {k: v for k, v in facts.trained.items() if v} == model.trainable_summary()


# ------------------------------------------------------------------ FLOPs vs FlopCounterMode
def test_llm_flops_match_flop_counter():
    """Forward + backward of a trained tiny Llama (LM head on every position), counted by torch's
    FlopCounterMode, vs :func:`train.flops.flops_per_sample`. The counter has no formula for CPU's fused
    SDPA kernel, so the model runs eager attention (matmuls the counter sees), which computes the dense
    S x S scores; the formula charges the causal half (what FlashAttention computes), so the comparison
    adds that half back."""
    B, S = 2, 96
    cfg = AutoConfig.for_model("llama", **LLAMA)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(torch.bfloat16).train()
    ids = torch.randint(0, LLAMA["vocab_size"], (B, S))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.float().sum().backward()
    counted = counter.get_total_flops() / B
    d = _dims(LLAMA)
    ours = flops_mod.flops_per_sample(d, S, num_frames=1)["llm"]
    a = d.llm_heads * d.llm_head_dim
    dense = ours + 3 * 2 * d.llm_layers * a * S * S  # the masked half of QK^T and AV, forward + backward
    err = abs(dense - counted) / counted
    print(f"LLM FLOPs per sample: counted {counted:.4g}, formula (+ masked half) {dense:.4g}, error {err:.3%}; "
          f"causal formula {ours:.4g}")
    assert err < 0.005


def test_vision_flops_match_flop_counter():
    """A trained tiny SigLIP tower (no pooling head: the formula counts the encoder and the patch
    embedding) on 4 frames, eager attention (as above). The formula charges the patch embedding's backward
    2x its forward; the counter charges only its weight gradient (the pixels need none): that one forward's
    worth is the whole difference (3.3 % here, ~0.1 % for SigLIP-so400m, whose encoder dwarfs the embedding)."""
    kw = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
          "patch_size": 8, "vision_use_head": False}
    tower = build_vision_tower("siglip", None, kw, 64, "eager").train()  # matmul attention: counted
    frames = torch.randn(4, 3, 64, 64)
    with FlopCounterMode(display=False) as counter:
        tower(pixel_values=frames).last_hidden_state.sum().backward()
    counted = counter.get_total_flops()
    grid = 64 // 8
    d = flops_mod.FlopsDims(8, 8, 1, 1, 1, 8, 8, 64, 256, 2, grid * grid, 8, 3, 8, 1, 1, train_vision=True,
                            train_projector=False, train_llm=False)
    ours = flops_mod.flops_per_sample(d, 1, num_frames=4)["vision"]
    patch_grad_input = 4 * 2 * grid * grid * 3 * 8 * 8 * 64  # frames x forward FLOPs of the patch embedding
    err = abs(ours - counted) / counted
    print(f"vision FLOPs of 4 frames: counted {counted:.4g}, formula {ours:.4g}, error {err:.3%} "
          f"(of which the patch embedding's input gradient {patch_grad_input / counted:.3%})")
    assert abs(ours - patch_grad_input - counted) / counted < 1e-6


# ------------------------------------------------------------------ activations vs measured
def _saved_bytes(run, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``run()`` runs (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            seen.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


@pytest.mark.parametrize("variant", ["trained", "frozen", "lora", "lora_nodrop", "lora_mlp"])
def test_saved_activations_match_formula(variant):
    """The per-layer formula vs the tensors autograd saves in a tiny bf16 Llama (2 x 256 tokens), for
    trained weights, frozen weights with gradient flowing through, and LoRA (dropout 0.05 / 0; attention
    or all linear layers): within 0.5 % (the only tensors left out are RoPE's cos / sin, per position)."""
    peft = pytest.importorskip("peft")
    B, S, r = 2, 256, 8
    model = _llama()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"] + (["gate_proj", "up_proj", "down_proj"]
                                                          if variant == "lora_mlp" else [])
    dropout = 0.0 if variant == "lora_nodrop" else 0.05
    lora = variant.startswith("lora")
    if lora:
        model = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=16, lora_dropout=dropout,
                                                           target_modules=targets)).to(torch.bfloat16)
    elif variant == "frozen":
        model.requires_grad_(False)
    base = model.get_base_model() if lora else model
    emb = base.model.embed_tokens(torch.randint(0, LLAMA["vocab_size"], (B, S))).detach().requires_grad_(True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = _saved_bytes(lambda: base.model(inputs_embeds=emb), params) / (B * S)
    h, f = LLAMA["hidden_size"], LLAMA["intermediate_size"]
    widths = {"q_proj": ("attn_in", h), "k_proj": ("attn_in", h), "v_proj": ("attn_in", h),
              "o_proj": ("attn_out", h), "gate_proj": ("mlp_in", h), "up_proj": ("mlp_in", h),
              "down_proj": ("mlp_act", f)}
    trained = variant == "trained"
    layer = llm_layer_bytes(_dims(LLAMA, train_llm=trained), LLAMA["num_attention_heads"], 2, trained, S,
                            lora=[widths[t] for t in targets] if lora else [], lora_r=r, lora_dropout=dropout,
                            mask_bytes=2)  # CPU dropout keeps its mask in bf16 (CUDA: a bool mask)
    ours = LLAMA["num_hidden_layers"] * layer + 4 * h + 4 + (2 * h if trained else 0)  # + the final norm
    err = abs(ours - measured) / measured
    print(f"{variant}: saved {measured:.0f} B/token, formula {ours:.0f}, error {err:.3%}")
    assert err < 0.005


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_peak_matches_a_measured_run(checkpointing):
    """Peak activation memory of forward + backward (MemTracker's ACT + TEMP at the peak) of a tiny
    trained bf16 Llama vs the plan's activations (saved tensors + one layer's backward gradients).
    Without checkpointing the plan is within 10 % (conservative: by the peak, backward has freed the last
    layer's saved tensors); with it the plan assumes the whole recomputed layer is alive at once and is
    up to 35 % high here (conservative; the part is smaller for deep models)."""
    B, S = 2, 256
    model = _llama()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    emb = model.model.embed_tokens(torch.randint(0, LLAMA["vocab_size"], (B, S))).detach().requires_grad_(True)
    tracker = MemTracker()
    tracker.track_external(model, emb)
    with tracker:
        model.model(inputs_embeds=emb).last_hidden_state.float().sum().backward()
    peak = {str(k).rsplit(".", 1)[-1]: v for k, v in tracker.get_tracker_snapshot("peak")[torch.device("cpu")].items()}
    measured = (peak["ACT"] + peak["TEMP"]) / (B * S)
    cfg = TrainConfig()
    cfg.task.mode, cfg.data.micro_batch_size = "qa", B
    cfg.task.max_prompt_len, cfg.task.max_target_len = S - 1, 1
    facts = _facts(_dims(LLAMA))
    ours = activation_bytes(facts, cfg, checkpointing)["llm"] / (B * S)
    err = (ours - measured) / measured
    print(f"checkpointing={checkpointing}: measured peak activations {measured:.0f} B/token, plan {ours:.0f}, "
          f"error {err:+.2%}")
    assert (0 <= err < 0.10) if not checkpointing else (0 <= err < 0.35)


def _facts(dims: flops_mod.FlopsDims) -> ModelFacts:
    """Facts of a bare LLM (what activation_bytes and logits_bytes read)."""
    return ModelFacts({"llm": 0}, {"llm": 0}, 0, 0, dims, FrameLayout(1), 1, dims.llm_heads)


@pytest.mark.parametrize("fused", [False, True])
def test_head_memory_matches_a_measured_run(fused):
    """LM-head peak memory (MemTracker, besides the weight and its gradient) of 768 target rows, vocab
    8192, bf16: the plain loss (logits, fp32 log-softmax, then the fp32 gradients of both) and the fused
    module (chunk 256). On a CPU the fused row CE is its torch twin, which allocates three fp32 [chunk, V]
    temporaries where the Triton kernel works in place: the CPU prediction swaps those in for the
    grad-weight temporary that the GPU prediction counts."""
    N, D, V, C = 768, 64, 8192, 256
    head = LinearWeightedCrossEntropy(D, V, chunk_size=C, dtype=torch.bfloat16)
    hidden = torch.randn(N, D, dtype=torch.bfloat16, requires_grad=True)
    target, weight = torch.randint(0, V, (N,)), torch.ones(N)
    tracker = MemTracker()
    tracker.track_external(head, hidden)
    with tracker:
        if fused:
            loss = head(hidden, target, weight)
        else:
            logits = hidden @ head.weight.t()  # kept, as a transformers model output keeps them
            loss = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
        loss.backward()
    peak = {str(k).rsplit(".", 1)[-1]: v for k, v in tracker.get_tracker_snapshot("peak")[torch.device("cpu")].items()}
    measured = peak["Total"] - peak["PARAM"] - peak["GRAD"] - peak["OTH"]
    cfg = TrainConfig()
    cfg.task.mode, cfg.data.micro_batch_size, cfg.model.loss_chunk_size = "qa", N, C
    cfg.task.max_prompt_len, cfg.task.max_target_len = 0, 1
    d = _dims({**LLAMA, "hidden_size": D, "vocab_size": V, "num_attention_heads": 1, "num_key_value_heads": 1})
    planned = logits_bytes(_facts(d), cfg)
    ours = planned["fused"] - C * V * 2 + 3 * 4 * C * V if fused else planned["unfused"]
    err = abs(ours - measured) / measured
    print(f"{'fused' if fused else 'plain'} head: measured {measured / 1e6:.2f} MB, plan (CPU) {ours / 1e6:.2f} MB, "
          f"error {err:.2%}; plan (GPU) {planned['fused' if fused else 'unfused'] / 1e6:.2f} MB")
    assert err < 0.02


# ------------------------------------------------------------------ the command on the shipped recipes
def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_plan_a_7b_recipe_from_its_config_alone():
    """The Qwen2.5-VL recipe plans without its model folder (published config, said so), in seconds."""
    nodes, per_node = GPU_RECIPES["qwen25vl7b_lora_nextqa_multinode"]
    code, out, _ = _run(["--config", str(REPO / "configs" / "qwen25vl7b_lora_nextqa_multinode.yaml"),
                         "--nodes", str(nodes), "--gpus-per-node", str(per_node), "--gpu", "h100", "--mfu", "0.35"])
    assert code == 0, out
    assert "published config of Qwen2.5-VL-7B-Instruct" in out
    assert "1536 visual tokens" in out  # 8 temporal patches x (336/28) x (448/28), the recipe's comment
    assert "FITS" in out and "MFU 0.35" in out and "989 TFLOP/s" in out
    for label in ("parameters", "gradients", "optimizer states", "activations with checkpointing",
                  "activations without checkpointing", "logits, fused head", "logits, plain HF loss", "peak"):
        assert label in out


def test_overrides_and_offload_change_the_plan():
    cfg_path = REPO / "configs" / "llava7b_siglip_multinode.yaml"
    base = make_plan(load_config(cfg_path, []), 1, 8, "a100")
    off = make_plan(load_config(cfg_path, ["--deepspeed.offload_optimizer=cpu"]), 1, 8, "a100")
    assert off.states["optimizer"] == 0 and base.states["optimizer"] > 10e9
    assert base.step_seconds == pytest.approx(base.flops["total"] / (0.4 * GPUS["a100"].bf16_flops))
    assert base.act_full["llm"] > 10 * base.act_ckpt["llm"]


def test_sequence_parallel_divides_the_llm_activations_logits_and_flops_per_gpu():
    """parallel.sequence S: each GPU holds 1/S of every sequence's tokens through the LLM (activations, head,
    LLM FLOPs); the tower runs every clip on every GPU of the group (its FLOPs and activations stay)."""
    cfg_path = REPO / "configs" / "qwen25vl7b_lora_nextqa_multinode.yaml"
    long = ["--data.num_frames=128", "--task.max_prompt_len=16384"]
    one = make_plan(load_config(cfg_path, long), 1, 8, "h100")
    two = make_plan(load_config(cfg_path, [*long, "--parallel.sequence=2"]), 1, 8, "h100")
    assert two.act_ckpt["llm"] == pytest.approx(one.act_ckpt["llm"] / 2)
    assert two.act_ckpt["projector"] == one.act_ckpt["projector"]
    assert two.flops["llm"] == pytest.approx(one.flops["llm"] / 2)
    assert two.flops["vision"] == one.flops["vision"]
    assert two.logits["fused"] < one.logits["fused"]
    assert one.verdict.startswith("DOES NOT FIT") and two.verdict.startswith("FITS")


@pytest.mark.parametrize("args,field", [(["--gpu", "v100"], "--gpu"), (["--nodes", "0"], "--nodes"),
                                        (["--mfu", "1.5"], "--mfu"), (["--model.kind=nope"], "model.kind")])
def test_bad_input_is_one_line_naming_the_field(args, field):
    code, _, err = _run(["--config", str(REPO / "configs" / "tiny_cpu.yaml"), *args])
    assert code == 2 and field in err and len(err.strip().splitlines()) == 1, err
