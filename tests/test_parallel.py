"""Runs built in worker processes (``reversion.infra.parallel``, through the fine-tuning stage's
``finetune_many``) are the runs built here, number for number.

The organism's runs train in groups (``tests/test_grouped.py`` checks groups built in workers);
these tests use it as an ungrouped subject -- a real model's path, one run per worker."""

from __future__ import annotations

import pytest
import torch

from reversion.infra import parallel
from reversion.stages import finetune as finetune_mod
from reversion.stages.finetune import finetune_many
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import make_world

from pid_calls import boom, note_pid


def _world():
    return make_world("smoke", {"finetune": {"steps": 3, "eval_steps": [0, 3]}})


class UngroupedOrganism(OrganismSubject):
    """The organism, trained one run at a time (as a real model is)."""

    grouped = False


def _runs(monkeypatch, tmp, workers: str, subject_cls=UngroupedOrganism):
    monkeypatch.setenv("REVERSION_CACHE", str(tmp))
    monkeypatch.setenv("REVERSION_WORKERS", workers)
    w = _world()
    s = subject_cls(w.history)
    jobs = [(s, w.finetune_config(k), None) for k in (0, 1, 0)]  # a duplicate: built once
    return finetune_many(jobs, progress=False)


def test_parallel_runs_equal_sequential_runs(tmp_path, monkeypatch):
    seq = _runs(monkeypatch, tmp_path / "seq", "1")
    par = _runs(monkeypatch, tmp_path / "par", "2")
    for a, b in zip(seq, par):
        assert torch.equal(a.probe_means, b.probe_means)
        assert a.losses == b.losses and a.evals == b.evals
    # Positive control: the seeds differ, so equality above is not vacuous.
    assert not torch.equal(par[0].probe_means, par[1].probe_means)
    assert par[0].path == par[2].path
    assert len(list((tmp_path / "par" / "finetune").glob("[!.]*"))) == 2


class SerialOrganism(UngroupedOrganism):
    """The organism, as a subject whose runs must not build in worker processes (a real model)."""

    parallel = False


def test_a_subject_that_forbids_workers_is_built_here_with_the_same_numbers(tmp_path, monkeypatch):
    seen = []
    real = parallel.run_all

    def spy(calls, progress=True, desc="runs", workers=None, **kw):
        calls = list(calls)
        if desc in ("runs", "fine-tuning runs"):  # not the history's phases, not theta_S's evaluation
            seen.append((len(calls), workers))
        return real(calls, progress, desc, workers, **kw)

    monkeypatch.setattr(finetune_mod.parallel, "run_all", spy)
    par = _runs(monkeypatch, tmp_path / "par", "2")
    assert seen == [(2, None)]                                  # the two missing runs, in workers
    seen.clear()
    ser = _runs(monkeypatch, tmp_path / "ser", "2", SerialOrganism)
    assert seen == [(0, 1)]                                     # nothing sent to a worker
    for a, b in zip(par, ser):
        assert torch.equal(a.probe_means, b.probe_means)
        assert a.losses == b.losses and a.evals == b.evals
    assert ser[0].path == ser[2].path != ser[1].path


def _boom(x):
    raise RuntimeError(f"boom {x}")


def test_a_failing_call_raises_in_the_caller():
    with pytest.raises(RuntimeError, match="boom 1"):
        parallel.run_all([(_boom, (1,)), (_boom, (1,))], progress=False, workers=2)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_worker_count_is_refused(monkeypatch, value):
    monkeypatch.setenv("REVERSION_WORKERS", value)
    with pytest.raises(ValueError, match="REVERSION_WORKERS must be an int >= 1"):
        parallel.n_workers()


def test_a_failure_does_not_wait_for_the_runs_in_flight():
    import time

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="boom 2"):
        parallel.run_all([(time.sleep, (60,)), (_boom, (2,))], progress=False, workers=2)
    assert time.perf_counter() - t0 < 40  # the 60 s sleep was terminated, not awaited


def _pids(folder) -> set[str]:
    return {p.read_text() for p in folder.iterdir()}


def _calls(folder, n: int = 4) -> list:
    folder.mkdir()
    return [(note_pid, (str(folder), i)) for i in range(n)]


def test_a_session_keeps_its_workers_across_calls_and_closes_them(tmp_path, monkeypatch):
    """Three calls in one session run in at most two worker processes (each started once); a call
    made under another environment gets new workers (they carry the environment they started
    with); the session's end closes them. Control: without a session, three calls start at least
    three."""
    with parallel.session():
        for x in "abc":
            parallel.run_all(_calls(tmp_path / x), progress=False, workers=2)
        pool = parallel._session["pool"]
        monkeypatch.setenv("REVERSION_TEST_MARK", "1")
        parallel.run_all(_calls(tmp_path / "d"), progress=False, workers=2)
        assert parallel._session["pool"] is not pool
    assert parallel._session is None and pool._shutdown_thread
    kept = _pids(tmp_path / "a") | _pids(tmp_path / "b") | _pids(tmp_path / "c")
    assert len(kept) <= 2 and not _pids(tmp_path / "d") & kept
    for x in "efg":
        parallel.run_all(_calls(tmp_path / x), progress=False, workers=2)
    assert len(_pids(tmp_path / "e") | _pids(tmp_path / "f") | _pids(tmp_path / "g")) >= 3


def test_a_failure_in_a_session_drops_its_workers_and_the_next_call_still_runs(tmp_path):
    with parallel.session():
        with pytest.raises(RuntimeError, match="boom 3"):
            parallel.run_all([(boom, (3,)), (boom, (3,))], progress=False, workers=2)
        assert "pool" not in parallel._session
        parallel.run_all(_calls(tmp_path / "a", 2), progress=False, workers=2)
    assert len(list((tmp_path / "a").iterdir())) == 2
