"""Load (the issue's "Load"): many sessions share one cached Predictor.

The dashboard keeps one Predictor per run (a cached resource) and every session's thread calls
it. Answers must not depend on who else is asking at the same time. The throughput is printed,
not asserted (it is the machine's, not the code's): run with `pytest -s` to see it.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from speedsign.predict import Predictor

THREADS, PER_THREAD = 20, 50


@pytest.fixture(scope="module")
def upload_bytes(synth_dir: Path) -> list[bytes]:
    """50 different images as uploads (bytes), from every class."""
    files = sorted(synth_dir.rglob("*.png"))
    return [path.read_bytes() for path in files[:: max(1, len(files) // PER_THREAD)][:PER_THREAD]]


def test_twenty_threads_share_one_predictor_and_get_single_threaded_answers(
        runs_with_results: dict[str, Path], upload_bytes: list[bytes]) -> None:
    assert len(upload_bytes) == PER_THREAD
    predictor = Predictor(runs_with_results["finetune"])
    predictor.predict(upload_bytes[0])  # the first forward sets up kernels: not part of the rate
    # The reference answers, one at a time from one worker thread (as a lone session asks).
    with ThreadPoolExecutor(max_workers=1) as alone:
        started = time.perf_counter()
        expected = list(alone.map(lambda data: predictor.predict(data, top=3), upload_bytes))
        single_rate = PER_THREAD / (time.perf_counter() - started)

    # The first question of every session waits in `predict` until all twenty are there, so the
    # sessions really do ask at the same moment (not one after another as threads start).
    together = threading.Barrier(THREADS, timeout=120)
    in_flight, peak, count = [0], [0], threading.Lock()

    def ask(i: int, *, first: bool) -> tuple[int, tuple[str, ...], tuple[float, ...]]:
        with count:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            if first:
                together.wait()
            answer = predictor.predict(upload_bytes[i], top=3)
        finally:
            with count:
                in_flight[0] -= 1
        return i, answer.labels, answer.probs

    def session(seed: int) -> list[tuple[int, tuple[str, ...], tuple[float, ...]]]:
        order = list(range(PER_THREAD))
        random.Random(seed).shuffle(order)  # sessions ask for different images at the same moment
        return [ask(i, first=n == 0) for n, i in enumerate(order)]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(session, range(THREADS)))  # re-raises any thread's exception
    seconds = time.perf_counter() - started

    answers = [answer for result in results for answer in result]
    assert len(answers) == THREADS * PER_THREAD
    assert peak[0] == THREADS  # all twenty sessions were inside the shared predictor at once
    for i, labels, probs in answers:
        assert labels == expected[i].labels, i
        assert np.allclose(probs, expected[i].probs, rtol=0, atol=1e-6), i
    rate = THREADS * PER_THREAD / seconds
    print(f"\nPredictor throughput: {rate:.0f} images/s with {THREADS} threads "
          f"({THREADS * PER_THREAD} images in {seconds:.2f} s); {single_rate:.0f} images/s single-threaded")
