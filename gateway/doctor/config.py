"""Configuration checks (the settings, the models file) and what the configuration asks of this host: the model
servers expected to run here (their ports and resources) and the weights they load."""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import SecretStr, ValidationError

from ..catalog import Catalog, ConfigError, load_catalog
from ..settings import GROUPS, Settings, config_environment
from .findings import Finding, fail, ok

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
# What a vLLM CPU server takes besides its KV cache (the interpreter, torch, the engine and a small model's
# weights): a profile's servers have no memory_gb, so their need is this plus kv_cache_gb (measured: 2-3 GB).
VLLM_BASE_MEMORY_GB = 2.5
PLACEHOLDER_ADMIN_KEY = "doctor-placeholder-admin-key"
SETTINGS_FIX = "set them in the environment or .env (see .env.example, docs/configuration.md and docs/settings.md)"
ADMIN_KEY_FIX = (
    "CITADEL_ADMIN_KEY needs 16 characters or more: `make run` writes a .env with a random one, or set "
    "CITADEL_ADMIN_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
)


def setting_name(location: tuple[int | str, ...]) -> str:
    """The variable an error's location stands for: an alias as it is (API_GATEWAY_PORT), else CITADEL_<FIELD>."""
    first = str(location[0])
    if first.isupper():
        return first
    return "CITADEL_" + "_".join(map(str, location)).upper()


def describe_errors(exc: ValidationError) -> str:
    """Each invalid or missing variable by name with pydantic's reason (never the value given)."""
    return "; ".join(f"{setting_name(error['loc'])}: {error['msg']}" for error in exc.errors())


def check_settings(env_file: Path | None = Path(".env")) -> tuple[Finding, Settings | None]:
    """Settings as `citadel serve` reads them. When invalid, the failure and settings with the invalid values
    replaced by defaults (so that the other checks still run), or None if even that fails."""
    try:
        settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        names = {setting_name(error["loc"]) for error in exc.errors()}
        fix = ADMIN_KEY_FIX if "CITADEL_ADMIN_KEY" in names else SETTINGS_FIX
        finding = fail("settings", f"invalid or missing settings: {describe_errors(exc)}", fix)
        return finding, _with_defaults(exc, env_file)
    source = f"environment and {env_file}" if env_file is not None and env_file.exists() else "environment"
    return ok("settings", f"valid (from the {source})"), settings


def _with_defaults(exc: ValidationError, env_file: Path | None) -> Settings | None:
    overrides: dict[str, Any] = {}
    for error in exc.errors():
        key = str(error["loc"][0])
        if key in GROUPS and len(error["loc"]) > 1:  # a group's member: its flat name takes the member's default
            member = GROUPS[key].model_fields.get(str(error["loc"][1]))
            if member is None:
                return None
            overrides[f"{key}_{error['loc'][1]}"] = member.get_default(call_default_factory=True)
            continue
        field = Settings.model_fields.get(key) or next(
            (f for f in Settings.model_fields.values() if key in getattr(f.validation_alias, "choices", ())), None
        )
        if field is None:
            return None
        overrides[key] = field.get_default(call_default_factory=True) if not field.is_required() else None
    if "admin_key" in overrides:
        overrides["admin_key"] = SecretStr(PLACEHOLDER_ADMIN_KEY)
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError:
        return None


def check_catalog(settings: Settings, env: dict[str, str]) -> tuple[Finding, Catalog | None]:
    """The models file as the gateway loads it (variables filled in, the profile applied)."""
    try:
        catalog = load_catalog(settings.config_path, profile=settings.profile, env=env)
    except ConfigError as exc:
        fix = (
            f"correct {settings.config_path} or set the variable it names (in .env); CITADEL_CONFIG_PATH picks the "
            "file and CITADEL_PROFILE the profile (docs/configuration.md)"
        )
        return fail("models file", str(exc), fix), None
    served = f"profile {catalog.profile}" if catalog.profile else "no profile: one server per model"
    names = ", ".join(catalog.models)
    detail = f"{settings.config_path}: {len(catalog.models)} models ({names}), {len(catalog.servers)} servers, {served}"
    return ok("models file", detail), catalog


def environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """The variables the models file may refer to, as the gateway sees them."""
    return config_environment(env_file if env_file is not None and env_file.exists() else None)


# What the configuration asks of this host


@dataclass(frozen=True, slots=True)
class LocalServer:
    """A model server the configuration expects on this host (a backend URL on a local address)."""

    name: str
    url: str
    models: tuple[str, ...]
    cpus: float
    memory_gb: float
    kv_cache_gb: float
    memory_estimated: bool  # a profile's server: VLLM_BASE_MEMORY_GB + its KV cache
    port_variables: tuple[str, ...]

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


@dataclass(frozen=True, slots=True)
class LocalWeights:
    """Weights a local server loads, the models that use them, and the variables that set them."""

    weights: str
    models: tuple[str, ...]
    variables: tuple[str, ...]
    where: str  # the models file's entry, for the fix when no variable sets it
    label: str = ""  # the server's name (a profile) or the models' names


def local_hosts() -> set[str]:
    # Names compared with a configured host, to tell "this host" from another; nothing binds to them.
    names = {"localhost", "0.0.0.0", "::", "::1", "ip6-localhost"}  # nosec B104
    with contextlib.suppress(OSError):
        names.add(socket.gethostname())
    return names


def is_local(url: str, hosts: set[str] | None = None) -> bool:
    """True when `url` points at this host (a loopback address, or the host's own name)."""
    host = urlsplit(url).hostname or ""
    return host.startswith("127.") or host in (hosts if hosts is not None else local_hosts())


def variables_in(value: Any) -> tuple[str, ...]:
    """The ${VAR} names in a raw (unexpanded) value of the models file."""
    return tuple(_ENV_REF.findall(value)) if isinstance(value, str) else ()


def read_raw(path: Path) -> dict[str, Any]:
    """The models file as written (variables not filled in); {} when unreadable (the catalog check says why)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _raw_entry(raw: dict[str, Any], *keys: str) -> dict[str, Any]:
    node: Any = raw
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def local_servers(catalog: Catalog, raw: dict[str, Any], hosts: set[str] | None = None) -> list[LocalServer]:
    """The model servers this host should run, one per local backend URL (models sharing a URL share it)."""
    if catalog.profile:
        servers = []
        for server in catalog.servers:
            if not is_local(server.url, hosts):
                continue
            entry = _raw_entry(raw, "profiles", catalog.profile, "servers", server.name)
            servers.append(
                LocalServer(
                    name=server.name,
                    url=server.url,
                    models=tuple(server.serves),
                    cpus=server.cpus or 1.0,
                    memory_gb=VLLM_BASE_MEMORY_GB + server.kv_cache_gb,
                    kv_cache_gb=server.kv_cache_gb,
                    memory_estimated=True,
                    port_variables=variables_in(entry.get("port")),
                )
            )
        return servers
    by_url: dict[str, list[str]] = {}
    for spec in catalog.models.values():
        for url in spec.backends:
            if is_local(url, hosts):
                by_url.setdefault(url, []).append(spec.name)
    servers = []
    for url, names in by_url.items():
        specs = [catalog.models[name] for name in names]
        variables = tuple(v for name in names for v in variables_in(_raw_entry(raw, "models", name).get("backends")))
        servers.append(
            LocalServer(
                name=names[0],
                url=url,
                models=tuple(names),
                cpus=max(spec.cpus for spec in specs),
                memory_gb=max(spec.memory_gb for spec in specs),
                kv_cache_gb=max(spec.kv_cache_gb for spec in specs),
                memory_estimated=False,
                port_variables=tuple(dict.fromkeys(variables)),
            )
        )
    return servers


def local_weights(catalog: Catalog, raw: dict[str, Any], servers: list[LocalServer]) -> list[LocalWeights]:
    """The weights of every local server, once per distinct value."""
    local_models = {name for server in servers for name in server.models}
    found: dict[str, LocalWeights] = {}
    sources: list[tuple[str, tuple[str, ...], tuple[str, ...], str]]
    if catalog.profile:
        sources = [
            (server.weights, tuple(server.serves), ("profiles", catalog.profile, "servers", server.name), server.name)
            for server in catalog.servers
            if set(server.serves) & local_models
        ]
    else:
        sources = [
            (spec.weights, (spec.name,), ("models", spec.name), spec.name)
            for spec in catalog.models.values()
            if spec.name in local_models
        ]
    for weights, models, keys, name in sources:
        variables = variables_in(_raw_entry(raw, *keys).get("weights"))
        where = f"`weights` of {'server' if catalog.profile else 'model'} {name}"
        if weights in found:
            previous = found[weights]
            found[weights] = LocalWeights(
                weights,
                previous.models + models,
                tuple(dict.fromkeys(previous.variables + variables)),
                previous.where,
                f"{previous.label}, {name}",
            )
        else:
            found[weights] = LocalWeights(weights, models, variables, where, name)
    return list(found.values())
