"""The weights of each local model server: a folder present and readable, the demo model, a package's copy, or a
Hugging Face id in the cache (or reachable to download)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
from collections.abc import Iterable
from pathlib import Path

from .common import GB
from .config import LocalWeights
from .findings import Finding, fail, ok, warn

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _weights_fix(weights: LocalWeights) -> str:
    if weights.variables:
        return (
            f"set {' or '.join(weights.variables)} (in .env) to the folder holding the model (config.json and "
            "*.safetensors): see docs/configuration.md#real-weights"
        )
    return f"correct {weights.where} in the models file (docs/configuration.md#real-weights)"


def _size(paths: Iterable[Path]) -> float:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total / GB


def local_path_problem(path: Path) -> tuple[str, str] | tuple[None, str]:
    """(kind of problem, detail) for a weights path, or (None, description) when it is present and readable.
    Kinds: `missing`, `unreadable`, `empty`, `format` (no config.json: a warning)."""
    try:
        is_dir = stat.S_ISDIR(path.stat().st_mode)
    except FileNotFoundError:
        return "missing", f"{path} does not exist"
    except PermissionError:
        return "unreadable", f"{path} cannot be read by this user (permission denied on the way to it)"
    except OSError as exc:
        return "missing", f"{path}: {exc.strerror or exc}"
    if not is_dir:
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            return "unreadable", f"{path} cannot be read ({exc.strerror or exc})"
        return None, f"{path}: a file of {_size([path]):.2f} GB, readable"
    try:
        names = os.listdir(path)
    except OSError as exc:
        return "unreadable", f"the folder {path} cannot be listed ({exc.strerror or exc})"
    if not names:
        return "empty", f"the folder {path} is empty"
    files = [path / name for name in names if name.endswith((".safetensors", ".bin", ".gguf", ".pt"))]
    for candidate in [path / "config.json", *files[:1]]:
        if candidate.exists():
            try:
                with candidate.open("rb") as handle:
                    handle.read(1)
            except OSError as exc:
                return "unreadable", f"{candidate} cannot be read ({exc.strerror or exc})"
    description = f"{path}: readable, {_size(files):.2f} GB in {len(files)} weight file(s)"
    if "config.json" not in names:
        return "format", f"{description}, but no config.json (not a Hugging Face model folder?)"
    return None, description


def hf_cache_dir(env: dict[str, str]) -> Path:
    """Hugging Face's hub cache, as vLLM finds it (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    home = Path(env["HF_HOME"]) if env.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return home / "hub"


def is_hub_id(weights: str) -> bool:
    return bool(_HUB_ID.match(weights)) and not weights.startswith((".", "/", "~"))


def weights_finding(
    weights: LocalWeights, *, cache_dir: Path, vllm_python: Path, hf_cache: Path, online: bool | None
) -> Finding:
    """Weights present and readable (a folder, the demo model, a package's copy), or where vLLM gets them."""
    check = f"weights {weights.label or ', '.join(weights.models)}"
    value = weights.weights
    if value == "demo:chat":
        folder = cache_dir / "models" / "demo-chat"
        if not folder.exists():
            return ok(check, f"demo:chat: made by `make run` when it starts ({folder}; no download)")
        return _path_finding(check, folder, weights)
    if value.startswith("package:"):
        package, _, sub = value.removeprefix("package:").partition("/")
        lib = vllm_python.parent.parent / "lib"
        found = sorted(lib.glob(f"python*/site-packages/{package}/{sub}")) if lib.exists() else []
        if not found:
            return fail(
                check,
                f"{value}: the package {package} is not installed in {vllm_python.parent.parent}",
                "run `make install-models` (it installs services/vllm/requirements.txt into .venv-vllm)",
            )
        return _path_finding(check, found[0], weights)
    path = Path(value).expanduser()
    if value.startswith(("/", ".", "~")) or path.exists() or not is_hub_id(value):
        if not value.startswith(("/", ".", "~")) and not path.exists():
            return warn(
                check,
                f"{value!r} is neither a folder on this host nor a Hugging Face model id (organisation/name)",
                _weights_fix(weights),
            )
        return _path_finding(check, path, weights)
    cached = hf_cache / f"models--{value.replace('/', '--')}"
    if cached.exists():
        return ok(check, f"{value}: in the Hugging Face cache ({cached})")
    if online:
        return ok(check, f"{value}: not cached yet; vLLM downloads it from huggingface.co when it first starts")
    return warn(
        check,
        f"{value}: a Hugging Face id, not in the cache ({hf_cache}), and this host does not reach huggingface.co "
        "(or HF_HUB_OFFLINE is set): vLLM cannot download it",
        f"copy the weights to this host and {_weights_fix(weights)}",
    )


def _path_finding(check: str, path: Path, weights: LocalWeights) -> Finding:
    kind, detail = local_path_problem(path)
    if kind is None:
        return ok(check, detail)
    if kind == "format":
        return warn(check, detail, "point the weights at the folder that holds config.json (a Hugging Face snapshot)")
    if kind == "unreadable":
        return fail(
            check,
            detail,
            f"let the user that runs vLLM read it (`chmod -R a+rX {path}` or chown it), or {_weights_fix(weights)}",
        )
    return fail(check, detail, _weights_fix(weights))


def reaches_hub(env: dict[str, str], timeout_s: float) -> bool:
    """False when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set or huggingface.co:443 cannot be reached."""
    if any(
        env.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False
