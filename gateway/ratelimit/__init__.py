"""Rate limits per API key: requests/min per key, requests/min per key+model, tokens/min per key.

One check is ONE Redis round trip: an EVALSHA of `scripts.CHECK_LUA`, which reads, decides and counts all three
counters atomically. Nothing is counted unless every counter has room (all or nothing), so a refused
request eats neither requests nor tokens. All workers and replicas share the same counters in Redis; no
worker keeps a local copy.

Why not `limits.aio` strategies: each `hit()` is one limit, one key, one round trip, and three separate
hits cannot be made all-or-nothing (a token hit that fails after the request hit already counted would
leave the request counted). `limits` is used for what it does well: parsing limit strings
(`limits.parse("60/minute")`) and naming keys (`RateLimitItem.key_for`).

Algorithm: the sliding window counter (the two-bucket approximation `limits` also uses, and Cloudflare
describes): windows are aligned to the Redis server clock (`TIME`, so worker clocks never matter); the
count is `ceil(previous * time left in the window / window) + current`. Rounding up keeps it strict: right
after a window edge the previous window still counts in full, so a burst across an edge gets no extra
request (K concurrent requests against a limit L let exactly L through). Each counter is one Redis hash
(`w` window index, `c` current count, `p` previous count) that expires at the end of the next window;
the script writes the whole hash only when a window starts and otherwise does one HINCRBY per counter
(about 20 us of Redis time for all three counters). Keys carry a
hash tag of the key id (`{<uuid>}`), so one key's counters sit in one Redis Cluster slot. A key's counters
reset when its limit changes (the amount is part of the key name, as in `limits`). The script calls
`redis.replicate_commands()` first (needed for TIME before writes on Redis < 7; a no-op on 7+).

Headers (OpenAI's): `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, reset as "1s", "6m0s",
"1m30.5s". The requests headers report whichever of the key and key+model limits has less room left (or
the one that refused). "reset" is the time until the counter is back to its full limit if no more requests
come, as OpenAI defines it; with a sliding window that can be up to two windows.

Tokens: `check()` charges the request's estimate (`estimate_tokens`) up front; `settle()` adds
`actual - charged` to the same window's bucket afterwards (may be negative; never below zero). The gateway
does not settle request by request: `settle.SettleQueue` sums the corrections of ~20 ms per counter and window
and writes them in one EVALSHA per API key (`apply()`), so an uncached request makes one Redis round trip.

Failures: Redis errors (ConnectionError, TimeoutError, ...) propagate from `check()` and `settle()`
unchanged; the caller applies the fail-open/closed policy (gateway/redisconn.py).

Limit resolution, per limit: the key record (Principal.requests_per_minute / tokens_per_minute), then the
role default (a role mapped to None is unlimited), then the config default. The per-model limit comes from
the per-model map, then its default; it applies to every role.
"""

from ..errors import RateLimited  # the 429 lives in the one error family; exported here beside Decision.error()
from .config import LimitConfig, LimitPlan, estimate_tokens, resolve_limits
from .decision import Decision, UsageCounters, format_reset, rate_limit_headers
from .limiter import RateLimiter

__all__ = [
    "Decision",
    "LimitConfig",
    "LimitPlan",
    "RateLimited",
    "RateLimiter",
    "UsageCounters",
    "estimate_tokens",
    "format_reset",
    "rate_limit_headers",
    "resolve_limits",
]
