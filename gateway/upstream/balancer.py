"""Which replica takes the next request: the routing policy, in one place.

Among the replicas in rotation (health probe passing, breaker not open), the one with the lowest load score
wins; ties are broken at random so equal replicas share the work. The score is:

    requests this worker has in flight to it
  + the replica's own waiting queue (vllm:num_requests_waiting), when its last /metrics reading is fresh
  + KV_CACHE_PENALTY when its KV cache is at least KV_CACHE_FULL used (vllm:kv_cache_usage_perc), when fresh

The in-flight count reacts at once to this worker's traffic; vLLM's figures bring in the traffic of other
workers and other gateways, so a saturated replica gets less work even when this worker sent it little.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from .replica import Replica

KV_CACHE_FULL = 0.9
KV_CACHE_PENALTY = 8.0


def load_score(replica: Replica, *, fresh_s: float) -> float:
    """Lower is better; see the module docstring."""
    score = float(replica.outstanding)
    if replica.load_is_fresh(max_age_s=fresh_s):
        score += replica.load.waiting
        if replica.load.kv_cache_usage >= KV_CACHE_FULL:
            score += KV_CACHE_PENALTY
    return score


def choose(
    replicas: Sequence[Replica], *, tried: Collection[Replica], fresh_s: float, rng: random.Random | None = None
) -> Replica | None:
    """The replica for the next attempt, preferring one not tried yet; None when none is in rotation."""
    in_rotation = [replica for replica in replicas if replica.in_rotation]
    candidates = [replica for replica in in_rotation if replica not in tried] or in_rotation
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    scores = [load_score(replica, fresh_s=fresh_s) for replica in candidates]
    best = min(scores)
    ties = [replica for replica, score in zip(candidates, scores, strict=True) if score == best]
    return (rng or random).choice(ties)
