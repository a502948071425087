"""LinearWeightedCrossEntropy under real DeepSpeed ZeRO-3 (2 CPU ranks, gloo) against one process.

A tiny model (embedding + our module as LM head) is wrapped by deepspeed.initialize with ZeRO
stage 3.  Outside its forward the head weight is an empty shard, so the loss only works because
the module owns the weight.  Compared with a single-process torch run of the same model on both
ranks' batches: per-rank losses, the full gradients (deepspeed.utils.safe_get_full_grad) and the
parameters after one SGD step, for reduction "sum" and for "none" with a non-uniform per-row
grad_output (which makes the fused op recompute its chunks in backward, reading the weight that
ZeRO-3 gathers again for the backward pass).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import assert_close_report

VOCAB, HIDDEN, TOKENS, WORLD, LR = 61, 12, 10, 2, 0.5


class TinyLM(torch.nn.Module):
    def __init__(self, reduction: str):
        super().__init__()
        from vqa_kernels import LinearWeightedCrossEntropy

        self.emb = torch.nn.Embedding(VOCAB, HIDDEN)
        self.head = LinearWeightedCrossEntropy(HIDDEN, VOCAB, bias=True, reduction=reduction,
                                               z_loss=1e-3, chunk_size=4)

    def forward(self, ids, target=None, weight=None):
        return self.head(self.emb(ids), target, weight)


def make_model(reduction: str) -> TinyLM:
    torch.manual_seed(1234)
    return TinyLM(reduction)


def rank_batch(rank: int):
    gen = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, VOCAB, (TOKENS,), generator=gen)
    target = torch.randint(0, VOCAB, (TOKENS,), generator=gen)
    target[:3] = -100  # prompt tokens
    weight = torch.rand(TOKENS, generator=gen)
    weight[4] = 0.0
    grad_rows = torch.rand(TOKENS, generator=gen) * 2  # used by reduction "none"
    return ids, target, weight, grad_rows


def scalar_loss(out, reduction, grad_rows):
    return out if reduction == "sum" else (out * grad_rows).sum()


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from vqa_kernels import _backend as kernels_backend

    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    for reduction in ("sum", "none"):
        model = make_model(reduction)
        names = [n for n, _ in model.named_parameters()]
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                  "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0}
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=config)
        head = engine.module.head
        shard_shape = tuple(head.weight.shape)  # outside the forward: an empty shard
        ids, target, weight, grad_rows = rank_batch(rank)
        logits = engine(ids)  # the logits form, gathered by ZeRO-3 inside the module's forward
        loss = scalar_loss(engine(ids, target, weight), reduction, grad_rows)
        engine.backward(loss)
        grads = {n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()}
        engine.step()
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            params = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        results[reduction] = {"loss": loss.detach(), "logits": logits.detach(), "grads": grads,
                              "params": params, "shard_shape": shard_shape, "names": names,
                              "backend": kernels_backend.choose("cpu")[0]}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    from data_shards.common.distenv import exit_process, shutdown

    shutdown()
    exit_process(0)  # DeepSpeed keeps the gloo threads alive past destroy_process_group: see its doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference(reduction: str):
    """One process, both ranks' batches; DeepSpeed averages gradients over ranks, so: mean."""
    model = make_model(reduction)
    losses, logits = [], []
    for rank in range(WORLD):
        ids, target, weight, grad_rows = rank_batch(rank)
        logits.append(model(ids).detach())
        losses.append(scalar_loss(model(ids, target, weight), reduction, grad_rows))
    (sum(losses) / WORLD).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return [x.detach() for x in losses], logits, grads, params


@pytest.mark.slow
@pytest.mark.parametrize("path", ["torch-chunked", "triton-interpret"])
def test_module_under_zero3_matches_single_process(tmp_path, monkeypatch, path):
    """The ranks run the path named (the Triton kernels through the interpreter, or the chunked
    torch fallback CPU training uses); the single-process reference always runs chunked torch."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(os.path.join(os.path.dirname(__file__), "..", "..", ".cache",
                                                 "torch_extensions"))))
    if path == "triton-interpret":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the spawned ranks inherit it
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the reference: chunked torch
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    tol = {"rtol": 1e-5, "atol": 1e-6}
    for reduction in ("sum", "none"):
        losses, logits, grads, params = reference(reduction)
        for r in range(WORLD):
            got = ranks[r][reduction]
            assert got["backend"] == path
            assert got["shard_shape"] == (0,), f"head weight outside forward: {got['shard_shape']}"
            assert_close_report(got["loss"], losses[r], **tol, name=f"{reduction} rank{r} loss")
            assert_close_report(got["logits"], logits[r], **tol, name=f"{reduction} rank{r} logits")
            for name in got["names"]:
                assert_close_report(got["grads"][name], grads[name], **tol,
                                    name=f"{reduction} rank{r} grad {name}")
                assert_close_report(got["params"][name], params[name], **tol,
                                    name=f"{reduction} rank{r} param after step {name}")
