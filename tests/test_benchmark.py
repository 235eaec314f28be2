"""The benchmark's instruments against known answers, and the page that reads its file."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from reversion import benchmark
from reversion.book.chapters import performance
from reversion.infra import results


def test_interleaved_medians_recover_known_durations():
    ms = benchmark.interleaved({"short": lambda: time.sleep(0.004), "long": lambda: time.sleep(0.012)},
                               repeats=9, warmup=1)
    assert 3.5 < ms["short"] < 9 and 11 < ms["long"] < 20
    assert 1.8 < ms["long"] / ms["short"] < 3.5  # planted ratio 3


def _peak_of(code: str) -> float:
    proc = subprocess.Popen([sys.executable, "-c", code])
    mon = benchmark._PeakRSS(proc.pid, interval=0.05)
    mon.start()
    proc.wait()
    return mon.stop() / 2**20


def test_peak_memory_sees_a_child_allocation_and_not_a_small_one():
    # The child of a child: the tree is summed, not only the process started.
    big = _peak_of("import subprocess, sys; subprocess.run([sys.executable, '-c', "
                   "'import time; b = bytearray(300 * 2**20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1.5)'])")
    small = _peak_of("import time; time.sleep(1.5)")
    assert big > 300 and small < 100


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    with pytest.MonkeyPatch.context() as mp:  # never read the project's own results
        mp.setenv("REVERSION_RESULTS", str(tmp_path_factory.mktemp("results")))
        benchmark.run(out, book=False, world="smoke", repeats=2, log=lambda s: None)
    return out


def _chapter02(folder, world: str, layer: int, subject: bool = False, overrides: dict | None = None):
    """Chapter 02's metrics.json, written by the writer the chapters use (the subject's record at
    the top of the document), into ``REVERSION_RESULTS`` = ``folder``."""
    path = results.write_metrics("02_vrev_estimation", {"layer": layer},
                                 {"world": world, "world_overrides": overrides or {}},
                                 subject={"kind": "checkpoints" if subject else "organism"})
    assert path.parent.parent == folder


def test_chosen_layer_is_chapter_02s_only_for_the_same_world(tmp_path, monkeypatch):
    from reversion.subjects.organism.worlds import make_world

    monkeypatch.setenv("REVERSION_RESULTS", str(tmp_path))
    default, smoke = make_world("default"), make_world("smoke")
    assert benchmark.chosen_layer(default, "default") == 3  # no file: L - 1
    _chapter02(tmp_path, "default", 2)
    assert benchmark.chosen_layer(default, "default") == 2  # the chapter's choice
    assert benchmark.chosen_layer(smoke, "smoke") == 1  # another world's file: L - 1
    _chapter02(tmp_path, "default", 2, subject=True)
    assert benchmark.chosen_layer(default, "default") == 3  # a user's checkpoints: not this model
    _chapter02(tmp_path, "default", 2, overrides={"history": {"seed": 1}})
    assert benchmark.chosen_layer(default, "default") == 3


def test_run_writes_every_part(smoke_results):
    res = json.loads(smoke_results.read_text())
    assert set(res["steps"]["overhead"]) == {"tracked_chosen_layer", "tracked_all_layers",
                                             "tracked_all_layers_mean_activations", "block"}
    assert res["extraction"]["same_values"] is True
    assert {r["vary"] for r in res["scaling"]} == {"width", "n_probe"}
    assert "book" not in res and not list(smoke_results.parent.glob("*.tmp"))


def test_page_reads_the_file_and_marks_what_was_not_measured(smoke_results):
    res = performance.load(performance.Params(str(smoke_results)))
    table = performance.targets_table(res)
    assert len(table) == len(benchmark.TARGETS)
    assert (table.loc["whole book, empty cache", "met"] == "—")
    assert performance.verdict(res, "book_cold_seconds") == "not measured"


def test_target_verdicts_follow_the_numbers():
    assert performance.met("block_overhead", 0.20) is True
    assert performance.met("block_overhead", 0.30) is False
    assert performance.met("extraction_ratio", 1.0) is True


def test_page_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmark_file.*make benchmark"):
        performance.load(performance.Params(str(tmp_path / "none.json")))
    (tmp_path / "x.json").write_text('{"steps": {}}')
    with pytest.raises(ValueError, match="not a benchmark results file"):
        performance.load(performance.Params(str(tmp_path / "x.json")))


def test_the_large_model_rows_run_on_a_tiny_shape_on_the_cpu():
    """The GPU rows' code (``bench_large``), on a tiny Llama in float32 on the CPU: every figure and
    ratio is there and positive; the ratios are ours over the reference."""
    from reversion.benchmark import bench_large

    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 100}
    r = bench_large(shape, device="cpu", dtype=torch.float32, n_prompts=24, n_probe=8, batch_size=8, repeats=2)
    assert set(r["ms"]) == {"plain_forward", "mean_activations", "probe_forward", "tracking_check"}
    assert all(v > 0 for v in r["ms"].values()) and r["layer"] == 2
    assert r["ratio"]["extraction_to_plain"] == r["ms"]["mean_activations"] / r["ms"]["plain_forward"]
    assert r["ratio"]["tracking_to_floor"] == r["ms"]["tracking_check"] / r["ms"]["probe_forward"]


def test_page_shows_the_gpu_rows_only_when_measured():
    from reversion.book.chapters import performance as ch

    assert "without CUDA" in ch.gpu_table({})
    row = {"ms": {"mean_activations": 2.0, "plain_forward": 4.0, "tracking_check": 1.5, "probe_forward": 1.0},
           "ratio": {"extraction_to_plain": 0.5, "tracking_to_floor": 1.5}, "n_prompts": 516, "n_probe": 128, "layer": 11}
    t = ch.gpu_table({"gpu": row})
    assert list(t["ratio"]) == [0.5, 1.5]
