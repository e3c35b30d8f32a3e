"""The native thread pool under real use: concurrent Python callers (the GIL is released
around kernels), a forked child process, changing the thread count."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest

import mmfast
from mmfast import ops


def _work(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 16, 24, 24)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    y = ops.conv2d(x, w, padding=1)
    return y, ops.softmax(y.reshape(32, -1))


def test_concurrent_callers_get_their_own_results():
    expected = [_work(s) for s in range(8)]
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            for _ in range(5):
                results[seed] = _work(seed)
                for a, b in zip(results[seed], expected[seed], strict=True):
                    np.testing.assert_array_equal(a, b)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    assert not errors, errors[0]


def _child(q) -> None:
    y, p = _work(3)
    q.put((float(y.sum()), float(p.sum())))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_pool_works_in_a_forked_child():
    _work(3)  # the parent's pool is running
    want = _work(3)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q,))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 0, "child failed or hung"
    got = q.get(timeout=5)
    assert got == pytest.approx((float(want[0].sum()), float(want[1].sum())), rel=1e-6)


def test_results_do_not_depend_on_the_thread_count():
    n0 = mmfast.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 5):
            mmfast.set_num_threads(n)
            assert mmfast.get_num_threads() == n
            outs.append(_work(11))
    finally:
        mmfast.set_num_threads(n0)
    for o in outs[1:]:
        for a, b in zip(o, outs[0], strict=True):
            np.testing.assert_array_equal(a, b)
