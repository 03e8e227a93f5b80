"""Tool calling, structured outputs and the text content of chat messages: typed, bounded request models.

What reaches vLLM is only what is declared here. JSON schemas (a tool's `parameters`, `response_format`'s
`json_schema.schema`, `structured_outputs.json`) are free-form by nature, so they are typed as JSON values and
bounded in size and depth, and may only refer to themselves (`$ref` to `#...`): a schema never names a file or
a URL for anything to read. Content parts other than text (images, audio, files: URLs or data the model server
would fetch or decode) are refused with a 400.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)

from .common import WIRE_CONFIG

# OpenAI's limits: at most 128 tools, names of a-z, A-Z, 0-9, '_' and '-' up to 64 characters.
MAX_TOOLS = 128
MAX_TOOL_CALLS = 128
MAX_DESCRIPTION_CHARS = 8_192
# One JSON schema, serialized compactly; and how deeply it may nest (objects and arrays).
MAX_SCHEMA_BYTES = 32_768
MAX_SCHEMA_DEPTH = 32
MAX_ARGUMENTS_CHARS = 65_536
MAX_REGEX_CHARS = 4_096
MAX_GRAMMAR_CHARS = 16_384
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1_024
# A counted repetition in a regex ({n} or {n,m}) is expanded by the grammar compiler: bounded like the schema.
MAX_REGEX_REPEAT = 10_000

FunctionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)]

_REPEAT = re.compile(r"(?<!\\)\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _depth(value: Any) -> int:
    """How deeply a JSON value nests (iterative: a hostile schema cannot exhaust the stack here)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node)
    return deepest


def _foreign_ref(value: Any) -> str | None:
    """The first `$ref` that does not point inside the schema itself (`#...`), if any."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
                return str(ref)[:200]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _bounded_schema(schema: dict[str, JsonValue]) -> dict[str, JsonValue]:
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        size = len(orjson.dumps(schema))
    except orjson.JSONEncodeError:  # an integer past 64 bits: JSON may carry it, no model server reads it
        raise ValueError("a number in the JSON schema is out of range (integers must fit in 64 bits)") from None
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"the JSON schema is {size} bytes, above the limit of {MAX_SCHEMA_BYTES}")
    ref = _foreign_ref(schema)
    if ref is not None:
        raise ValueError(f"'$ref' may only point inside the schema ('#/...'), not to {ref!r}")
    return schema


def _bounded_regex(pattern: str) -> str:
    for match in _REPEAT.finditer(pattern):
        for number in match.groups():
            if number and int(number) > MAX_REGEX_REPEAT:
                raise ValueError(f"a counted repetition above {MAX_REGEX_REPEAT} is not allowed")
    return pattern


Regex = Annotated[str, Field(min_length=1, max_length=MAX_REGEX_CHARS), AfterValidator(_bounded_regex)]
# A JSON schema as JSON values (objects, arrays, strings, numbers, booleans, null), bounded.
JsonSchema = Annotated[dict[str, JsonValue], AfterValidator(_bounded_schema)]


# --- Tools ------------------------------------------------------------------------------------------------


class FunctionDefinition(BaseModel):
    model_config = WIRE_CONFIG

    name: FunctionName
    description: Description | None = None
    parameters: JsonSchema | None = None
    # With the models file's servers every tool's arguments follow its schema (--tool-strict-level parameter).
    strict: bool | None = None


class ChatTool(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = WIRE_CONFIG

    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(BaseModel):
    model_config = WIRE_CONFIG

    name: FunctionName
    # The arguments as the model wrote them: JSON text (not parsed here: it is the model's own output).
    arguments: Annotated[str, Field(max_length=MAX_ARGUMENTS_CHARS)]


class ToolCall(BaseModel):
    """A tool call of an earlier assistant message, sent back with the conversation."""

    model_config = WIRE_CONFIG

    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"]
    function: ToolCallFunction


# --- Message content --------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["text"]
    text: str


class RefusalPart(BaseModel):
    """An assistant's refusal, sent back with the conversation (its text is the content)."""

    model_config = WIRE_CONFIG

    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
_PART_TYPES = ("text", "refusal")


def _text_parts_only(value: Any) -> Any:
    """Refuse non-text parts (image_url, input_audio, file, video_url, ...) by name, before type checks."""
    if isinstance(value, list):
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind not in _PART_TYPES:
                raise ValueError(
                    f"content parts of type {kind[:64]!r} are not supported: the models here read text only, "
                    "and the gateway does not let the model server fetch or decode URLs, files or media"
                )
    return value


MessageContent = Annotated[str | list[ContentPart], BeforeValidator(_text_parts_only)]


# --- Structured outputs -----------------------------------------------------------------------------------


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, serialize_by_alias=True, validate_by_name=False)

    name: FunctionName
    description: Description | None = None
    # `schema` would shadow a BaseModel attribute: stored as schema_, read and written as "schema".
    schema_: JsonSchema = Field(alias="schema")
    strict: bool | None = None


class TextResponseFormat(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["text"]


class JsonObjectResponseFormat(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["json_object"]


class JsonSchemaResponseFormat(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


# vLLM's `structural_tag` formats are not declared: they are refused (400), like any other type.
ResponseFormat = Annotated[
    TextResponseFormat | JsonObjectResponseFormat | JsonSchemaResponseFormat, Field(discriminator="type")
]


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (the successor of its guided_* fields): exactly one constraint.

    Declared: json, regex, choice, grammar (EBNF, as vLLM's backends read it), json_object, and
    disable_any_whitespace. Not declared, so dropped: structural_tag, whitespace_pattern and the backend options.
    """

    model_config = ConfigDict(extra="ignore", strict=True, serialize_by_alias=True, validate_by_name=False)

    # `json` would shadow a BaseModel method: stored as json_, read and written as "json".
    json_: JsonSchema | None = Field(None, alias="json")
    regex: Regex | None = None
    choice: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_CHOICE_CHARS)]],
            Field(min_length=1, max_length=MAX_CHOICES),
        ]
        | None
    ) = None
    grammar: Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)] | None = None
    json_object: Literal[True] | None = None
    disable_any_whitespace: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [
            name for name in ("json", "regex", "choice", "grammar", "json_object") if self._value(name) is not None
        ]
        if len(given) != 1:
            found = ", ".join(given) or "none"
            raise ValueError(f"give exactly one of json, regex, choice, grammar or json_object (found: {found})")
        return self

    def _value(self, name: str) -> Any:
        return self.json_ if name == "json" else getattr(self, name)


def tools_problem(tools: list[ChatTool] | None, tool_choice: ToolChoice | None) -> tuple[str, str] | None:
    """The first inconsistency between `tools` and `tool_choice`, as (param, message); None when they agree."""
    names = [tool.function.name for tool in tools or []]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        return "tools", f"two tools are named '{duplicate}'; tool names must be unique"
    if tool_choice is None or tool_choice == "none":
        return None
    if not names:
        return "tool_choice", "'tool_choice' needs 'tools'"
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        return "tool_choice", f"'tool_choice' names the function '{tool_choice.function.name}', which is not in 'tools'"
    return None
