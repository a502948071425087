"""The loader benchmark end to end on tiny real shards: output format, equal work, CSV row."""

from __future__ import annotations

import csv
import re

from data_shards.bench.loader_bench import CSV_FIELDS, main
from tests.data_shards.media_helpers import make_shards


def test_bench_end_to_end(tmp_path, capsys):
    make_shards(tmp_path / "shards", [2, 2, 2, 2], questions=2)
    csv_path = tmp_path / "loader.csv"
    argv = [str(tmp_path / "shards" / "shard-{000000..000003}.tar"), "--frames", "3", "--size", "24x32",
            "--workers", "2", "--seconds", "60", "--max-videos", "10", "--csv", str(csv_path)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"speedup_vs_pyav: \d+\.\d\d", lines[-1]), lines[-1]
    assert re.fullmatch(r"speedup_vs_pyav_seek: \d+\.\d\d", lines[-2]), lines[-2]
    rows = {}
    for line in lines:
        m = re.match(r"^(loader \(2 workers\)|torchcodec-seq|pyav-seq|pyav-decode-all|pyav-keyframe)\s+(\d+)\s+(\d+)\s+([\d.]+)", line)
        if m:
            rows[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    assert set(rows) == {"loader (2 workers)", "torchcodec-seq", "pyav-seq", "pyav-decode-all",
                         "pyav-keyframe"}, lines
    # the 8 videos are cycled to reach 10: every provider decoded 10 videos x 3 frames
    assert rows["loader (2 workers)"] == rows["pyav-seq"] == rows["torchcodec-seq"] == rows["pyav-decode-all"] == (10, 30)
    # whole passes: every video the workers decoded reached the consumer (no uncounted work in flight)
    assert any(line.startswith("loader (2 workers)") and "workers decoded 10 videos for the 10 counted" in line
               for line in lines), lines
    assert any("torchcodec vs pyav-seq identical" in line for line in lines), "same frames at native size"
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 1 and list(table[0]) == CSV_FIELDS
    assert table[0]["loader_videos"] == "10" and float(table[0]["speedup_vs_pyav"]) > 0
    # the same ratio: printed to 2 decimals, stored to 3 (so compare within both roundings, not
    # by re-rounding the stored value: 0.5751 prints 0.58 and is stored 0.575, which rounds to 0.57)
    for field, line in (("speedup_vs_pyav", lines[-1]), ("speedup_vs_pyav_seek", lines[-2])):
        assert line.startswith(f"{field}: ")
        assert abs(float(table[0][field]) - float(line.split()[-1])) <= 0.0055, (table[0][field], line)


def test_bench_makes_long_gop_sources_and_benches_transcoded_shards(tmp_path, capsys):
    """--make-sources --gop x264 --transcode: original shards (one key frame per video), transcoded
    shards (a key frame every 4 frames), and the transcoded loader's fidelity and cost in the table."""
    from data_shards.bench.loader_bench import tar_videos
    from data_shards.ingest.transcode import keyframe_times

    csv_path = tmp_path / "loader.csv"
    argv = ["--make-sources", str(tmp_path / "src"), "--gop", "x264", "--source-size", "64x96", "--source-seconds", "3",
            "--source-fps", "15", "--source-videos", "4", "--source-grain", "10", "--transcode", "--tc-height", "32", "--tc-fps", "5",
            "--tc-gop", "4", "--frames", "3", "--size", "24x32", "--workers", "2", "--seconds", "60",
            "--max-videos", "6", "--csv", str(csv_path)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"speedup_transcoded_vs_pyav: \d+\.\d\d", lines[-3]), lines[-3]
    row = next(line for line in lines if line.startswith("loader-transcoded (2)"))
    assert re.search(r"\s6\s+18\s.*vs originals: PSNR \d+\.\d dB .* transcode once \d+\.\d\d CPU-s/video", row), row
    assert any("libx264 defaults, GOP 250 (x264 default), grain 10" in line for line in lines)
    sources = next((tmp_path / "src").glob("*-gopx264-grain10"))  # the re-encoded videos, their shards beside them
    tc_dir = next(p for p in sources.iterdir() if p.name.startswith("shards-tc-"))
    for url, per_video in ((str(sources / "shards" / "train-000000.tar"), 1), (str(tc_dir / "train-000000.tar"), 4)):
        for _key, _rec, data in tar_videos([url]):
            keys = keyframe_times(data)
            assert len(keys) >= per_video and (per_video == 1) == (len(keys) == 1), (url, keys)
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 1 and list(table[0]) == CSV_FIELDS
    assert float(table[0]["speedup_transcoded_vs_pyav"]) > 0 and float(table[0]["tc_psnr_db"]) > 15
    assert float(table[0]["tc_cpu_s_per_video"]) > 0 and table[0]["source"].startswith("96x64 3 s 15 fps")


def test_csv_with_an_older_header_is_rewritten_with_the_new_columns(tmp_path):
    from data_shards.bench.loader_bench import append_csv

    path = tmp_path / "old.csv"
    path.write_text("date,commit,speedup_vs_pyav\n2026-01-01,abc,1.5\n")
    append_csv(path, {"date": "2026-01-02", "commit": "def", "speedup_vs_pyav": "2.0", "source": "x"})
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert [r["speedup_vs_pyav"] for r in table] == ["1.5", "2.0"] and table[1]["source"] == "x"
    assert list(table[0]) == CSV_FIELDS


def test_decoder_threads_sweep_runs_the_loader_alone_per_config(tmp_path, capsys):
    make_shards(tmp_path / "shards", [2, 2], questions=2)
    argv = [str(tmp_path / "shards" / "shard-{000000..000001}.tar"), "--frames", "3", "--size", "24x32",
            "--seconds", "2", "--rounds", "1", "--sweep-threads", "1x1,1x2", "--csv", ""]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("decoder threads sweep: 2 shard(s)")
    assert re.match(r"loader 1 workers x 1 threads\s+\d+ videos\s+[\d.]+ videos/s\s+1\.00x", lines[1]), lines[1]
    assert lines[2].startswith("loader 1 workers x 2 threads") and int(lines[2].split()[6]) > 0, lines[2]
