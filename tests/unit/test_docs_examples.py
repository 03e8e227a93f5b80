"""The code examples in README.md and docs/ stay true to the code: every shell and Python block is checked for
what can be checked without a running stack (tests/e2e/test_docs_examples.py runs some against one).

Shell blocks: `bash -n` syntax; `make <target>` names a Makefile target; `citadel ...` and `python -m gateway
...` command lines parse with the real CLI parser; `python -m <module>` names a module that exists; each
`curl` names a route of the app with the right method, and its JSON body (`-d`) is JSON that the route's
request model accepts. Python blocks compile, and their imports exist.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from starlette.routing import Match

from gateway import cli
from gateway.app import create_app
from gateway.protocol.admin import KeyCreate
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.common import parse_request
from gateway.protocol.completions import CompletionRequest
from gateway.protocol.embeddings import EmbeddingRequest
from gateway.protocol.vectors import CollectionCreate, SearchRequest, UpsertRequest
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "systemd" / "README.md"]
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)
# Request bodies the docs show, checked against the model the route parses them with.
BODY_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/admin/keys": KeyCreate,
    "/v1/vectors/collections": CollectionCreate,
    "/v1/vectors/collections/{name}/documents": UpsertRequest,
    "/v1/vectors/collections/{name}/search": SearchRequest,
}


def filled(text: str) -> str:
    """Placeholders (`<id>`, `<password>`, `<this host's address>`) replaced by sample values of their kind."""
    text = text.replace("<id>", "5f0c1c52-4b7e-4c59-9f5e-2f4d8a7f3b10")
    text = re.sub(r"\$\([^()]*\)", "sample", text)  # a command substitution: one word on the command line
    return re.sub(r"<[a-z][^<>\n]*>", "sample", text)


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for match in BLOCK.finditer(page.read_text()):
            if match.group(1) == language and language == "sh":
                found.append(
                    (
                        f"{page.relative_to(ROOT)}:{page.read_text()[: match.start()].count(chr(10)) + 1}",
                        filled(match.group(2)),
                    )
                )
            elif match.group(1) == language:
                found.append(
                    (f"{page.relative_to(ROOT)}:{page.read_text()[: match.start()].count(chr(10)) + 1}", match.group(2))
                )
    return found


def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split on ; && |."""
    joined = script.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # a quote that spans lines (a JSON body): checked by curl_calls below
            continue
        current: list[str] = []
        for word in words:
            if word in {";", "&&", "||", "|"}:
                out.append(current)
                current = []
            else:
                current.append(word)
        out.append(current)
    return [c for c in out if c]


def program(words: list[str]) -> list[str]:
    """The command without leading VAR=value assignments and sudo."""
    while words and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]) or words[0] == "sudo"):
        words = words[1:]
    return words


SHELL = blocks("sh")
PYTHON = blocks("python")


def test_the_docs_have_examples() -> None:
    assert len(SHELL) >= 10 and len(PYTHON) >= 3


@pytest.mark.parametrize(("where", "script"), SHELL, ids=[w for w, _ in SHELL])
def test_shell_examples_are_valid_bash(where: str, script: str) -> None:
    result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, f"{where}: {result.stderr}"


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


class _Parsed(Exception):
    pass


def parses_with_the_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> bool:
    """True when `citadel argv` parses (the command is not run)."""
    original = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    try:
        cli.main(argv)
    except _Parsed:
        return True
    except SystemExit:
        return False
    finally:
        monkeypatch.undo()
    return False


@pytest.mark.parametrize(("where", "script"), SHELL, ids=[w for w, _ in SHELL])
def test_commands_in_shell_examples_exist(where: str, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    targets = make_targets()
    for words in map(program, commands(script)):
        if not words:
            continue
        name = Path(words[0]).name
        if name == "make":
            for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
                assert target in targets, f"{where}: make {target}: no such target"
        elif name == "citadel":
            assert parses_with_the_cli(words[1:], monkeypatch), f"{where}: {' '.join(words)}"
        elif name.startswith("python") and words[1:2] == ["-m"]:
            module = words[2]
            if module == "gateway":
                assert parses_with_the_cli(words[3:], monkeypatch), f"{where}: {' '.join(words)}"
            elif module.split(".")[0] in {"gateway", "services", "bench", "tests"}:
                assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"


def curl_calls(script: str) -> list[tuple[str, str, str | None]]:
    """(method, path, body) of each curl in a block; $B-style prefixes are expanded from the block itself."""
    variables = dict(re.findall(r"\b([A-Z])=(\S+)", script))
    calls = []
    for match in re.finditer(r"curl\b(.*?)(?=\ncurl\b|\Z)", script.replace("\\\n", " "), re.S):
        text = match.group(1)
        for name, value in variables.items():
            text = text.replace(f"${name}", value)
        url = re.search(r"(?:https?://)?(?:127\.0\.0\.1|localhost)(?::\d+)?(/[^\s'\"]*)", text)
        if url is None:
            continue
        body = re.search(r"-d\s+'(.*?)'", text, re.S)
        method = re.search(r"-X\s+([A-Z]+)", text)
        calls.append(
            (method.group(1) if method else ("POST" if body else "GET"), url.group(1), body.group(1) if body else None)
        )
    return calls


CURLS = [(where, *call) for where, script in SHELL for call in curl_calls(script)]


def test_the_docs_show_curl_calls() -> None:
    assert len(CURLS) >= 6


@pytest.mark.parametrize(("where", "method", "path", "body"), CURLS, ids=[f"{w} {m} {p}" for w, m, p, _ in CURLS])
def test_curl_examples_name_real_routes_with_valid_bodies(
    where: str, method: str, path: str, body: str | None, tmp_path: Path
) -> None:
    (tmp_path / "models.yaml").write_text("models: {}\n")
    app = create_app(make_settings(tmp_path / "models.yaml"))
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    matched = [route for route in app.routes if route.matches(scope)[0] is Match.FULL]
    assert matched, f"{where}: {method} {path} is not a route of the gateway"
    template = getattr(matched[0], "path", path)
    if body is not None and template in BODY_MODELS:
        parse_request(BODY_MODELS[template], body.encode())  # raises InvalidRequest (a 400) when it is wrong


@pytest.mark.parametrize(("where", "source"), PYTHON, ids=[w for w, _ in PYTHON])
def test_python_examples_compile_and_import_what_exists(where: str, source: str) -> None:
    tree = ast.parse(source, filename=where)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert importlib.util.find_spec(name.split(".")[0]) is not None, f"{where}: no module {name}"
