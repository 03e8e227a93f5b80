"""`citadel doctor`: checks a host (or a running gateway, with --url) and says what is wrong and how to fix it.

findings.py  Finding {check, status ok|warn|fail, detail, fix, latency_ms}; checks bounded in time, no
             exception escapes (one becomes a `fail` naming it)
config.py    settings and the models file; what the configuration asks of this host (local model servers,
             their ports, CPUs, memory, weights)
services.py  PostgreSQL (version, clock skew, migrations at head), Redis, Qdrant, every model replica
ports.py     ports: free, held by the gateway or a model server, or taken (by which process, from /proc)
resources.py CPUs and memory (affinity, cgroup limits) against what the models file asks of this host
disk.py      free space on each filesystem holding the cache, spool, weights
weights.py   each local model server's weights present and readable, or where vLLM downloads them from
spool.py     the audit spool's backlog against its limit
versions.py  Python, the gateway, vLLM, and each model server's version
remote.py    --url: /health, /health/ready (each dependency and replica), /v1/models with a key
runner.py    runs them all, concurrently where they wait, in a fixed order
report.py    the table (colour on a TTY only) and --json; exit status 0 ok (warnings allowed), 1 a failure
cli.py       `add_doctor_parser(commands)`, registered by gateway/cli.py
"""

from .findings import Finding, Status

__all__ = ["Finding", "Status"]
