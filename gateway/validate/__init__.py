"""`citadel validate`: the validation and certification run against a deployment URL.

options.py       Options of a run, UsageError (exit status 2)
progress.py      the progress bar (redrawn on a terminal, plain lines elsewhere)
client.py        the timed HTTP client (Exchange, Client) and the request bodies, never answered from the cache
environment.py   the host the run is on (CPUs, memory, versions) and whether the URL points at it
models_file.py   the models file: latency targets the gateway does not expose, which models are the demo model
state.py         RunState: what the steps share and the targets they have found
discovery.py     the gateway answers and takes the key; its models, targets, version and readiness
latency.py       each model's p50/p95 over N requests against its latency target
throughput.py    one chat model at a concurrency for a duration
database.py      PostgreSQL against 100 ms: the admin API over HTTP, and SELECTs directly with --database-url
vectors.py       a vector store round trip in a temporary collection, always removed
observability.py Prometheus (scraped, metrics, alert rules) and Grafana (dashboards) through their HTTP APIs
runner.py        validate(): the steps in order and the report they make
report.py        typed results, percentiles, and their Markdown and JSON reports
cli.py           `add_validate_parser(commands)`: the subcommand, its options and exit status
"""
