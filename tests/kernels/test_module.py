"""LinearWeightedCrossEntropy: loss and logits forms, from_linear, and swapping a transformers
model's lm_head (generation unchanged, loss equal to the model's own loss)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import assert_close_report
from vqa_kernels import LinearWeightedCrossEntropy, fused_linear_weighted_cross_entropy
from vqa_kernels.reference import fused_linear_weighted_cross_entropy_eager

TOL32 = {"rtol": 1e-4, "atol": 1e-5}


def test_module_loss_logits_and_grads(backend_device):
    _, dev = backend_device
    mod = LinearWeightedCrossEntropy(16, 77, bias=True, z_loss=1e-3, device=dev)
    hidden = torch.randn(2, 5, 16, device=dev, requires_grad=True)
    target = torch.randint(0, 77, (2, 5), device=dev)
    target[0, :2] = -100
    weight = torch.rand(2, 5, device=dev)
    loss = mod(hidden, target, weight)
    loss.backward()
    h2 = hidden.detach().clone().requires_grad_(True)
    w2 = mod.weight.detach().clone().requires_grad_(True)
    b2 = mod.bias.detach().clone().requires_grad_(True)
    ref = fused_linear_weighted_cross_entropy_eager(h2.reshape(-1, 16), w2, target.reshape(-1),
                                                    weight.reshape(-1), b2, z_loss=1e-3)
    ref.backward()
    assert_close_report(loss, ref, **TOL32, name="loss")
    for got, want, name in [(hidden.grad, h2.grad, "hidden"), (mod.weight.grad, w2.grad, "weight"),
                            (mod.bias.grad, b2.grad, "bias")]:
        assert_close_report(got, want, **TOL32, name=f"grad {name}")
    logits = mod(hidden)
    assert logits.shape == (2, 5, 77)
    assert torch.equal(logits, mod.logits(hidden))
    assert_close_report(logits, nn.functional.linear(hidden, mod.weight, mod.bias), **TOL32, name="logits")
    # No weight given: every token weighs 1 (a plain summed CE).
    plain = mod(hidden, target)
    ones = fused_linear_weighted_cross_entropy(hidden.reshape(-1, 16), mod.weight, target.reshape(-1),
                                               torch.ones(10, device=dev), mod.bias, z_loss=1e-3)
    assert_close_report(plain, ones, **TOL32, name="unweighted")
    with pytest.raises(ValueError, match="does not match"):
        mod(hidden, target[:, :3])


def test_from_linear_share_and_copy():
    lin = nn.Linear(8, 30, bias=False)
    shared = LinearWeightedCrossEntropy.from_linear(lin)
    assert shared.weight is lin.weight and shared.bias is None
    copied = LinearWeightedCrossEntropy.from_linear(nn.Linear(8, 30), share=False, reduction="none")
    assert copied.bias is not None and copied.reduction == "none"
    assert copied.weight.device.type == "cpu" and not copied.weight.is_meta
    x = torch.randn(4, 8)
    assert torch.equal(shared(x), lin(x))
    # A ZeRO-3-partitioned head: DeepSpeed leaves an empty [0] shard in .data outside forward.
    part = nn.Linear(8, 30, bias=False)
    part.weight.data = torch.empty(0)
    head = LinearWeightedCrossEntropy.from_linear(part)
    assert (head.in_features, head.vocab_size) == (8, 30) and head.weight is part.weight
    with pytest.raises(ValueError, match="partitioned"):
        LinearWeightedCrossEntropy.from_linear(part, share=False)


def test_swap_transformers_lm_head():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 101, (2, 9))
    labels = ids.clone()
    labels[:, :3] = -100  # prompt tokens
    with torch.no_grad():
        want_logits = model(ids).logits
        want_gen = model.generate(ids, max_new_tokens=4, do_sample=False)
        want_loss = model(ids, labels=labels).loss
    model.lm_head = LinearWeightedCrossEntropy.from_linear(model.lm_head)
    assert model.get_output_embeddings() is model.lm_head
    with torch.no_grad():
        assert_close_report(model(ids).logits, want_logits, **TOL32, name="logits after swap")
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), want_gen)
        hidden = model.model(ids).last_hidden_state
        target = labels[:, 1:]
        n_tokens = (target != -100).sum()
        weight = torch.full(target.shape, 1.0) / n_tokens  # mean over target tokens
        ours = model.lm_head(hidden[:, :-1], target, weight)
    assert_close_report(ours, want_loss, **TOL32, name="loss vs model(labels=...).loss")
