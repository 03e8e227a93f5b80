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

from pydantic import AliasChoices, BaseModel
from pydantic_core import PydanticUndefined

from .settings import GROUPS, REPO_ROOT, Settings

HEADER = """# Settings reference

Generated from `gateway/settings.py` by `python -m gateway.settings_reference > docs/settings.md`; a test
checks it matches the code. Every setting is an environment variable (or a line in `.env`; the
environment wins). Lists and maps are JSON. `.env.example` has a working set; the models themselves are
configured in `config/models.yaml` ([configuration](configuration.md)). In the code, settings of one concern
form a group (`settings.redis.timeout_ms` is `CITADEL_REDIS_TIMEOUT_MS`; the tables below name each group).
"""


@dataclass
class Group:
    """A comment block and the settings under it."""

    text: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (variable, type, default)


def variable(name: str, group: str | None = None) -> str:
    """The environment variable a field is read from: its first alias, else CITADEL_[<GROUP>_]<FIELD>."""
    if group is not None:
        return f"{Settings.model_config.get('env_prefix', '')}{group}_{name}".upper()
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def variables() -> list[str]:
    """Every variable the settings read, groups' members included."""
    names = [variable(name) for name in Settings.model_fields if name not in GROUPS]
    return names + [variable(member, group) for group, model in GROUPS.items() for member in model.model_fields]


def shown_default(model: type[BaseModel], name: str) -> str:
    """The default as a user would write it in `.env`."""
    value: Any = model.model_fields[name].default
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


def shown_type(annotation: ast.expr) -> str:
    """`int`, not `Annotated[int, Field(ge=1)]`: the bounds are pydantic's business, the type the reader's."""
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
        assert isinstance(annotation.slice, ast.Tuple)
        return ast.unparse(annotation.slice.elts[0])
    return ast.unparse(annotation)


def class_groups(model: type[BaseModel], group: str | None = None) -> list[Group]:
    """A class body's comment blocks and fields, in order (a settings group's docstring leads its first block)."""
    source = inspect.getsource(model)
    lines = source.splitlines()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    fields = {node.lineno: node for node in body.body if isinstance(node, ast.AnnAssign)}
    intro = " ".join((inspect.getdoc(model) or "").split()) if group is not None else ""
    result: list[Group] = []
    current: Group | None = None
    comment: list[str] = [intro] if intro else []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        node = fields.get(number)
        if node is not None and isinstance(node.target, ast.Name) and node.target.id in model.model_fields:
            name = node.target.id
            if group is None and name in GROUPS:
                result.extend(class_groups(GROUPS[name], name))
                current, comment = None, []
                continue
            if comment or current is None:
                current = Group(text=" ".join(comment))
                result.append(current)
                comment = []
            current.rows.append((variable(name, group), shown_type(node.annotation), shown_default(model, name)))
        elif not stripped:
            current = None
            comment = [] if group is None or result else comment
    return result


def groups() -> list[Group]:
    """The Settings class's blocks, each settings group's where the class names it."""
    return class_groups(Settings)


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
