"""Request queues: one per client, batches formed round robin. Pure (no sockets, no clock):
the server offers what it decoded and takes batches; tests/test_queues.py drives it alone."""
from __future__ import annotations

import collections
from typing import Any, Deque, Dict, Hashable, List, Tuple


class RequestQueues:
    """At most ``size`` requests in all and a quarter of that per client (beyond: ``busy``).
    A batch holds requests with the same dtype, groups and deadline, up to ``max_batch``
    images, each client at most its share."""

    def __init__(self, size: int, max_batch: int):
        self.size = size
        self.per_client = max(1, size // 4)        # one client's share of the queue
        self.max_batch = max_batch
        self._q: "collections.OrderedDict[Hashable, Deque[Tuple[Any, Any]]]" = collections.OrderedDict()
        self.queued = 0

    def __bool__(self) -> bool:
        return bool(self._q)

    def __len__(self) -> int:
        return self.queued

    def offer(self, client: Hashable, envelope: Any, req: Any) -> bool:
        """Queue ``req`` (with the ``envelope`` its reply goes to); False where it is over the
        queue's size or the client's share (the caller answers ``busy``)."""
        q = self._q.get(client)
        if self.queued >= self.size or (q is not None and len(q) >= self.per_client):
            return False
        if q is None:
            q = self._q[client] = collections.deque()
        q.append((envelope, req))
        self.queued += 1
        return True

    def _take(self, client: Hashable) -> Tuple[Any, Any]:
        q = self._q[client]
        item = q.popleft()
        self.queued -= 1
        if not q:
            del self._q[client]
        return item

    def next_batch(self, batching: bool = True) -> Tuple[List[Any], List[Any]]:
        """(envelopes, requests); ``batching=False``: one request. Round robin over clients: the longest-waiting client's oldest
        request first, then one matching request from each client per pass (same dtype, groups
        and deadline, up to max_batch images and each client's share), so that a client with a
        long queue gets no more than its turn. A single request is never split."""
        # Each client takes a small share of a batch (an eighth of max_batch, split among the
        # clients waiting), so that a client with a long queue cannot make one that arrives
        # next wait for a whole max_batch of its images (bench/hostile.py measures it).
        share = max(1, self.max_batch // (8 * len(self._q)))
        first = next(iter(self._q))
        envelope, r0 = self._take(first)
        if first in self._q:
            self._q.move_to_end(first)
        batch, envelopes, n = [r0], [envelope], len(r0.tensor)
        if not batching:
            return envelopes, batch
        taken: Dict[Hashable, int] = {first: len(r0.tensor)}
        sig = r0.batch_key
        progress = True
        while progress and self._q and n < self.max_batch:
            progress = False
            for client in list(self._q):
                env, r = self._q[client][0]
                k = len(r.tensor)
                if r.batch_key == sig and n + k <= self.max_batch \
                        and taken.get(client, 0) + k <= share:
                    self._take(client)
                    batch.append(r)
                    envelopes.append(env)
                    n += k
                    taken[client] = taken.get(client, 0) + k
                    progress = True
        return envelopes, batch
