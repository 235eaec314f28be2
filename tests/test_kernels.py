"""The organism's numbers are the same whatever the machine chooses for its arithmetic
(``reversion.infra.kernels``): ATen's instruction set (AVX2 or AVX-512), MKL's code path and
torch's thread count.

Each case trains in a fresh process whose environment says otherwise *before* torch computes,
and asserts that the process really runs that way (``get_cpu_capability()``, the thread count);
the pin then has to keep the numbers. The positive control turns the pin off and must see the
numbers move, so the equality is not vacuous.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from reversion.infra import kernels

SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    torch.ones(4).sum()  # ATen dispatches now: from the environment as the test gave it
    torch.set_num_threads(int(os.environ["PROBE_THREADS"]))
    seen = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    from reversion.infra import kernels
    from reversion.stages.finetune import finetune_many
    from reversion.subjects.organism.history import train_history
    from reversion.subjects.organism.subject import OrganismSubject
    from reversion.subjects.organism.worlds import make_world
    w = make_world(os.environ["PROBE_WORLD"], json.loads(os.environ["PROBE_OVERRIDES"]))
    h = train_history(w.history, progress=False)
    out = {"seen": seen, "pinned_here": kernels.pinned()}
    for name, path in h.paths.items():
        out[name] = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    out["metrics"] = h.metrics
    out["losses"] = {p: l[-3:] for p, l in h.losses.items()}
    if os.environ["PROBE_FINETUNE"] == "1":
        s = OrganismSubject(w.history)
        runs = finetune_many([(s, w.finetune_config(k), None) for k in (0, 1)], progress=False)
        out["finetune"] = [[r.losses, r.probe_means.tolist()[-1], r.evals] for r in runs]
    print("PROBE" + json.dumps(out, sort_keys=True))
''')


def avx512_here() -> bool:
    """Whether this processor has the AVX-512 ATen dispatches to (foundation and the BW, DQ, VL
    subsets)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))


def probe(tmp_path, tag: str, capability: str, threads: int, world: str = "smoke", overrides=None,
          finetune: bool = True, pinned: bool = True) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PROBE_THREADS": str(threads),
           "PROBE_WORLD": world, "PROBE_OVERRIDES": json.dumps(overrides or {}),
           "PROBE_FINETUNE": "1" if finetune else "0", "REVERSION_CACHE": str(tmp_path / f"cache-{tag}"),
           "REVERSION_WORKERS": "2"}
    env.pop("MKL_CBWR", None)  # as a machine sets nothing
    env.pop(kernels.UNPIN, None)
    if not pinned:
        env[kernels.UNPIN] = "1"
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("PROBE")][-1]
    out = json.loads(line[len("PROBE"):])
    # the process really computed as asked: the pin, not an ignored variable, keeps the numbers
    assert out["seen"]["capability"] == capability.upper(), out["seen"]
    assert out["seen"]["threads"] == threads
    return out


def _numbers(out: dict) -> dict:
    return {k: v for k, v in out.items() if k not in ("seen", "pinned_here")}


needs_avx512 = pytest.mark.skipif(not avx512_here(), reason="this processor has no AVX-512: the AVX2/AVX-512 "
                                                            "cases need one that has both")


@needs_avx512
@pytest.mark.slow  # four smoke histories in subprocesses (about 40 s); CI runs it in the slow tier
def test_smoke_world_is_the_same_under_avx2_and_avx512_and_one_or_two_threads(tmp_path):
    a = probe(tmp_path, "avx2", "avx2", threads=2)
    b = probe(tmp_path, "avx512", "avx512", threads=1)
    assert a["pinned_here"] and not b["pinned_here"]  # b's training ran in a pinned worker
    assert _numbers(a) == _numbers(b)


@pytest.mark.slow  # the control of the test above: with the slow tests (CI runs both tiers)
@needs_avx512
def test_positive_control_unpinned_avx2_and_avx512_differ(tmp_path):
    a = probe(tmp_path, "u-avx2", "avx2", threads=1, finetune=False, pinned=False)
    b = probe(tmp_path, "u-avx512", "avx512", threads=1, finetune=False, pinned=False)
    assert a["theta_P"] != b["theta_P"]


@pytest.mark.slow
@needs_avx512
def test_a_default_world_history_is_the_same_under_avx2_and_avx512(tmp_path):
    a = probe(tmp_path, "avx2", "avx2", threads=2, world="default", finetune=False)
    b = probe(tmp_path, "avx512", "avx512", threads=1, world="default", finetune=False)
    assert _numbers(a) == _numbers(b)


def test_the_pin_is_in_the_environment_and_the_cache_key(monkeypatch):
    from reversion.infra.provenance import device_kind

    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["MKL_CBWR"] == kernels.mkl_mode()
    assert kernels.pinned()  # this test process imported reversion before torch computed
    pinned = device_kind()
    monkeypatch.setenv("REVERSION_MKL_CBWR", "COMPATIBLE")
    assert device_kind() != pinned and "COMPATIBLE" in device_kind()
    monkeypatch.setenv(kernels.UNPIN, "1")
    assert device_kind() == "cpu:unpinned"
    monkeypatch.delenv(kernels.UNPIN)
    monkeypatch.setenv("REVERSION_MKL_CBWR", "FAST")
    with pytest.raises(ValueError, match="REVERSION_MKL_CBWR"):
        device_kind()


def test_mkl_reports_the_pinned_branch_here_and_none_without_the_pin(tmp_path):
    import torch

    if not torch.backends.mkl.is_available():
        pytest.skip("this torch has no MKL")
    assert kernels.state()["mkl_branch"] > 1  # read through mkl_serv_cbwr_get: CNR is set
    # positive control: a process without MKL_CBWR reads CNR off (0 or 1), so the check can fail
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    env[kernels.UNPIN] = "1"
    code = "from reversion.infra import kernels; import torch; torch.ones(2) @ torch.ones(2); print(kernels.state())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'mkl_branch': 1" in out.stdout or "'mkl_branch': 0" in out.stdout, out.stdout


def test_a_bad_device_setting_is_refused(monkeypatch):
    from reversion.infra.kernels import compute_device

    monkeypatch.setenv("REVERSION_DEVICE", "gpu")
    with pytest.raises(ValueError, match="REVERSION_DEVICE"):
        compute_device()
    monkeypatch.setenv("REVERSION_DEVICE", "cpu")
    assert compute_device().type == "cpu"
