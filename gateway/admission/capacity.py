"""How many requests one gateway worker may have in flight to a replica at once (the gate's limit).

A replica is configured for `concurrency` requests at once (config/models.yaml `max_concurrency`, else
CITADEL_ADMISSION_CONCURRENCY): what its server runs well together. The gateway's workers share it without
talking to each other: each gets the share ceil(concurrency / workers), so together they never send more than
workers * share (= concurrency when it divides evenly). Workers do not borrow each other's unused share: two
workers that both saw the replica idle in its last figures would both take all of it at once (measured: a burst
doubled the replica's load), and under load the kernel spreads connections over the workers anyway.

The replica's own figures (vLLM's running + waiting requests, when fresher than the prober's bound) only ever
lower the share: what runs there beyond this worker's own requests and the other workers' shares is someone
else's (another gateway, a direct client), and takes its place. A replica whose KV cache is nearly full gets half
(new requests would only queue inside vLLM or preempt running ones). Never below one.
"""

from __future__ import annotations

import math

from ..upstream.balancer import KV_CACHE_FULL
from ..upstream.replica import Replica


def replica_limit(replica: Replica, *, concurrency: int, workers: int, fresh_s: float) -> int:
    """This worker's limit for one replica (at least 1; see the module docstring)."""
    share = math.ceil(concurrency / workers)
    limit = share
    if replica.load_is_fresh(max_age_s=fresh_s):
        load = replica.load
        others = share * (workers - 1)  # the other workers' shares, taken as used in full
        # What runs there that neither this worker's requests nor the other workers' shares account for.
        outside = max(0.0, load.running + load.waiting - load.ours - others)
        limit = min(share, math.floor(concurrency - others - outside))
        if load.kv_cache_usage >= KV_CACHE_FULL:
            limit //= 2
    return max(1, min(share, limit))


def gate_capacity(replicas: list[Replica], *, concurrency: int, workers: int, fresh_s: float) -> int | None:
    """The sum of the limits of the replicas in rotation; None when none is in rotation (no point waiting: the
    request goes on and gets the pool's 503 model_unavailable at once)."""
    in_rotation = [replica for replica in replicas if replica.in_rotation]
    if not in_rotation:
        return None
    return sum(
        replica_limit(replica, concurrency=concurrency, workers=workers, fresh_s=fresh_s) for replica in in_rotation
    )
