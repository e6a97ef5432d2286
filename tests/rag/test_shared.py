"""The one shared, locked model cache: one load per key across threads, failures not cached."""

import threading
import time

import pytest

from rag.shared import cached_keys, forget, shared_model


def test_concurrent_requests_for_one_key_load_it_once():
    calls = []

    def load():
        calls.append(1)
        time.sleep(0.05)  # long enough for every thread to be waiting on the same key
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(shared_model(("test-once",), load))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(r is results[0] for r in results)
    assert forget(("test-once",)) and ("test-once",) not in cached_keys()


def test_a_failed_load_is_not_cached_and_the_next_call_tries_again():
    def broken():
        raise OSError("disk error")

    with pytest.raises(OSError):
        shared_model(("test-broken",), broken)
    assert shared_model(("test-broken",), lambda: "ok") == "ok"
    forget(("test-broken",))
