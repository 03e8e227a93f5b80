"""Reading the compose files without a Docker engine: YAML with compose's merge tags, `${VAR}` interpolation,
override merging, and the compose specification's JSON schema (vendored by the check-jsonschema package)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DEMO_FILE = ROOT / "compose.demo.yaml"
EXTERNAL_FILE = ROOT / "compose.external.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
# `$${X}` is a literal `${X}` for the container; only a single `$` interpolates.
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
ENV_LINE = re.compile(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


@dataclass
class Override:
    """`!override`: the value replaces the base file's instead of merging into it."""

    value: Any


class Reset:
    """`!reset`: the attribute is removed from the base file's service."""


class _ComposeLoader(yaml.SafeLoader):
    pass


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!override", _override)
_ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def load(path: Path) -> dict[str, Any]:
    """One compose file as compose reads it (anchors and merge keys resolved, merge tags kept as markers)."""
    data = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass: no arbitrary objects
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def plain(value: Any) -> Any:
    """The file as a plain tree (markers replaced by their values), e.g. for the schema."""
    if isinstance(value, Override):
        return plain(value.value)
    if isinstance(value, Reset):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for the attributes these files use: mappings merge key by key,
    `!override` replaces, `!reset` removes, and lists (profiles, ports) are appended without duplicates."""
    if isinstance(override, Override):
        return plain(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = plain(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + [item for item in plain(override) if item not in base]
    return plain(override)


def model(*paths: Path) -> dict[str, Any]:
    """The compose model of several files, merged in order (as `-f a -f b` does), not yet interpolated."""
    result: dict[str, Any] = plain(load(paths[0]))
    for path in paths[1:]:
        result = merge(result, load(path))
    return result


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def references(path: Path) -> list[tuple[str, str | None, str | None]]:
    """Every `${VAR}` a file's values use (comments left out): (name, operator, default or message)."""
    return [
        (m.group(1), m.group(2), m.group(3)) for text in _strings(plain(load(path))) for m in VAR_REF.finditer(text)
    ]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Fill `${VAR}`, `${VAR:-default}` and `${VAR:?message}` as compose does (raises KeyError on a missing `:?`)."""
    if isinstance(value, str):

        def fill(match: re.Match[str]) -> str:
            name, op, arg = match.group(1), match.group(2), match.group(3)
            current = env.get(name)
            if op == ":-":
                return current if current else (arg or "")
            if op == "-":
                return current if current is not None else (arg or "")
            if op in (":?", "?"):
                if not current:
                    raise KeyError(f"{name}: {arg}")
                return current
            return current or ""

        return VAR_REF.sub(fill, value).replace("$$", "$")
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def env_example() -> dict[str, tuple[str, bool]]:
    """`.env.example` as name -> (value, commented out)."""
    found: dict[str, tuple[str, bool]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_LINE.match(line)
        if match and match.group(2) not in found:
            found[match.group(2)] = (match.group(3).strip(), bool(match.group(1)))
    return found


def compose_schema() -> dict[str, Any]:
    """The compose specification's JSON schema (compose-spec/compose-spec, schema/compose-spec.json), as vendored
    by check-jsonschema (pinned in requirements-dev.txt): no network needed."""
    text = (resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def memory_bytes(value: str | int) -> int:
    """Compose's byte notation (`90g`, `512m`, `4G`) in bytes (binary units, as Docker reads them)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(value).strip().lower())
    assert match, f"not a memory size: {value!r}"
    scale = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2)]
    return int(float(match.group(1)) * scale)
