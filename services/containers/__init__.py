"""Container tooling that runs on the host before any image exists: a private Docker engine for the test run,
Compose v2, the wheelhouse, stand-in images built from Debian's packages, and the plan that picks each image.

Standard library only: `make up` and `make wheelhouse` run it with the system Python, before any venv exists.
Entry point: `python -m services.containers --help`.
"""
