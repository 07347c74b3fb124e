"""The request queues alone (daemon/queues.py): busy, batching, shares, round robin."""
from __future__ import annotations

import numpy as np

from daemon.protocol import InferRequest
from daemon.queues import RequestQueues


def req(n=1, groups=None, dtype="uint8", deadline=None, tag=None, stop_at=None, progressive=False):
    return InferRequest(tag, dtype, np.zeros((n, 1)), groups, deadline, stop_at, progressive)


def test_busy_past_the_queue_and_past_a_clients_share():
    q = RequestQueues(size=8, max_batch=64)
    assert q.per_client == 2
    assert q.offer("a", "ea", req()) and q.offer("a", "ea", req())
    assert not q.offer("a", "ea", req())                 # a's share (a quarter) is full
    for c in "bcd":
        assert q.offer(c, c, req()) and q.offer(c, c, req())
    assert len(q) == 8 and not q.offer("e", "e", req())  # the whole queue is full
    q.next_batch()
    assert q.offer("e", "e", req())                      # room again


def test_a_batch_joins_only_matching_requests_up_to_max_batch():
    q = RequestQueues(size=64, max_batch=8)
    q.offer("a", "a1", req(2))
    q.offer("b", "b1", req(2, groups=3))                 # another level: not in a's batch
    q.offer("c", "c1", req(2, dtype="float32"))          # another dtype: neither
    q.offer("e", "e1", req(1, stop_at=0.9))               # anytime: only with the same stop_at
    q.offer("f", "f1", req(1, progressive=True))          # and the same progressive
    q.offer("g", "g1", req(1, stop_at=0.9))
    q.offer("d", "d1", req(1))
    envs, batch = q.next_batch()
    assert envs == ["a1", "d1"] and sum(len(r.tensor) for r in batch) == 3
    assert q.next_batch()[0] == ["b1"] and q.next_batch()[0] == ["c1"]
    assert q.next_batch()[0] == ["e1", "g1"] and q.next_batch()[0] == ["f1"] and not q


def test_round_robin_and_a_clients_share_of_a_batch():
    """A client with a long queue gets its turn, not the whole batch: another client's
    request arriving behind 20 of its own goes in the first batch."""
    q = RequestQueues(size=256, max_batch=16)
    for i in range(20):
        q.offer("flood", ("flood", i), req())
    q.offer("late", ("late", 0), req())
    envs, _ = q.next_batch()
    assert ("late", 0) in envs and envs[0] == ("flood", 0)
    assert sum(1 for e in envs if e[0] == "flood") <= max(1, 16 // (8 * 2))
    order = []
    while q:
        order += q.next_batch()[0]
    assert order == [("flood", i) for i in range(1, 20)]     # each client's requests in order


def test_without_batching_one_request_per_batch():
    q = RequestQueues(size=16, max_batch=16)
    for c in "abc":
        q.offer(c, c, req())
    assert [q.next_batch(batching=False)[0] for _ in range(3)] == [["a"], ["b"], ["c"]]
