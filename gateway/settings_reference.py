"""The settings reference (docs/settings.md), generated from the Settings class and its comments.

`python -m gateway.settings_reference > docs/settings.md` writes it; tests/unit/test_settings_reference.py
fails when the file and the class disagree, so the reference cannot drift from the code.
Groups follow the class: a comment block and the fields under it, up to the next blank line.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from pydantic_core import PydanticUndefined

from .settings import REPO_ROOT, Settings

HEADER = """# Settings reference

Generated from `gateway/settings.py` by `python -m gateway.settings_reference > docs/settings.md`; a test
checks it matches the code. Every setting is an environment variable (or a line in `.env`; the
environment wins). Lists and maps are JSON. `.env.example` has a working set; the models themselves are
configured in `config/models.yaml` ([configuration](configuration.md)).
"""


@dataclass
class Group:
    """A comment block and the settings under it."""

    text: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (variable, type, default)


def variable(name: str) -> str:
    """The environment variable a field is read from (its first alias, else the CITADEL_ prefix)."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def shown_default(name: str) -> str:
    """The default as a user would write it in `.env`."""
    value: Any = Settings.model_fields[name].default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if value == "":
        return "(empty)"
    if isinstance(value, Path):
        return str(value.relative_to(REPO_ROOT)) if value.is_relative_to(REPO_ROOT) else str(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def groups() -> list[Group]:
    """The class body's comment blocks and fields, in order."""
    source = inspect.getsource(Settings)
    lines = source.splitlines()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    fields = {node.lineno: node for node in body.body if isinstance(node, ast.AnnAssign)}
    result: list[Group] = []
    current: Group | None = None
    comment: list[str] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        node = fields.get(number)
        if node is not None and isinstance(node.target, ast.Name) and node.target.id in Settings.model_fields:
            if comment or current is None:
                current = Group(text=" ".join(comment))
                result.append(current)
                comment = []
            name = node.target.id
            current.rows.append((variable(name), ast.unparse(node.annotation), shown_default(name)))
        elif not stripped:
            current, comment = None, []
    return result


def _cell(text: str) -> str:
    """A table cell's text: a pipe would end the cell."""
    return text.replace("|", "\\|")


def render() -> str:
    """The whole Markdown page."""
    out = [HEADER.rstrip("\n")]
    for group in groups():
        out.append("")
        if group.text:
            out.append(group.text)
            out.append("")
        out.append("| variable | type | default |")
        out.append("|---|---|---|")
        for name, kind, default in group.rows:
            out.append(f"| `{name}` | `{_cell(kind)}` | `{_cell(default)}` |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
