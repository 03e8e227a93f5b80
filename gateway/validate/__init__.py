"""`citadel validate`: the validation and certification run against a deployment URL.

runner.py   the measurements (aiohttp against --url with --key; PostgreSQL directly with --database-url;
            Prometheus and Grafana through their HTTP APIs) and the progress bar
report.py   typed results, percentiles, and their Markdown and JSON reports
cli.py      `add_validate_parser(commands)`: the subcommand, its options and exit status
"""
