"""Launch-parameter sweep of the weighted CE forward kernel on a CUDA GPU (issue 24: the register spills,
and the gap to copy bandwidth).

    python3 scripts/ce_tune.py --csv $OUT/ce_tune.csv      # ~1 minute on an H200

For each shape (bf16 logits, 1/8 of the rows ignored as prompts give, random weights) it times the
training forward (``cross_entropy._forward`` with a separate gradient buffer: loss, lse and the gradient
in one launch, one program per row) for every BLOCK_V x num_warps.  The sweep at commit 6d5d49f also
varied the grid (a persistent grid of 1-8 programs per SM against one program per row); one program per
row won at every shape (docs/BENCHMARKS.md), and the persistent option is gone since.  Each
configuration's loss and gradient are checked against the automatic choice's (the loss to 1e-5
relative, the gradient to one bf16 ulp) before it is timed; a copy of the logits (read + write, 2 N V
bytes) is timed in the same run as the bandwidth reference.  Printed last: the best configurations per
shape, and the automatic one.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vqa_kernels import cross_entropy as ce  # noqa: E402


def inputs(n: int, v: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(n, v, generator=gen, device="cuda", dtype=torch.bfloat16).mul_(2)
    target = torch.randint(0, v, (n,), generator=gen, device="cuda")
    target[: n // 8] = -100
    weight = torch.rand(n, generator=gen, device="cuda")
    return logits, target, weight


def sweep_shape(n: int, v: int, args: argparse.Namespace, dev: str) -> list[dict]:
    """Every configuration at one shape, checked and timed; the automatic choice first."""
    logits, target, weight = inputs(n, v, seed=n + v)
    grad = torch.empty_like(logits)
    dst = torch.empty_like(logits)
    copy = triton.testing.do_bench(lambda: dst.copy_(logits), return_mode="median")
    auto_loss, _ = ce._forward(logits, target, weight, grad=grad)
    auto_grad = grad.clone()
    auto = triton.testing.do_bench(lambda: ce._forward(logits, target, weight, grad=grad), return_mode="median")
    a_block, a_warps, _ = ce._launch_options(v, logits.device, None)
    print(f"{dev} N={n} V={v}: copy {copy:.3f} ms; auto (block {a_block}, {a_warps} warps, "
          f"one per row) {auto:.3f} ms = {copy / auto:.2f} of copy", flush=True)
    rows = [dict(device=dev, n=n, v=v, block_v="auto", num_warps=a_warps, grid="row",
                 ms=round(auto, 4), copy_ms=round(copy, 4), vs_copy=round(copy / auto, 3), check="ref")]
    for block, warps in itertools.product(
            [int(b) for b in args.blocks.split(",")], [int(w) for w in args.warps.split(",")]):
        if block > triton.next_power_of_2(v) or block // (32 * warps) < 1:
            continue
        row = dict(device=dev, n=n, v=v, block_v=block, num_warps=warps, grid="row", copy_ms=round(copy, 4))

        def run(block=block, warps=warps):
            return ce._forward(logits, target, weight, grad=grad, block_v=block, num_warps=warps)
        try:
            grad.fill_(float("nan"))
            loss, _ = run()
            ok_loss = torch.allclose(loss, auto_loss, rtol=1e-5, atol=1e-5)
            ok_grad = bool(((grad.float() - auto_grad.float()).abs() <= auto_grad.float().abs() * 2 ** -7 + 1e-6).all())
            row["check"] = "ok" if ok_loss and ok_grad else f"MISMATCH loss={ok_loss} grad={ok_grad}"
            ms = triton.testing.do_bench(run, return_mode="median")
            row.update(ms=round(ms, 4), vs_copy=round(copy / ms, 3))
        except Exception as e:  # noqa: BLE001 - an out-of-resources config is a result, not a crash
            row.update(ms="", vs_copy="", check=f"{type(e).__name__}: {str(e)[:80]}")
        rows.append(row)
    return rows


def accumulate_probe(v: int = 151936, c: int = 1766, h: int = 4096) -> None:
    """The FLCE lm_weight-gradient accumulation (fp32 acc += bf16 [V, C] @ [C, H]) both ways: the GEMM with
    an fp32 epilogue (torch.addmm out_dtype) vs a bf16 product in slices added to the accumulator."""
    from vqa_kernels.fused_linear_cross_entropy import _accumulate_mm

    gen = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(v, c, generator=gen, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(c, h, generator=gen, device="cuda", dtype=torch.bfloat16)
    base = torch.randn(v, h, generator=gen, device="cuda")
    want = base.double() + a.double() @ b.double()
    for fused in (True, False):
        acc = base.clone()
        try:
            _accumulate_mm(acc, a, b, max_temp_elems=c * v, fused=fused)
            err = ((acc.double() - want).norm() / want.norm()).item()
            ms = triton.testing.do_bench(lambda acc=acc, fused=fused: _accumulate_mm(acc, a, b, c * v, fused=fused),
                                         return_mode="median")
            print(f"accumulate fp32 += bf16 [{v}, {c}] @ [{c}, {h}] fused={fused}: {ms:.3f} ms, rel err {err:.2e}")
        except Exception as e:  # noqa: BLE001
            print(f"accumulate fused={fused}: {type(e).__name__}: {e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="16384x32000,16384x128256,16384x151936", help="NxV list")
    p.add_argument("--blocks", default="4096,8192,16384,32768")
    p.add_argument("--warps", default="4,8,16,32")
    p.add_argument("--csv", default="")
    p.add_argument("--accumulate", action="store_true", help="also time the FLCE fp32 accumulation both ways")
    args = p.parse_args(argv)
    if args.accumulate:
        accumulate_probe()
    dev = torch.cuda.get_device_name(0)
    rows = []
    for shape in args.shapes.split(","):
        n, v = (int(x) for x in shape.lower().split("x"))
        rows += sweep_shape(n, v, args, dev)
        torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["device", "n", "v", "block_v", "num_warps", "grid", "ms", "copy_ms",
                                              "vs_copy", "check"])
            w.writeheader()
            w.writerows(rows)
    for n, v in dict.fromkeys((r["n"], r["v"]) for r in rows):
        timed = sorted((r for r in rows if (r["n"], r["v"]) == (n, v) and r["ms"] != ""), key=lambda r: r["ms"])
        auto = next(r["ms"] for r in timed if r["block_v"] == "auto")
        print(f"\nN={n} V={v}: fastest of {len(timed)} (auto: {auto} ms)")
        for r in timed[:8]:
            print(f"  block {r['block_v']:>6} warps {r['num_warps']:>2} grid {r['grid']:>5}  {r['ms']:.3f} ms  "
                  f"vs copy {r['vs_copy']:.2f}  {r['check']}")
    bad = [r for r in rows if r["check"] not in ("ok", "ref")]
    print(f"\n{len(bad)} configurations failed or mismatched")
    for r in bad[:10]:
        print("  ", r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
