"""The examples of README.md and docs/api.md, run as they are against the real stack (only the address and the
key are this stack's): the curl calls and the Python blocks a user would paste first must work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.catalogs import ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.e2e


def examples(page: str, language: str) -> list[str]:
    return [m.group(2) for m in BLOCK.finditer((ROOT / page).read_text()) if m.group(1) == language]


def for_this_stack(source: str, gateway_url: str) -> str:
    """The example with this stack's address and the admin key in place of the placeholders."""
    source = source.replace("http://127.0.0.1:8000", gateway_url)
    return source.replace("<CITADEL_ADMIN_KEY>", ADMIN_KEY).replace('"<key>"', f'"{ADMIN_KEY}"')


# Shell examples run with curl failing on an HTTP error status (as a user would notice one).
CURL_FAILS = 'curl() { command curl -sSf "$@"; }\n'


def run(command: list[str], source: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITADEL_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run(command, input=source, text=True, capture_output=True, env=env, timeout=180)


def test_readme_curl_and_sdk_examples(gateway_url: str) -> None:
    curl = [block for block in examples("README.md", "sh") if "curl" in block]
    assert curl
    done = run(["bash", "-e"], CURL_FAILS + for_this_stack(curl[0], gateway_url))
    assert done.returncode == 0, done.stderr
    assert '"chat.completion"' in done.stdout and '"model":"phi3"' in done.stdout.replace(" ", "")
    (python,) = examples("README.md", "python")
    done = run(
        [sys.executable, "-"], for_this_stack(python, gateway_url) + "\nprint('\\n', len(vectors.data[0].embedding))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("384")


def test_vector_and_retrieval_examples(gateway_url: str) -> None:
    (shell,) = [block for block in examples("docs/api.md", "sh") if "/vectors/collections" in block]
    done = run(["bash", "-e"], CURL_FAILS + for_this_stack(shell, gateway_url))
    assert done.returncode == 0, done.stderr
    assert '"id":"leave"' in done.stdout.replace(" ", "")  # the search found the HR document
    assert '"retrieval":{"collection":"handbook"' in done.stdout.replace(" ", "")
    (python,) = [block for block in examples("docs/api.md", "python") if "handbook" in block]
    done = run([sys.executable, "-"], for_this_stack(python, gateway_url))
    assert done.returncode == 0, done.stderr
    assert "used:" in done.stdout
