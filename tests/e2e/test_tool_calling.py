"""Tool calling and structured outputs on the real stack, as agent frameworks call them: LangChain's ChatOpenAI
(bind_tools with invoke and stream, with_structured_output in json_schema mode) and the official openai SDK
(tools with tool_choice "required" and a named function, streamed tool-call deltas, `parse` with a response_format).

The demo model's answers are noise, so what holds here is what vLLM's structured decoding guarantees: with
tool_choice "required" or named, and with a json_schema response_format, the answer follows the schema. The
schemas are small and closed (enums, booleans, bounded integers): a noise model inside a free string would
rarely close it within any token budget. With "auto" the model may answer in text: those tests check the path
(a well-formed answer), not the model's choice. Calls are single (parallel_tool_calls false) to bound the tokens:
measured on 2 busy cores, a required call of these tools took 90 tokens (median; max 118 in 20) and about 1 s.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field

from tests.support.catalogs import ADMIN_KEY

pytestmark = pytest.mark.e2e

CHAT_MODELS = ["mixtral", "hermes", "openchat", "phi3"]
# Room for one call of these tools with the noise model's whitespace (about 3x the measured maximum).
CALL_TOKENS = 384
QUESTION = [{"role": "user", "content": "What is the weather in Oslo, and what is 3 times 4?"}]


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    model_config = ConfigDict(extra="forbid")

    city: Literal["Paris", "Oslo", "Rome"]
    unit: Literal["celsius", "fahrenheit"]


class Calculate(BaseModel):
    """Do arithmetic on two digits."""

    model_config = ConfigDict(extra="forbid")

    operation: Literal["add", "multiply"]
    a: int = Field(ge=0, le=9)
    b: int = Field(ge=0, le=9)


class Forecast(BaseModel):
    """A short forecast."""

    model_config = ConfigDict(extra="forbid")

    city: Literal["Paris", "Oslo", "Rome"]
    sunny: bool
    temperature: int = Field(ge=-20, le=40)


TOOLS = {"GetWeather": GetWeather, "Calculate": Calculate}


def sdk_tool(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": model.__name__, "description": model.__doc__, "parameters": model.model_json_schema()},
    }


SDK_TOOLS = [sdk_tool(GetWeather), sdk_tool(Calculate)]


def check_call(name: str, arguments: str | dict[str, Any]) -> BaseModel:
    """A tool call is well-formed: a known tool, and JSON arguments that its schema accepts."""
    assert name in TOOLS, name
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert isinstance(parsed, dict), arguments
    return TOOLS[name].model_validate(parsed)


@pytest.fixture(scope="module")
def llm(gateway_url: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{gateway_url}/v1",
        api_key=ADMIN_KEY,  # type: ignore[arg-type]
        model="hermes",
        max_tokens=CALL_TOKENS,  # type: ignore[call-arg]
        max_retries=0,
        timeout=120,
    )


# ---- LangChain ---------------------------------------------------------------------------------------------


def test_langchain_bind_tools_invoke_calls_the_chosen_tool(llm: ChatOpenAI) -> None:
    bound = llm.bind_tools([GetWeather, Calculate], tool_choice="GetWeather", parallel_tool_calls=False)
    reply = bound.invoke(QUESTION)
    assert isinstance(reply, AIMessage)
    assert not reply.invalid_tool_calls, reply.invalid_tool_calls
    assert [call["name"] for call in reply.tool_calls] == ["GetWeather"]
    assert isinstance(check_call("GetWeather", reply.tool_calls[0]["args"]), GetWeather)
    assert reply.tool_calls[0]["id"]
    assert reply.response_metadata["model_name"] == "hermes"


def test_langchain_bind_tools_stream_reassembles_a_required_call(llm: ChatOpenAI) -> None:
    # LangChain's tool_choice "any" is OpenAI's "required".
    bound = llm.bind_tools([GetWeather, Calculate], tool_choice="any", parallel_tool_calls=False)
    chunks = list(bound.stream(QUESTION))
    assert len(chunks) > 2 and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk  # type: ignore[assignment]
    assert not whole.invalid_tool_calls, whole.invalid_tool_calls
    assert len(whole.tool_calls) == 1
    check_call(whole.tool_calls[0]["name"], whole.tool_calls[0]["args"])


def test_langchain_bind_tools_with_auto_choice_gives_a_well_formed_answer(llm: ChatOpenAI) -> None:
    # No tool_choice: "auto". The noise model usually answers in text; either way the answer is well-formed.
    reply = llm.bind_tools([GetWeather, Calculate]).invoke(QUESTION, max_tokens=48)
    assert isinstance(reply, AIMessage)
    assert isinstance(reply.content, str)
    for call in reply.tool_calls:
        check_call(call["name"], call["args"])


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_langchain_structured_output_in_json_schema_mode(llm: ChatOpenAI, model: str) -> None:
    structured = llm.model_copy(update={"model_name": model}).with_structured_output(Forecast, method="json_schema")
    forecast = structured.invoke("Give me the forecast for Rome.")
    assert isinstance(forecast, Forecast)


# ---- the openai SDK ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_sdk_required_tool_choice_gives_well_formed_calls_on_every_chat_model(
    client: openai.OpenAI, model: str
) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=SDK_TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=CALL_TOKENS,
    )
    assert reply.model == model
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id and calls[0].type == "function"
    check_call(calls[0].function.name, calls[0].function.arguments)  # type: ignore[union-attr]
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_sdk_named_function_is_the_one_called(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="phi3",
        messages=QUESTION,  # type: ignore[arg-type]
        tools=SDK_TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "Calculate"}},
        max_tokens=CALL_TOKENS,
    )
    calls = reply.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ["Calculate"]  # type: ignore[union-attr]
    assert isinstance(check_call("Calculate", calls[0].function.arguments), Calculate)  # type: ignore[union-attr]


def test_sdk_streamed_tool_call_deltas_reassemble_into_a_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="openchat",
        messages=QUESTION,  # type: ignore[arg-type]
        tools=SDK_TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        max_tokens=CALL_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    usage = None
    deltas = 0
    for chunk in stream:
        assert chunk.model == "openchat"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                deltas += 1
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert deltas > 2, "the arguments arrive in pieces"
    assert list(calls) == [0] and calls[0]["id"] and calls[0]["name"] == "GetWeather"
    assert isinstance(check_call("GetWeather", calls[0]["arguments"]), GetWeather)
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_sdk_parse_gives_the_response_format_as_a_model(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Give me the forecast for Paris."}],
        response_format=Forecast,
        max_tokens=128,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(reply.choices[0].message.parsed, Forecast)


def test_sdk_tool_results_go_back_to_the_model(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="mixtral",
        messages=QUESTION,  # type: ignore[arg-type]
        tools=SDK_TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        max_tokens=CALL_TOKENS,
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    follow_up = client.chat.completions.create(
        model="mixtral",
        messages=[
            *QUESTION,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "4 degrees, cloudy"},
        ],  # type: ignore[list-item]
        tools=SDK_TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        max_tokens=16,
    )
    assert follow_up.choices[0].message.content is not None and not follow_up.choices[0].message.tool_calls


# ---- vLLM's extras, and what stays refused ---------------------------------------------------------------


def test_vllm_sampling_extras_and_structured_outputs_reach_the_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="hermes",
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=40,
        extra_body={
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.2,
            "min_tokens": 30,
            "stop_token_ids": [4],
            "skip_special_tokens": True,
        },
    )
    assert reply.usage is not None and reply.usage.completion_tokens >= 30  # min_tokens: no stop before 30
    chosen = client.chat.completions.create(
        model="phi3",
        messages=[{"role": "user", "content": "Yes or no?"}],
        max_tokens=8,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert chosen.choices[0].message.content in ("yes", "no")


def test_tool_calls_through_the_raw_api_keep_the_requested_name_and_refuse_media(gateway_url: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    media = {
        "model": "hermes",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/"}}]}
        ],
    }
    refused = httpx.post(f"{gateway_url}/v1/chat/completions", json=media, headers=headers, timeout=60)
    assert refused.status_code == 400 and "image_url" in refused.json()["error"]["message"]
    # A server-side chat template from the request is not forwarded: the answer is the model's own.
    body = {
        "model": "phi3",
        "messages": QUESTION,
        "tools": SDK_TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": CALL_TOKENS,
        "chat_template": "{{ raise_exception('a request may not bring its own template') }}",
    }
    answer = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "phi3"
    call = answer.json()["choices"][0]["message"]["tool_calls"][0]
    check_call(call["function"]["name"], call["function"]["arguments"])
