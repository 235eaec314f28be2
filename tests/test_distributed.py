"""Several processes: ``torchrun --nproc_per_node 2`` on the CPU (gloo), tiny local models.

* DDP: a LoRA run with trl's SFTTrainer, the ReversionMonitor and the block term
  (``tests/distributed/sft_lora.py``, gradient accumulation 2): the monitor logs once (rank 0
  writes every row, rank 1 records nothing), every rank computes the same block term from
  its half of the probes, and ``reversion track`` on the adapter checkpoints reproduces the
  monitor's log.
* FSDP2 (``fully_shard``): the block term and its gradient through :class:`ShardedTerm`
  equal one process's (``tests/distributed/fsdp_term.py``); with the all-reduce's backward
  cut to the local share the gradient comes out halved (the check can fail).
* FSDP2, the monitor: a full fine-tuning run with ``transformers.Trainer`` on a model sharded at
  load time (``tests/distributed/fsdp_monitor.py``): every rank takes part in each check's probe
  forward (its share of each probe batch), rank 0 alone logs (one row and one ``trainer.log``
  record per check), and the values equal the same run's in one process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_trainers import _track, assert_agree, gpt2  # noqa: F401  (gpt2: the fixture)

HERE = Path(__file__).parent / "distributed"


def torchrun(script: str, *args, timeout: int = 240) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / script), *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def test_ddp_lora_sft_run_logs_once_and_track_reproduces_it(gpt2, tmp_path):  # noqa: F811
    torchrun("sft_lora.py", "--aligned", gpt2["aligned"], "--directions", gpt2["directions"], "--prompts",
             gpt2["harmful"], "--pairs", gpt2["benign"], "--out", tmp_path, "--steps", "4")
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [4, 4]
    assert [r["checks"] for r in ranks] == [3, 0]  # only the main process measures and records
    # The all-reduced term is the same on both ranks, each having forwarded half of each
    # probe batch (12 probes in batches of 8 and 4).
    assert ranks[0]["last_block_term"] == ranks[1]["last_block_term"] < 0
    assert set(ranks[0]["probe_rows"]) == set(ranks[1]["probe_rows"]) == {4, 2}
    with (tmp_path / "monitor.csv").open() as f:
        monitored = list(csv.DictReader(f))
    assert [int(r["step"]) for r in monitored] == [0, 2, 4]  # one row per check: logged once
    ckpts = sorted((tmp_path / "run").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4"]
    assert_agree(monitored, _track(gpt2, tmp_path / "track.csv", ckpts))


def test_fsdp2_block_term_and_its_gradient_match_one_process(tmp_path):
    torchrun("fsdp_term.py", "--out", tmp_path)
    got = json.loads((tmp_path / "fsdp.json").read_text())
    assert got["world"] == 2
    # Each rank forwarded its share of the batches of 4, 4 and 1 probes (rank 1's third row
    # is the zero-weight stand-in that keeps the collectives in step).
    assert got["probe_rows"] == [[2, 2, 1], [2, 2, 1]]
    for row in got["exact"]:
        assert row["term"] == pytest.approx(row["term_ref"], abs=1e-6)
        assert row["grad_scale"] > 0.5 and row["grad_err"] < 1e-5 * row["grad_scale"], row
    for row in got["cut"]:  # the planted error: 1/W of the gradient
        assert row["term"] == pytest.approx(row["term_ref"], abs=1e-6)
        assert row["grad_err"] > 0.4 * row["grad_scale"], row


def test_fsdp2_monitor_logs_once_and_matches_one_process(gpt2, tmp_path):  # noqa: F811
    from distributed.fsdp_monitor import run  # the script, run here as the one-process reference
    files = {"aligned": gpt2["aligned"], "directions": gpt2["directions"], "prompts": gpt2["harmful"],
             "pairs": gpt2["benign"]}
    one = run(**files, out=tmp_path / "one")
    torchrun("fsdp_monitor.py", *(x for k, v in files.items() for x in (f"--{k}", v)), "--out", tmp_path / "two")
    ranks = [json.loads((tmp_path / "two" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [4, 4]
    # Sharded: each block and the root; the probe forward the monitor used to run fails there.
    assert all(r["sharded"] == ["", "transformer.h.0", "transformer.h.1"] for r in ranks)
    assert all("mixed torch.Tensor and DTensor" in r["old_path_error"] for r in ranks)
    # Every rank measured at every check (mu_S, then steps 0, 2, 4), each forwarding its share of
    # the probe batches of 8 and 4; only rank 0 logged them.
    assert [r["checks"] for r in ranks] == [[0, 2, 4], [0, 2, 4]]
    assert [r["probe_rows"] for r in ranks] == [[4, 2] * 4] * 2
    assert [r["logged"] for r in ranks] == [[0, 2, 4], []]
    with (tmp_path / "two" / "monitor.csv").open() as f:
        logged = list(csv.DictReader(f))
    assert [int(r["step"]) for r in logged] == [0, 2, 4]  # one row per check: rank 1 wrote none
    # The same run in one process: the same steps (losses) and the same readings.
    assert ranks[0]["loss"] == pytest.approx(one["loss"], rel=1e-5)
    with (tmp_path / "one" / "monitor.csv").open() as f:
        reference = list(csv.DictReader(f))
    assert [int(r["step"]) for r in reference] == [0, 2, 4]
    for got, want in zip(logged, reference):
        for key in ("alignment", "projection", "drift_norm"):
            assert float(got[key]) == pytest.approx(float(want[key]), abs=1e-5), (got["step"], key)
    assert ranks[1]["alignment"] == pytest.approx([float(r["alignment"]) for r in reference], abs=1e-5)
    assert float(reference[-1]["drift_norm"]) > 1e-2 and abs(float(reference[-1]["alignment"])) > 1e-2  # it moved
    for r in ranks:  # position "mean": the same activations as one process's
        assert r["mean_rule"] == pytest.approx(one["mean_rule"], abs=1e-5)
    for r in ranks:
        last = {k: float(v) for k, v in logged[-1].items() if k in ("projection", "drift_norm")}
        assert r["planted"]["again"]["drift_norm"] == pytest.approx(last["drift_norm"], abs=1e-12)
        for key, value in last.items():  # the planted error: each rank's own share, not all-reduced
            assert abs(r["planted"]["cut"][key] - value) > 0.2 * abs(value), (r["rank"], key)
        assert "does not run on a model wrapped in FSDP1" in r["planted"]["fsdp1_refused"]
