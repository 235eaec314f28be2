"""Several processes: ``torchrun --nproc_per_node 2`` on the CPU (gloo), tiny local models.

* DDP: a LoRA run with trl's SFTTrainer, the ReversionMonitor and the block term
  (``tests/distributed/sft_lora.py``, gradient accumulation 2): the monitor logs once (rank 0
  writes every row, rank 1 records nothing), every rank computes the same block term from
  its half of the probes, and ``reversion track`` on the adapter checkpoints reproduces the
  monitor's log.
* FSDP2 (``fully_shard``): the block term and its gradient through :class:`ShardedTerm`
  equal one process's (``tests/distributed/fsdp_term.py``); with the all-reduce's backward
  cut to the local share the gradient comes out halved (the check can fail); the monitor
  refuses the sharded model.
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
    assert "does not run on an FSDP-sharded model" in got["monitor_refused"]
