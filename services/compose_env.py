"""Fill the secrets Docker Compose requires in `.env` (`make up`, `make migrate COMPOSE=1`).

Makes `.env` from `.env.example` when missing, then gives each required secret that is missing or empty a
random value. A value that is set is never changed. Standard library only: it runs with the system Python,
before any virtual environment exists.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

SECRETS = {
    "CITADEL_ADMIN_KEY": lambda: "ck-admin-" + secrets.token_urlsafe(24),
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),
    "GRAFANA_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
}


def fill(text: str) -> tuple[str, list[str]]:
    """`text` with every missing or empty secret given a value; and the names of those it filled."""
    filled = []
    for name, make in SECRETS.items():
        if re.search(rf"(?m)^{name}=\S", text):
            continue
        filled.append(name)
        line = f"{name}={make()}"
        if re.search(rf"(?m)^{name}=\s*$", text):
            text = re.sub(rf"(?m)^{name}=\s*$", line, text, count=1)
        else:
            text += ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    return text, filled


def main(env: Path = Path(".env"), example: Path = Path(".env.example")) -> None:
    text, filled = fill(env.read_text() if env.exists() else example.read_text())
    if filled or not env.exists():
        old_umask = os.umask(0o077)  # .env holds secrets: readable by its owner only
        try:
            env.write_text(text)
        finally:
            os.umask(old_umask)
    if filled:
        print(f"== .env: new random {', '.join(filled)} (keep .env private)")


if __name__ == "__main__":
    main()
