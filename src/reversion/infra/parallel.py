"""Independent cached stages on several CPU cores.

A fine-tuning run of the organism is single-threaded (see :mod:`reversion.infra.runtime`),
so on a 2-core machine one run at a time leaves a core idle. :func:`run_all` builds
independent cache entries in worker processes; the caller then reads them back from
the cache, in its own order. Each run seeds itself and uses one thread, so the
numbers do not depend on which worker built an entry or in what order
(``tests/test_parallel.py`` checks that).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

from tqdm import tqdm

from reversion.infra import kernels

Call = tuple[Callable[..., Any], tuple]
"""A top-level (picklable) function and its arguments."""


def n_workers() -> int:
    """``REVERSION_WORKERS``, else one per available core (at most 4), else 1 on CUDA.

    Each worker holds its own torch (about 0.3 GiB), hence the cap; a GPU is shared
    badly by processes, hence one there.
    """
    env = os.environ.get("REVERSION_WORKERS")
    if env is not None:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"REVERSION_WORKERS must be an int >= 1, got {env!r}") from None
        if n < 1:
            raise ValueError(f"REVERSION_WORKERS must be an int >= 1, got {env!r}")
        return n
    if kernels.compute_device().type == "cuda":
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def chunks(runs: list, workers: int, most: int, least: int = 1) -> list[list]:
    """``runs`` in at least ``least`` and as few as possible chunks of at most ``most``, their sizes
    differing by at most one, and -- when there is more than one -- as many as a multiple of
    ``workers``, so the workers finish together (16 + 16 + 16 + 2 runs on two workers would leave
    one idle for a whole group; 13 + 13 + 12 + 12 does not), largest first."""
    if not runs:
        return []
    k = min(len(runs), max(-(-len(runs) // most), least))
    if k > 1 and k % workers:
        k = min(len(runs), k + workers - k % workers)
    size, extra = divmod(len(runs), k)
    out, i = [], 0
    for j in range(k):
        n = size + (j < extra)
        out.append(runs[i: i + n])
        i += n
    return out


WORKER_ENV = "REVERSION_IN_WORKER"


def _mark_worker() -> None:
    os.environ[WORKER_ENV] = "1"


@contextlib.contextmanager
def _main_not_rerun():
    """Spawned workers normally re-run the caller's main script, so a script without an
    ``if __name__ == "__main__"`` guard would start the whole experiment again in each
    worker. The calls are functions of this package, so the workers need nothing from
    ``__main__``: hide it from multiprocessing while they start."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


_session: dict | None = None
"""The open :func:`session`'s pool and the key it was started with (``None``: no session)."""


@contextlib.contextmanager
def session():
    """Keep :func:`run_all`'s worker processes for every call inside the block (a stage's phases,
    its evaluations and runs): a worker's start is about 5 s of imports, paid once instead of per
    call. Workers carry the environment they started with, so a call made under another
    environment (``REVERSION_CACHE``, ``REVERSION_WORKERS``, ...) gets new ones. Nested sessions
    are the outer one; leaving the outermost closes its workers."""
    global _session
    if _session is not None:
        yield
        return
    _session = {}
    try:
        yield
    finally:
        pool, _session = _session.get("pool"), None
        if pool is not None:
            pool.shutdown(wait=True)


def _pool(workers: int, n_calls: int) -> ProcessPoolExecutor:
    """A pool for ``workers``: the session's (started now if it has none, or none for this
    environment), else one for this call alone."""
    # spawn, not fork: the parent may be a Jupyter kernel (sockets, threads).
    def start(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_mark_worker)

    if _session is None:
        return start(min(workers, n_calls))
    key = (workers, sorted(os.environ.items()))
    if _session.get("key") != key:
        old = _session.pop("pool", None)
        if old is not None:
            old.shutdown(wait=True)
        # processes start as calls need them, up to ``workers``
        _session.update(pool=start(workers), key=key)
    return _session["pool"]


def run_all(calls: Sequence[Call], progress: bool = True, desc: str = "runs",
            workers: int | None = None, pinned: bool = False) -> None:
    """Run ``calls`` for their side effects (cache entries), in parallel when it helps.

    Calls must not depend on each other, and their functions must be importable (defined
    in a module, not in ``__main__``). With one worker (or one call) they run here, in order,
    unless ``pinned`` (the organism's arithmetic) and this process's arithmetic is not the
    pinned one (:func:`reversion.infra.kernels.pinned`): then in a worker, which is. The
    first failure cancels what has not started and is raised. Inside a :func:`session` the
    workers outlive the call.
    """
    calls = list(calls)
    workers = n_workers() if workers is None else workers
    here_ok = not pinned or kernels.pinned() or os.environ.get(WORKER_ENV)
    if not calls:
        return
    if (workers <= 1 or len(calls) <= 1) and here_ok:
        for fn, args in calls:
            fn(*args)
        return
    if not here_ok:
        kernels.warn_unpinned()
    ex = _pool(max(1, workers), len(calls))
    finished = False
    try:
        with _main_not_rerun():  # workers start during submit
            futures = [ex.submit(fn, *args) for fn, args in calls]
        with tqdm(total=len(futures), desc=desc, disable=not progress, leave=False) as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                bar.update(len(done))
                for f in done:
                    f.result()  # raises the worker's exception
        finished = True
    finally:
        if finished:
            if _session is None or _session.get("pool") is not ex:
                ex.shutdown(wait=True)
        else:
            # A failure or an interrupt: do not wait minutes for the runs in flight. What they
            # leave is a .tmp-* folder, which never reads as an entry (see reversion.infra.cache).
            if _session is not None and _session.get("pool") is ex:
                _session.clear()
            procs = list(ex._processes.values()) if getattr(ex, "_processes", None) else []
            ex.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
