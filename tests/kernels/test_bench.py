"""vqa_kernels.bench end to end on CPU: tiny shapes, the Triton provider under the interpreter."""

from __future__ import annotations

import csv

import pytest

from vqa_kernels import bench


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_bench_cpu_end_to_end(tmp_path, capsys):
    out = tmp_path / "kernels.csv"
    providers = "ours-triton,ours-triton-inplace,ours-triton-bf16acc,torch-eager,torch-chunked"
    assert bench.main(["--shapes", "16x8x100", "--reps", "1", "--providers", providers,
                       "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "provider" in printed and "ours-triton" in printed and "appended 25 rows" in printed
    rows = _rows(out)
    # ce: the copy baseline + 4 providers x 3 modes (no bf16acc twin); flce: 4 x 3 (no inplace twin).
    assert len(rows) == 1 + 4 * 3 + 4 * 3
    assert {r["kernel"] for r in rows} == {"ce", "flce"}
    for r in rows:
        assert r["device"].startswith("cpu") and r["commit"] and r["n"] == "16" and r["v"] == "100"
        assert "functional check" in r["note"], "CPU rows must not read as performance numbers"
        assert r["dtype"] == "float32"
    full = [r for r in rows if r["mode"] == "full" and r["provider"] != "copy"]
    assert all(float(r["ms"]) > 0 and float(r["peak_mb"]) >= 0 for r in full)
    assert all(r["backend"] == "triton-interpret" for r in full if r["provider"].startswith("ours"))
    eager = [r for r in full if r["provider"] == "torch-eager"]
    assert all(float(r["mem_vs_eager"]) == 1.0 for r in eager)
    # A second run appends below the same header.
    bench.main(["--shapes", "8x8x50", "--reps", "1", "--providers", "torch-chunked", "--kernels", "ce",
                "--modes", "full", "--csv", str(out)])
    assert len(_rows(out)) == len(rows) + 2


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bad shape"):
        bench.parse_shapes("16x8")
    with pytest.raises(SystemExit):
        bench.main(["--providers", "nope", "--csv", ""])
    assert bench.parse_shapes("16384x4096x151936, 8x8x8") == [(16384, 4096, 151936), (8, 8, 8)]


@pytest.mark.slow  # torch.compile on CPU compiles C++ (tens of seconds)
def test_bench_torch_compile_provider(tmp_path):
    out = tmp_path / "k.csv"
    bench.main(["--shapes", "8x8x64", "--reps", "1", "--providers", "torch-compile", "--kernels", "ce",
                "--modes", "full", "--csv", str(out)])
    (row,) = [r for r in _rows(out) if r["provider"] == "torch-compile"]
    assert float(row["ms"]) > 0, row
