"""The model catalogue: loads config/models.yaml (with ${VAR:-default} expansion and profiles)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# vLLM's tool-call parser names (hermes, mistral, llama3_json, pythonic, ...): checked by vLLM at start-up.
ToolCallParser = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# How strictly vLLM holds tool calls to the tools' schemas (--tool-strict-level): `parameter` constrains the call
# markup, the function name and the arguments (as if every tool were `strict: true`) wherever vLLM uses its
# structured decoding for calls (tool_choice required or named, and an `auto` call once it has started).
TOOL_STRICT_LEVEL = "parameter"


class ConfigError(ValueError):
    """The models file is missing, malformed or inconsistent."""


def tool_call_args(parser: str | None, chat_template: str | None) -> list[str]:
    """The vLLM flags for a server's tool calling and chat template (also services/vllm/entrypoint.py's)."""
    args = []
    if parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", parser, "--tool-strict-level", TOOL_STRICT_LEVEL]
    if chat_template:
        args += ["--chat-template", chat_template]
    return args


def expand_env(value: Any, env: dict[str, str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is None:
                raise ConfigError(f"models file refers to ${{{name}}}, which is not set")
            return default

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, list):
        return [expand_env(item, env) for item in value]
    if isinstance(value, dict):
        return {key: expand_env(item, env) for key, item in value.items()}
    return value


def _split_urls(value: Any) -> list[str]:
    """Accept a list of URLs or one comma-separated string (handy from an environment variable)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = [str(item).strip().rstrip("/") for item in items if str(item).strip()]
    if not urls:
        raise ValueError("at least one backend URL is required")
    return urls


class Timeouts(BaseModel):
    """Per-model upstream timeouts in seconds; unset ones take the gateway's defaults (CITADEL_UPSTREAM_*)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_s: float | None = Field(None, gt=0)
    first_byte_s: float | None = Field(None, gt=0)
    total_s: float | None = Field(None, gt=0)


class ModelSpec(BaseModel):
    """One public model name and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["chat", "embedding"]
    display_name: str
    weights: str
    port: int
    cpus: float
    memory_gb: float
    kv_cache_gb: float = 1
    max_model_len: int
    max_tokens: int = Field(gt=0)
    temperature: float = 0.7
    latency_target_ms: int
    dimensions: int | None = None
    backends: list[str]
    upstream_model: str = ""
    # Business metrics (citadel_llm_cost_total): price per 1,000 tokens, in whatever currency you bill in.
    price_per_1k_prompt_tokens: float = Field(0.0, ge=0)
    price_per_1k_completion_tokens: float = Field(0.0, ge=0)
    # Long generations on big models are legitimate: each model may wait longer (or less) than the default.
    timeouts: Timeouts = Timeouts(connect_s=None, first_byte_s=None, total_s=None)
    # Tool calling (docs/api.md "Tool calling and structured outputs"): vLLM's tool-call parser for the weights'
    # tool format (none: the model is served without tool calling, and the gateway refuses tool_choice other
    # than "none"), and the chat template that shows the model its tools (a file; default: the weights' own).
    tool_call_parser: ToolCallParser | None = None
    chat_template: str | None = None
    # Admission (gateway/admission): requests at once per replica of this model; None: the gateway's
    # CITADEL_ADMISSION_CONCURRENCY. A CPU server serves a handful well; more only queue inside vLLM.
    max_concurrency: int | None = Field(None, ge=1)

    @field_validator("backends", mode="before")
    @classmethod
    def _backends(cls, value: Any) -> list[str]:
        return _split_urls(value)

    @field_validator("tool_call_parser", "chat_template", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def upstream_name(self) -> str:
        """The name the vLLM server knows this model by."""
        return self.upstream_model or self.name


class ServerSpec(BaseModel):
    """One vLLM server process that the stack runner starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    weights: str
    host: str = "127.0.0.1"
    port: int
    serves: list[str] = Field(min_length=1)
    max_model_len: int
    kv_cache_gb: float = 1
    cpus: float | None = None
    # Requests at once the gateway's admission queue lets through to this server (its models' max_concurrency);
    # with vLLM's --max-num-seqs N, N - 1 leaves a seat for the one request a gate may admit above it.
    max_concurrency: int | None = Field(None, ge=1)
    # Set from the fields below (tool_call_args) and the profile's own `args`: everything stack.py adds to the
    # vLLM command beyond the model, names, address, context and KV cache.
    args: list[str] = []
    tool_call_parser: ToolCallParser | None = None
    chat_template: str | None = None

    @field_validator("tool_call_parser", "chat_template", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


# An alias is a public name like a model's; no '/' so that GET /v1/models/{alias} reaches it.
ALIAS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class AliasSpec(BaseModel):
    """A public name that stands for an ordered list of models of one kind (the first that can serve, serves)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    targets: tuple[str, ...] = Field(min_length=1)
    kind: Literal["chat", "embedding"]


class Catalog(BaseModel):
    """Every model the gateway serves, the aliases that stand for them, and the vLLM servers that serve them."""

    model_config = ConfigDict(frozen=True)

    models: dict[str, ModelSpec]
    servers: list[ServerSpec]
    profile: str | None = None
    aliases: dict[str, AliasSpec] = {}

    def get(self, name: str) -> ModelSpec | None:
        return self.models.get(name)

    def alias(self, name: str) -> AliasSpec | None:
        return self.aliases.get(name)


def _parse_alias(name: Any, targets: Any, models: dict[str, ModelSpec]) -> AliasSpec:
    """One `aliases:` entry, checked against the models (after any profile: targets are the models' names)."""
    if not isinstance(name, str) or not ALIAS_NAME.match(name):
        raise ConfigError(
            f"alias name {name!r} is not valid: 1 to 64 of letters, digits, '.', '_', ':', '-' (not first)"
        )
    if name in models:
        raise ConfigError(f"alias {name!r} is also a model name: an alias needs a name of its own")
    if not isinstance(targets, list) or not all(isinstance(target, str) for target in targets):
        raise ConfigError(f"alias {name!r} must be a list of model names, e.g. {name}: [phi3, openchat]")
    if not targets:
        raise ConfigError(f"alias {name!r} has no targets: list at least one model")
    seen: set[str] = set()
    for target in targets:
        if target in seen:
            raise ConfigError(f"alias {name!r} names model {target!r} twice")
        seen.add(target)
        if target not in models:
            raise ConfigError(f"alias {name!r} names unknown model {target!r} (targets are models, not aliases)")
    specs = [models[target] for target in targets]
    kinds = {spec.kind for spec in specs}
    if len(kinds) > 1:
        shown = ", ".join(f"{spec.name}: {spec.kind}" for spec in specs)
        raise ConfigError(f"alias {name!r} mixes chat and embedding models ({shown}): its targets share one kind")
    # A fallback must not change the vectors' size under a client (or a vector collection) that stored them.
    if len({spec.dimensions for spec in specs}) > 1:
        shown = ", ".join(f"{spec.name}: {spec.dimensions}" for spec in specs)
        raise ConfigError(f"alias {name!r} names embedding models of different dimensions ({shown})")
    return AliasSpec(name=name, targets=tuple(targets), kind=specs[0].kind)


def _parse_aliases(raw: Any, models: dict[str, ModelSpec]) -> dict[str, AliasSpec]:
    """The optional top-level `aliases:` mapping: alias name -> ordered list of model names."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("'aliases' must be a mapping of alias name to a list of model names")
    return {str(name): _parse_alias(name, targets, models) for name, targets in raw.items()}


def _default_servers(models: dict[str, ModelSpec]) -> list[ServerSpec]:
    """Without a profile, every model has a server of its own on its port."""
    return [
        ServerSpec(
            name=spec.name,
            weights=spec.weights,
            port=spec.port,
            serves=[spec.name],
            max_model_len=spec.max_model_len,
            kv_cache_gb=spec.kv_cache_gb,
            cpus=spec.cpus,
            max_concurrency=spec.max_concurrency,
            args=[
                *(["--runner", "pooling"] if spec.kind == "embedding" else []),
                *tool_call_args(spec.tool_call_parser, spec.chat_template),
            ],
            tool_call_parser=spec.tool_call_parser,
            chat_template=spec.chat_template,
        )
        for spec in models.values()
    ]


def _profile_server(name: str, host: str, fields: dict[str, Any]) -> ServerSpec:
    """A profile's server: its own `args`, then the tool-calling flags of its own fields."""
    server = ServerSpec(name=name, host=host, **fields)
    extra = tool_call_args(server.tool_call_parser, server.chat_template)
    return server.model_copy(update={"args": [*server.args, *extra]}) if extra else server


def _apply_profile(
    models: dict[str, ModelSpec], raw_profile: dict[str, Any]
) -> tuple[dict[str, ModelSpec], list[ServerSpec]]:
    """Point each model at the profile's server that serves it; its first name is the upstream name."""
    host = str(raw_profile.get("host", "127.0.0.1"))
    servers = [_profile_server(name, host, fields) for name, fields in (raw_profile.get("servers") or {}).items()]
    served_by: dict[str, ServerSpec] = {}
    for server in servers:
        for model_name in server.serves:
            if model_name not in models:
                raise ConfigError(f"server {server.name!r} serves unknown model {model_name!r}")
            if model_name in served_by:
                raise ConfigError(f"model {model_name!r} is served by two servers")
            served_by[model_name] = server
    rewired = {}
    for name, spec in models.items():
        if name not in served_by:
            raise ConfigError(f"profile has no server for model {name!r}")
        serving = served_by[name]
        rewired[name] = spec.model_copy(
            update={
                "backends": [serving.url],
                "upstream_model": serving.serves[0],
                # A small server cannot generate more than its context allows.
                "max_tokens": min(spec.max_tokens, serving.max_model_len),
                "max_model_len": serving.max_model_len,
                # What the server that answers runs decides what a request may ask for.
                "tool_call_parser": serving.tool_call_parser,
                "chat_template": serving.chat_template,
                "max_concurrency": serving.max_concurrency or spec.max_concurrency,
            }
        )
    return rewired, servers


def load_catalog(path: Path, *, profile: str | None = None, env: dict[str, str] | None = None) -> Catalog:
    """Read and validate the models file; raise ConfigError with a readable message on any problem."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read models file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"models file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ConfigError(f"models file {path} needs a top-level 'models' mapping")
    raw = expand_env(raw, dict(os.environ) if env is None else env)
    try:
        models = {name: ModelSpec(name=name, **fields) for name, fields in raw["models"].items()}
        if not profile:
            aliases = _parse_aliases(raw.get("aliases"), models)
            return Catalog(models=models, servers=_default_servers(models), aliases=aliases)
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"profile {profile!r} is not in {path} (known: {', '.join(profiles) or 'none'})")
        models, servers = _apply_profile(models, profiles[profile])
        # A profile rewires how models are served, never their names: the aliases are checked against the result.
        aliases = _parse_aliases(raw.get("aliases"), models)
        return Catalog(models=models, servers=servers, profile=profile, aliases=aliases)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"models file {path} is invalid: {exc}") from exc
