"""Tool calling, structured outputs and vLLM's sampling extras: what the gateway accepts, bounds, refuses and
forwards; the per-model tool-calling configuration and the flags every way of starting a server derives from it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.auth import Principal, Role
from gateway.catalog import Catalog, ModelSpec, load_catalog, tool_call_args
from gateway.context import Answer, Usage
from gateway.errors import InvalidRequest
from gateway.inference import InferenceService
from gateway.protocol.tools import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH, MAX_TOOLS
from services.vllm import entrypoint
from tests.conftest import make_settings
from tests.support.catalogs import chat_entry

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "config/chat-templates/chatml-tools.jinja"
ADMIN = Principal(key_id=uuid.UUID(int=1), name="admin", role=Role.ADMIN)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
        },
    },
}
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> InferenceService:
    """'tools' is served with a tool-call parser, 'plain' without."""
    models = {
        "tools": ModelSpec(name="tools", tool_call_parser="hermes", **chat_entry("http://x", max_tokens=512)),  # type: ignore[arg-type]
        "plain": ModelSpec(name="plain", **chat_entry("http://x", max_tokens=512)),  # type: ignore[arg-type]
    }
    settings = make_settings(tmp_path_factory.mktemp("tools") / "models.yaml")
    return InferenceService(settings=settings, catalog=Catalog(models=models, servers=[]), pool=None)  # type: ignore[arg-type]


def chat(model: str = "tools", **fields: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def forwarded(service: InferenceService, body: bytes, endpoint: str = "chat") -> dict[str, Any]:
    prepared = service.prepare(service.parse(endpoint, body), principal=ADMIN)  # type: ignore[arg-type]
    result: dict[str, Any] = orjson.loads(prepared.payload)
    return result


def refused(service: InferenceService, body: bytes, endpoint: str = "chat") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        service.prepare(service.parse(endpoint, body), principal=ADMIN)  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    return caught.value


# ---- what is forwarded, as sent ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool_choice", ["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_tools_and_every_tool_choice_reach_the_model_server_as_sent(
    service: InferenceService, tool_choice: Any
) -> None:
    sent = forwarded(service, chat(tools=[WEATHER], tool_choice=tool_choice, parallel_tool_calls=False))
    assert sent["tools"] == [WEATHER]
    assert sent["tool_choice"] == tool_choice
    assert sent["parallel_tool_calls"] is False


def test_a_conversation_with_tool_calls_and_their_results_is_forwarded(service: InferenceService) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"},
    ]
    sent = forwarded(service, orjson.dumps({"model": "tools", "messages": messages, "tools": [WEATHER]}))
    assert sent["messages"] == messages


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}},
    ],
)
def test_response_formats_are_forwarded_with_the_schema_under_its_own_name(
    service: InferenceService, response_format: dict[str, Any]
) -> None:
    # Also on a model without a tool-call parser: structured decoding needs none.
    assert forwarded(service, chat("plain", response_format=response_format))["response_format"] == response_format


@pytest.mark.parametrize(
    "constraint",
    [
        {"json": SCHEMA},
        {"regex": "[a-z]{3,8}"},
        {"choice": ["yes", "no"]},
        {"grammar": 'root ::= "yes" | "no"'},
        {"json_object": True, "disable_any_whitespace": True},
    ],
)
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_structured_outputs_are_forwarded_under_vllms_names(
    service: InferenceService, constraint: dict[str, Any], endpoint: str
) -> None:
    body = (
        chat(structured_outputs=constraint)
        if endpoint == "chat"
        else orjson.dumps({"model": "plain", "prompt": "hi", "structured_outputs": constraint})
    )
    assert forwarded(service, body, endpoint)["structured_outputs"] == constraint


def test_vllm_sampling_extras_are_forwarded(service: InferenceService) -> None:
    extras = {
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "min_tokens": 4,
        "stop_token_ids": [2, 4],
        "skip_special_tokens": False,
    }
    for endpoint, body in (
        ("chat", chat(max_tokens=16, **extras)),
        ("completions", orjson.dumps({"model": "plain", "prompt": "hi", "max_tokens": 16, **extras})),
    ):
        sent = forwarded(service, body, endpoint)
        assert {name: sent[name] for name in extras} == extras


@pytest.mark.parametrize(
    "field",
    [
        {"chat_template": "{{ 'x' }}"},
        {"chat_template_kwargs": {"enable_thinking": True}},
        {"tool_parser": "pythonic"},
        {"documents": [{"title": "a", "text": "b"}]},
        {"mm_processor_kwargs": {"a": 1}},
        {"media_io_kwargs": {"image": {}}},
        {"vllm_xargs": {"a": 1}},
        {"guided_json": SCHEMA},
        {"allowed_token_ids": [1]},
        {"add_generation_prompt": False},
        {"continue_final_message": True},
        {"cache_salt": "x"},
        {"kv_transfer_params": {"a": 1}},
        {"priority": -10},
        {"ignore_eos": True},
    ],
)
def test_what_would_change_what_the_server_runs_or_reads_is_dropped(
    service: InferenceService, field: dict[str, Any]
) -> None:
    sent = forwarded(service, chat(**field))
    assert not set(field) & set(sent)


# ---- bounds and refusals ----------------------------------------------------------------------------------


def _tool(name: str, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


BIG_SCHEMA = {"type": "object", "description": "x" * MAX_SCHEMA_BYTES}


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"tools": [_tool(f"t{i}") for i in range(MAX_TOOLS + 1)]}, "tools", "at most 128"),
        ({"tools": []}, "tools", "at least 1"),
        ({"tools": [_tool("get weather")]}, "tools.0.function.name", "pattern"),
        ({"tools": [_tool("x" * 65)]}, "tools.0.function.name", "pattern"),
        ({"tools": [{"type": "retrieval", "function": {"name": "a"}}]}, "tools.0.type", None),
        ({"tools": [_tool("a", BIG_SCHEMA)]}, "tools.0.function.parameters", "bytes"),
        ({"tools": [_tool("a", _nested(MAX_SCHEMA_DEPTH))]}, "tools.0.function.parameters", "deeper"),
        ({"tools": [_tool("a", {"$ref": "https://example.org/s.json"})]}, "tools.0.function.parameters", "$ref"),
        ({"tools": [_tool("a", {"$ref": "file:///etc/passwd"})]}, "tools.0.function.parameters", "$ref"),
        ({"tools": [_tool("a", {"type": "integer", "maximum": 2**70})]}, "tools.0.function.parameters", "64 bits"),
        ({"tools": [_tool("a"), _tool("a")]}, "tools", "unique"),
        ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
        ({"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice", None),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
            "not in 'tools'",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "structured_outputs": {"choice": ["a"]},
            },
            "structured_outputs",
            "named",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.json_schema", "required"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": BIG_SCHEMA}}},
            "response_format.json_schema.json_schema.schema",
            "bytes",
        ),
        ({"response_format": {"type": "structural_tag", "format": {}}}, "response_format", None),
        ({"response_format": {"type": "xml"}}, "response_format", None),
        ({"structured_outputs": {}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"regex": "a{1,1000000}"}}, "structured_outputs.regex", "repetition"),
        ({"structured_outputs": {"regex": "a" * 5000}}, "structured_outputs.regex", None),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", None),
        ({"structured_outputs": {"json_object": False}}, "structured_outputs.json_object", None),
        ({"top_k": 1.5}, "top_k", None),
        ({"top_k": -2}, "top_k", None),
        ({"min_p": 1.5}, "min_p", None),
        ({"repetition_penalty": 0}, "repetition_penalty", None),
        ({"repetition_penalty": 3}, "repetition_penalty", None),
        ({"min_tokens": -1}, "min_tokens", None),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens", "above the 10 tokens"),
        ({"min_tokens": 513}, "min_tokens", "above the 512 tokens"),
        ({"stop_token_ids": list(range(65))}, "stop_token_ids", None),
        ({"stop_token_ids": [-1]}, "stop_token_ids.0", None),
        ({"skip_special_tokens": "no"}, "skip_special_tokens", None),
    ],
)
def test_bad_tools_formats_and_extras_are_400_naming_the_field(
    service: InferenceService, fields: dict[str, Any], param: str, fragment: str | None
) -> None:
    error = refused(service, chat(**fields))
    assert error.param is not None and error.param.startswith(param), error.param
    if fragment:
        assert fragment in error.message, error.message


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, "image_url"),
        ({"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}, "'file'"),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}, "audio"),
        ({"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file:///v.mp4"}}]}, "video_url"),
        ({"role": "user", "content": [{"type": "text"}]}, None),
        ({"role": "tool", "content": "4 degrees"}, "tool_call_id"),
        ({"role": "user", "content": "hi", "tool_calls": []}, "only 'assistant'"),
        ({"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "a"}}]}, None),
    ],
)
def test_media_parts_and_misplaced_tool_fields_are_refused(
    service: InferenceService, message: dict[str, Any], fragment: str | None
) -> None:
    error = refused(service, orjson.dumps({"model": "tools", "messages": [message]}))
    assert error.param is not None and error.param.startswith("messages.0"), error.param
    if fragment:
        assert fragment in error.message, error.message


@pytest.mark.parametrize(
    ("fields", "asked"),
    [
        ({"tools": [WEATHER]}, "'auto' (the default when 'tools' are given)"),
        ({"tools": [WEATHER], "tool_choice": "auto"}, "'auto'"),
        ({"tools": [WEATHER], "tool_choice": "required"}, "'required'"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            "a named function ('get_weather')",
        ),
    ],
)
def test_tool_choice_on_a_model_without_a_parser_is_a_400_naming_the_model(
    service: InferenceService, fields: dict[str, Any], asked: str
) -> None:
    error = refused(service, chat("plain", **fields))
    assert error.param == "tool_choice" and error.code == "tool_calling_unsupported"
    assert "The model 'plain' is served without tool calling" in error.message
    assert f"tool_choice {asked}" in error.message
    assert "use a model with tool calling: tools." in error.message


def test_tool_choice_none_works_on_a_model_without_a_parser(service: InferenceService) -> None:
    assert forwarded(service, chat("plain", tools=[WEATHER], tool_choice="none"))["tool_choice"] == "none"


# ---- the models file, and the flags derived from it -------------------------------------------------------


def test_local_profile_serves_every_chat_name_with_the_demo_models_tool_format() -> None:
    catalog = load_catalog(ROOT / "config" / "models.yaml", profile="local", env={})
    chat_names = [name for name, spec in catalog.models.items() if spec.kind == "chat"]
    assert chat_names and all(catalog.models[name].tool_call_parser == "hermes" for name in chat_names)
    demo = next(server for server in catalog.servers if server.name == "demo-chat")
    args = " ".join(demo.args)
    assert "--enable-auto-tool-choice --tool-call-parser hermes --tool-strict-level parameter" in args
    assert "--chat-template" not in args  # the demo model carries its own
    embed = next(server for server in catalog.servers if server.name == "embed")
    assert "--tool-call-parser" not in embed.args


def test_real_weights_get_their_parser_and_template_from_the_models_file() -> None:
    catalog = load_catalog(ROOT / "config" / "models.yaml", profile=None, env={})
    servers = {server.name: server for server in catalog.servers}
    hermes = catalog.models["hermes"]
    assert (hermes.tool_call_parser, hermes.chat_template) == ("hermes", "config/chat-templates/chatml-tools.jinja")
    assert (ROOT / hermes.chat_template).is_file()
    assert servers["hermes"].args == tool_call_args("hermes", "config/chat-templates/chatml-tools.jinja")
    for name in ("mixtral", "openchat", "phi3"):  # no tool format in the default weights
        assert catalog.models[name].tool_call_parser is None and servers[name].args == []
    # An operator's choice, from the environment (.env), e.g. with Mixtral-8x22B-Instruct weights:
    catalog = load_catalog(ROOT / "config" / "models.yaml", profile=None, env={"MIXTRAL_TOOL_CALL_PARSER": "mistral"})
    assert catalog.models["mixtral"].tool_call_parser == "mistral"
    assert "--tool-call-parser" in next(s for s in catalog.servers if s.name == "mixtral").args


@pytest.mark.parametrize(
    ("parser", "template"), [(None, None), ("hermes", None), ("mistral", "t.jinja"), (None, "t.jinja")]
)
def test_the_entrypoint_and_the_stack_runner_give_vllm_the_same_flags(parser: str | None, template: str | None) -> None:
    assert entrypoint.tool_call_args(parser, template) == tool_call_args(parser, template)


def test_the_entrypoint_serves_weights_with_the_configured_parser_and_template() -> None:
    env = {
        "CITADEL_VLLM_MODE": "weights",
        "CITADEL_VLLM_SERVED_NAME": "hermes",
        "CITADEL_VLLM_MODEL": "/models/hermes",
        "CITADEL_VLLM_PORT": "11401",
        "CITADEL_VLLM_MAX_MODEL_LEN": "8192",
        "CITADEL_VLLM_KV_CACHE_GB": "8",
        "CITADEL_VLLM_TOOL_CALL_PARSER": "hermes",
        "CITADEL_VLLM_CHAT_TEMPLATE": "config/chat-templates/chatml-tools.jinja",
    }
    args = entrypoint.plan(env, allowed_cpus=4, demo_dir=Path("/demo"), embed_dir=None).args
    expected = tool_call_args("hermes", str(entrypoint.APP_ROOT / "config/chat-templates/chatml-tools.jinja"))
    assert args[-len(expected) :] == expected
    # Demo mode: the demo model's own template and parser, whatever the weights would use.
    demo = entrypoint.plan({**env, "CITADEL_VLLM_MODE": "demo"}, allowed_cpus=1, demo_dir=Path("/d"), embed_dir=None)
    expected = tool_call_args("hermes", None)
    assert demo.args[-len(expected) :] == expected
    # No parser: no tool calling flags at all.
    plain = {**env, "CITADEL_VLLM_TOOL_CALL_PARSER": "", "CITADEL_VLLM_CHAT_TEMPLATE": ""}
    assert "--tool-call-parser" not in entrypoint.plan(plain, allowed_cpus=4, demo_dir=Path("/d"), embed_dir=None).args


def test_the_demo_model_carries_the_same_tool_template_as_the_config_folder() -> None:
    sys.path.insert(0, str(ROOT / "services" / "vllm"))
    try:
        import demo_model
    finally:
        sys.path.pop(0)
    assert (ROOT / TEMPLATE).read_text() == demo_model.CHAT_TEMPLATE


RENDER = """
import json, sys
from transformers.utils.chat_template_utils import render_jinja_template
request = json.load(sys.stdin)
rendered, _ = render_jinja_template([request["messages"]], chat_template=request["template"],
                                    tools=request.get("tools"), add_generation_prompt=True)
print(json.dumps(rendered[0]))
"""


def _render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """The template rendered as vLLM renders it: by transformers, in the vLLM environment."""
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        pytest.skip("no .venv-vllm (make install-models): transformers renders the chat templates")
    request = {"messages": messages, "tools": tools, "template": (ROOT / TEMPLATE).read_text()}
    result = subprocess.run(
        [str(python), "-c", RENDER], input=json.dumps(request), capture_output=True, text=True, check=True, timeout=120
    )
    text: str = json.loads(result.stdout)
    return text


def test_the_tool_template_renders_tools_calls_and_results_in_the_hermes_format() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "4 degrees"},
    ]
    text = _render(messages, [WEATHER])
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou are a function calling AI model.")
    assert "<tools>\n" + json.dumps(WEATHER["function"]) + "\n</tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>tool\n<tool_response>\n4 degrees\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    # Without tools: plain ChatML, as the demo model's template always was.
    assert _render(messages[:2]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n"
    )


# ---- answers: what a conversation session keeps of a tool-call answer --------------------------------------


def test_a_sessions_reply_keeps_the_tool_calls_of_a_json_answer() -> None:
    from gateway.inference import _renamed

    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    body = orjson.dumps(
        {
            "model": "upstream",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    )
    spec = ModelSpec(name="tools", **chat_entry("http://x"))  # type: ignore[arg-type]
    usage = Usage()
    answer = Answer()
    relayed = orjson.loads(_renamed(body, spec, "tools", usage, answer))
    assert relayed["choices"][0]["message"]["tool_calls"] == [call] and relayed["model"] == "tools"
    assert usage.completion_tokens == 7
    assert answer.reply() == {"role": "assistant", "content": "", "tool_calls": [call]}


def test_a_sessions_reply_reassembles_streamed_tool_call_deltas() -> None:
    from gateway.upstream.sse import _collect_content

    def event(delta: dict[str, Any], index: int = 0) -> bytes:
        return b"data: " + orjson.dumps({"choices": [{"index": index, "delta": delta}]}) + b"\n\n"

    first = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather"}}
    block = b"".join(
        [
            event({"role": "assistant", "content": ""}),
            event({"tool_calls": [first]}),
            event({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            event({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
            event({"tool_calls": [{"index": 0, "function": {"arguments": "ignored"}}]}, index=1),  # another choice
            b"data: [DONE]\n\n",
        ]
    )
    answer = Answer()
    _collect_content(block, answer)
    assert answer.tool_calls == {
        0: {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    }
