"""The benchmark's instruments against known answers, and the page that reads its file."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from reversion import benchmark
from reversion.book.chapters import ch10_performance as performance
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


def test_a_mark_splits_the_peak_into_segments():
    """A notebook's peak is the tree's peak between the marks before and after it: a 300 MiB
    allocation in the first segment does not appear in the second."""
    import time

    proc = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); "
                             "b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0); del b; time.sleep(2.0)"])
    mon = benchmark._PeakRSS(proc.pid, interval=0.05)
    mon.start()
    time.sleep(0.9)
    first = mon.mark()
    time.sleep(0.9)  # the allocation is freed in this segment, about 1.1 s after the start
    mon.mark()
    time.sleep(0.8)
    third = mon.mark()
    proc.wait()
    mon.stop()
    assert first > 300 * 2**20 and third < 100 * 2**20


def test_a_notebooks_peak_is_the_memory_while_it_ran():
    """The build's log line for a notebook closes its segment: a 300 MiB notebook then a small one
    read as such, and the build's closing summary (which repeats the lines) changes neither. The
    build's peak, RSS and PSS, sees the large one."""
    import os

    code = ("import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.8); "
            "del b; print('[book] 01_big: executed in 0.8 s', flush=True); time.sleep(0.8); "
            "print('[book] 02_small: executed in 0.8 s', flush=True); "
            "print('[book]   01_big    executed in   0.8 s'); print('[book]   02_small  executed in   0.8 s')")
    out = benchmark._timed_build([sys.executable, "-c", code], dict(os.environ))
    peaks = out["notebook_peak_memory_gib"]
    assert list(peaks) == ["01_big", "02_small"] and out["notebook_seconds"]["01_big"] == 0.8
    assert peaks["01_big"] > 0.29 > 0.1 > peaks["02_small"]
    assert out["peak_memory_gib"] > 0.29 and out["peak_memory_pss_gib"] > 0.29


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    with pytest.MonkeyPatch.context() as mp:  # never read the project's own results
        mp.setenv("REVERSION_RESULTS", str(tmp_path_factory.mktemp("results")))
        benchmark.run(out, book=False, world="smoke", repeats=2, log=lambda s: None, histories=2)
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


@pytest.mark.slow  # its fixture runs the whole benchmark at the smoke world (about 35 s)
def test_run_writes_every_part(smoke_results):
    res = json.loads(smoke_results.read_text())
    assert set(res["steps"]["overhead"]) == {"tracked_chosen_layer", "tracked_all_layers",
                                             "tracked_all_layers_mean_activations", "block"}
    assert res["extraction"]["same_values"] is True
    assert {r["vary"] for r in res["scaling"]} == {"width", "n_probe"}
    assert res["lora"]["checks"] >= 2 and set(res["lora"]["ratio"]) >= {"check_to_floor", "check_to_flop_floor"}
    assert "book" not in res and not list(smoke_results.parent.glob("*.tmp"))
    g = res["batched"]
    # 2 histories x (main, second witness, no witness, one dose); 2 runs of each
    assert g["n_history_configs"] == 8 and g["workload_runs"] == 16
    assert set(g["ratio"]) >= {"histories_lineages_to_floor", "workload_runs_to_floor"}
    assert g["per_history"]["seconds"] > 0 and g["per_run"]["seconds"] > 0


@pytest.mark.slow  # reads the smoke benchmark's file (the fixture above)
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
    from reversion.book.chapters import ch10_performance as ch

    assert "without CUDA" in ch.gpu_table({})
    row = {"ms": {"mean_activations": 2.0, "plain_forward": 4.0, "tracking_check": 1.5, "probe_forward": 1.0},
           "ratio": {"extraction_to_plain": 0.5, "tracking_to_floor": 1.5}, "n_prompts": 516, "n_probe": 128, "layer": 11}
    t = ch.gpu_table({"gpu": row})
    assert list(t["ratio"]) == [0.5, 1.5]


def test_the_lora_row_times_a_trainer_step_with_and_without_the_monitor():
    """``bench_lora`` on a tiny GPT-2: a real Trainer run whose steps cycle floor / plain / check, so
    the monitor checked at step 0 and every third step; every time and FLOP count is there and
    positive, the ratios are the times over the floors, and the check counts fewer FLOPs than the
    plain forward (it stops at the middle layer and skips the LM head)."""
    shape = {"n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 64, "n_positions": 64}
    r = benchmark.bench_lora(shape, n_probe=8, batch_size=4, n_train=8, lora_r=2, repeats=2, warmup=1)
    assert r["checks"] == 1 + 3 * (1 + 2) // 3 and r["layer"] == 1 and r["every"] == 3
    assert set(r["ms"]) == {"step_plain", "step_monitored", "monitor_check", "plain_forward"}
    assert all(v > 0 for v in (*r["ms"].values(), *r["flops"].values()))
    assert r["flops"]["monitor_check"] < r["flops"]["plain_forward"]
    assert 0 < r["trainable_params"] < r["params"]
    ms, fl = r["ms"], r["floor_ms"]
    assert r["ratio"]["check_to_floor"] == ms["monitor_check"] / ms["plain_forward"]
    assert r["ratio"]["check_to_flop_floor"] == ms["monitor_check"] / fl["monitor_check"]
    assert r["overhead"]["monitored_step"] == ms["step_monitored"] / ms["step_plain"] - 1
    assert ms["step_monitored"] > ms["monitor_check"]  # the check is a part of its step


def _lora_row(check: float, floor: float) -> dict:
    return {"ms": {"step_plain": 50.0, "step_monitored": 50.0 + check, "monitor_check": check, "plain_forward": floor},
            "floor_ms": {"train_step": 5.0, "monitor_check": 10.0, "plain_forward": 20.0},
            "flops": {"train_step": 1, "monitor_check": 3, "plain_forward": 9},
            "ratio": {"check_to_floor": check / floor, "check_to_flop_floor": check / 10.0,
                      "plain_forward_to_flop_floor": floor / 20.0, "step_to_flop_floor": 10.0},
            "overhead": {"monitored_step": check / 50.0, "check_to_step": check / 50.0},
            "model": {"n_layer": 4, "n_embd": 128}, "layer": 2, "probe_tokens": 3000, "train_tokens_per_step": 250}


def test_the_lora_sentence_and_verdict_follow_the_numbers():
    assert performance.lora_table({}) == "not measured: the file predates the LoRA row"
    assert performance.lora_sentence({}) == "The LoRA row was not measured in this file."
    below, within, beyond = (_lora_row(c, 100.0) for c in (40.0, 110.0, 150.0))
    assert "less than that floor" in performance.lora_sentence({"lora": below})
    assert "33% of the plain forward's matrix FLOPs" in performance.lora_sentence({"lora": below})
    assert "within the target of 1.2" in performance.lora_sentence({"lora": within})
    assert "beyond the target of 1.2" in performance.lora_sentence({"lora": beyond})
    assert "the check is the closer" in performance.lora_sentence({"lora": below})  # 4.0 against the step's 10.0
    assert "the check is the further" in performance.lora_sentence({"lora": beyond})  # 15.0 against 10.0
    assert "adds 8% to the run's time" in performance.lora_sentence({"lora": below})  # 40 / 50 / 10
    table = performance.lora_table({"lora": below})
    assert list(table["time / FLOP floor"].fillna(-1)) == [10.0, -1, 4.0, 5.0]
    base = {"steps": {"overhead": {"tracked_chosen_layer": 0.5, "block": 0.5}},
            "extraction": {"ratio_to_plain": {"mean_activations": 0.8}}}
    assert performance.measurements(base)["lora_monitor_check_to_floor"] is None
    assert performance.verdict(base, "lora_monitor_check_to_floor") == "not measured"
    assert performance.verdict({**base, "lora": within}, "lora_monitor_check_to_floor") == "met"
    assert performance.verdict({**base, "lora": beyond}, "lora_monitor_check_to_floor") == "missed"


def test_notebook_seconds_reads_every_stem_of_the_executor_log():
    from reversion.benchmark import notebook_seconds
    log = ("[book] 01_training_history: executed in 370.6 s, 336 stderr output(s) moved\n"
           "[book] 05_which_past: executing\n[book] 05_which_past: executed in 89.9 s\n"
           "[book]   06_interventions                 executed in     90.2 s\n")
    assert notebook_seconds(log) == {"01_training_history": 370.6, "05_which_past": 89.9, "06_interventions": 90.2}
