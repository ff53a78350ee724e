"""Schemas from signatures and docstrings, compared with hand-written ChatGLM3 JSON."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import typing
from typing import Annotated, Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field
from typing_extensions import NotRequired, TypedDict

from glm_agent import Tool, ToolDefinitionError, ToolRegistry, tool
from tests._data import GOLDEN


# -- types used in signatures (module level, so string annotations resolve) ------------------
class Passenger(TypedDict):
    name: str
    age: NotRequired[Annotated[int, Field(ge=0)]]


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Size(str, enum.Enum):
    """Shirt sizes."""

    S = "s"
    M = "m"


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


class Address(BaseModel):
    """A postal address."""

    street: str = Field(description="Street and number")
    city: str


class Node(BaseModel):
    value: int
    children: list[Node] = []


def schema_of(fn: Any) -> dict[str, Any]:
    return tool(fn).chatglm3_schema()


# -- the shape ChatGLM3 was tuned on -------------------------------------------------------------
def book_flight(
    passengers: list[Passenger], date: datetime.date, flexible: bool = False, budget: float | None = None
) -> str:
    """Book a flight.

    Returns a confirmation code.
    """
    return "ABC123"


BOOK_FLIGHT = {
    "name": "book_flight",
    "description": "Book a flight.\nReturns a confirmation code.",
    "parameters": {
        "type": "object",
        "properties": {
            "passengers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
                    "required": ["name"],
                },
            },
            "date": {"type": "string", "format": "date"},
            "flexible": {"type": "boolean", "default": False},
            "budget": {"type": ["number", "null"]},
        },
        "required": ["passengers", "date"],
    },
}


def test_book_flight_schema_is_the_tuned_shape_byte_for_byte() -> None:
    schema = schema_of(book_flight)
    assert schema == BOOK_FLIGHT
    # Key order matters: the schema is dumped into the prompt as JSON.
    assert json.dumps(schema) == json.dumps(BOOK_FLIGHT)


def test_book_flight_schema_matches_golden_prompt() -> None:
    golden = GOLDEN / "responses.json"
    if not golden.is_file():
        pytest.skip(f"ChatGLM3 reference data not found at {golden} (../shared/chatglm3 is absent)")
    cases = json.loads(golden.read_text(encoding="utf-8"))
    tools = [t for case in cases for m in case["history"] for t in (m.get("tools") or []) if t["name"] == "book_flight"]
    assert tools, "golden responses have no book_flight tool"
    assert json.dumps(schema_of(book_flight), indent=4, ensure_ascii=False) == json.dumps(
        tools[0], indent=4, ensure_ascii=False
    )


def get_weather(city_name: Annotated[str, "The name of the city to be queried", True]) -> str:
    """Get the current weather for `city_name`"""
    return city_name


def test_official_chatglm3_demo_convention() -> None:
    assert schema_of(get_weather) == {
        "name": "get_weather",
        "description": "Get the current weather for `city_name`",
        "parameters": {
            "type": "object",
            "properties": {"city_name": {"type": "string", "description": "The name of the city to be queried"}},
            "required": ["city_name"],
        },
    }


def test_required_flag_wins_over_a_python_default() -> None:
    def f(x: Annotated[int, "a number", True] = 3) -> int:
        return x

    t = tool(f)
    assert t.parameters == {
        "type": "object",
        "properties": {"x": {"type": "integer", "description": "a number"}},
        "required": ["x"],
    }


def test_optional_flag_with_default() -> None:
    def f(x: Annotated[int, "a number", False] = 3) -> int:
        return x

    assert tool(f).parameters["required"] == []
    assert tool(f).parameters["properties"]["x"] == {"type": "integer", "description": "a number", "default": 3}


# -- every supported type ------------------------------------------------------------------------
def scalars(s: str, i: int, f: float, b: bool, n: None, a: Any) -> None:
    """Scalars."""


def test_scalar_types() -> None:
    assert tool(scalars).parameters == {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "f": {"type": "number"},
            "b": {"type": "boolean"},
            "n": {"type": "null"},
            "a": {},
        },
        "required": ["s", "i", "f", "b", "n", "a"],
    }


def unions(
    o: int | None,
    u: int | str,
    p: int | None = None,
    lit: Literal["celsius", "fahrenheit"] = "celsius",
    one: Literal["x"] = "x",
    nums: Literal[1, 2, 3] = 1,
) -> None:
    """Unions."""


def test_optional_union_and_literal() -> None:
    assert tool(unions).parameters == {
        "type": "object",
        "properties": {
            "o": {"type": ["integer", "null"]},
            "u": {"type": ["integer", "string"]},
            "p": {"type": ["integer", "null"]},
            "lit": {"type": "string", "default": "celsius", "enum": ["celsius", "fahrenheit"]},
            "one": {"type": "string", "default": "x", "enum": ["x"]},
            "nums": {"type": "integer", "default": 1, "enum": [1, 2, 3]},
        },
        "required": ["o", "u"],
    }


def enums(color: Color, size: Size = Size.M) -> None:
    """Enums."""


def test_enums() -> None:
    assert tool(enums).parameters == {
        "type": "object",
        "properties": {
            "color": {"type": "string", "enum": ["red", "green"]},
            "size": {"type": "string", "description": "Shirt sizes.", "enum": ["s", "m"], "default": "m"},
        },
        "required": ["color"],
    }


def containers(
    names: list[str],
    pair: tuple[int, str],
    many: tuple[float, ...],
    tags: set[str],
    counts: dict[str, int],
    grid: list[list[int]] = [],  # noqa: B006 - a default shown in the schema
) -> None:
    """Containers."""


def test_containers_with_parameters() -> None:
    assert tool(containers).parameters == {
        "type": "object",
        "properties": {
            "names": {"type": "array", "items": {"type": "string"}},
            "pair": {
                "type": "array",
                "maxItems": 2,
                "minItems": 2,
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
            },
            "many": {"type": "array", "items": {"type": "number"}},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "grid": {"type": "array", "default": [], "items": {"type": "array", "items": {"type": "integer"}}},
        },
        "required": ["names", "pair", "many", "tags", "counts"],
    }


def structured(point: Point, address: Address, shipping: Address | None = None) -> None:
    """Structured."""


ADDRESS = {
    "type": "object",
    "description": "A postal address.",
    "properties": {"street": {"type": "string", "description": "Street and number"}, "city": {"type": "string"}},
    "required": ["street", "city"],
}


def test_dataclass_and_pydantic_model_are_inlined() -> None:
    params = tool(structured).parameters
    assert params == {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "number"}, "y": {"type": "number", "default": 0.0}},
                "required": ["x"],
            },
            "address": ADDRESS,
            "shipping": {"anyOf": [ADDRESS, {"type": "null"}]},
        },
        "required": ["point", "address"],
    }
    text = json.dumps(params)
    assert "$ref" not in text and "$defs" not in text and '"title"' not in text


def described(
    a: Annotated[int, Field(description="from Field", ge=1)],
    b: Annotated[str, "from Annotated"],
    c: Annotated[Color, Field(description="a colour")] = Color.RED,
) -> None:
    """Described.

    Args:
        a: from the docstring, overridden
        b: from the docstring, overridden
        c: from the docstring, overridden
    """


def test_annotated_descriptions_win_over_docstring() -> None:
    assert tool(described).parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "from Field", "minimum": 1},
            "b": {"type": "string", "description": "from Annotated"},
            "c": {"type": "string", "description": "a colour", "enum": ["red", "green"], "default": "red"},
        },
        "required": ["a", "b"],
    }


def test_a_property_named_title_is_kept() -> None:
    def note(title: str, description: str = "") -> None:
        """Make a note."""

    assert tool(note).parameters == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "description": {"type": "string", "default": ""}},
        "required": ["title"],
    }


# -- docstring styles -------------------------------------------------------------------------------
def google(city: str, days: int = 1) -> None:
    """Get a forecast.

    Covers the next days.

    Args:
        city: The city name.
        days: How many days.
    """


def numpy(city: str, days: int = 1) -> None:
    """Get a forecast.

    Covers the next days.

    Parameters
    ----------
    city : str
        The city name.
    days : int
        How many days.
    """


def rest(city: str, days: int = 1) -> None:
    """Get a forecast.

    Covers the next days.

    :param city: The city name.
    :param days: How many days.
    """


def epydoc(city: str, days: int = 1) -> None:
    """Get a forecast.

    Covers the next days.

    @param city: The city name.
    @param days: How many days.
    """


@pytest.mark.parametrize("fn", [google, numpy, rest, epydoc], ids=lambda f: f.__name__)
def test_docstring_styles(fn: Any) -> None:
    schema = schema_of(fn)
    assert schema["description"] == "Get a forecast.\nCovers the next days."
    assert schema["parameters"] == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city name."},
            "days": {"type": "integer", "description": "How many days.", "default": 1},
        },
        "required": ["city"],
    }


def test_missing_docstring_gives_empty_description() -> None:
    def bare(x: int) -> int:
        return x

    assert schema_of(bare) == {
        "name": "bare",
        "description": "",
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
    }


def test_no_parameters() -> None:
    def ping() -> str:
        """Ping."""
        return "pong"

    assert schema_of(ping)["parameters"] == {"type": "object", "properties": {}, "required": []}


# -- ways of defining a tool -------------------------------------------------------------------------
def test_decorator_forms_and_openai_shape() -> None:
    @tool
    def plain(x: int) -> int:
        """Double."""
        return 2 * x

    @tool(name="triple-it", description="Triple a number.", timeout=2)
    def other(x: int) -> int:
        return 3 * x

    assert isinstance(plain, Tool) and plain.name == "plain" and plain(4) == 8
    assert other.name == "triple-it" and other.description == "Triple a number." and other.timeout == 2
    assert other(2) == 6 and other.__wrapped__.__name__ == "other"
    assert other.openai_schema() == {
        "type": "function",
        "function": {
            "name": "triple-it",
            "description": "Triple a number.",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        },
    }
    made = Tool.from_function(plain.function, name="dbl")
    assert made.name == "dbl" and made.parameters == plain.parameters


def test_registry_register_and_schemas() -> None:
    registry = ToolRegistry()

    @registry.register
    def first(a: str) -> str:
        """First."""
        return a

    async def second(b: int = 0) -> int:
        """Second."""
        return b

    t2 = registry.register(second, timeout=1.5)
    assert isinstance(first, Tool) and t2.is_async and t2.timeout == 1.5 and not first.is_async
    assert registry.names == ["first", "second"] and "first" in registry and len(registry) == 2
    assert [t.name for t in registry] == ["first", "second"]
    assert registry.chatglm3_schemas() == [first.chatglm3_schema(), t2.chatglm3_schema()]
    assert registry.openai_schemas()[1] == {"type": "function", "function": t2.chatglm3_schema()}
    with pytest.raises(ToolDefinitionError, match="already registered"):
        registry.register(first.function)
    registry.register(first.function, description="replaced", replace=True)
    assert registry["first"].description == "replaced"
    assert registry.remove("second") is t2 and registry.get("second") is None
    with pytest.raises(KeyError, match="registered tools: first"):
        registry.remove("second")
    with pytest.raises(KeyError, match="no tool named 'x'"):
        registry["x"]


# -- definition errors ----------------------------------------------------------------------------
def untyped(city, days: int = 1):  # type: ignore[no-untyped-def]
    return city


def test_untyped_parameter_is_a_clear_error() -> None:
    with pytest.raises(ToolDefinitionError, match=r"parameter 'city' of untyped has no type hint"):
        tool(untyped)


def test_definition_errors_name_function_and_parameter() -> None:
    def star(*items: int) -> None: ...

    def kw(**options: int) -> None: ...

    def not_required(x: Annotated[int, "x", False]) -> None: ...

    def recursive(tree: Node) -> None: ...

    with pytest.raises(ToolDefinitionError, match=r"'items' of .*star is \*args"):
        tool(star)
    with pytest.raises(ToolDefinitionError, match=r"'options' of .*kw is \*args/\*\*kwargs"):
        tool(kw)
    with pytest.raises(ToolDefinitionError, match=r"'x' of .*not_required is marked not required .* no default"):
        tool(not_required)
    with pytest.raises(ToolDefinitionError, match=r"parameter 'tree' of .*recursive: type 'Node' refers to itself"):
        tool(recursive)
    with pytest.raises(ToolDefinitionError, match=r"tool name '<lambda>' .* not usable"):
        tool(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ToolDefinitionError, match=r"reserved for the code interpreter"):
        tool(name="interpreter")(scalars)
    with pytest.raises(ToolDefinitionError, match=r"timeout must be a positive"):
        tool(timeout=0)(scalars)


class _Opaque:
    pass


def opaque(thing: _Opaque) -> None:
    """Takes an arbitrary class."""


def unresolved(x: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
    """Forward reference that never resolves."""


def test_unsupported_and_unresolved_types() -> None:
    with pytest.raises(ToolDefinitionError, match=r"opaque.*parameter 'thing'"):
        tool(opaque)
    with pytest.raises(ToolDefinitionError, match=r"cannot resolve the type hints of unresolved.*NotDefinedAnywhere"):
        tool(unresolved)


# -- the schemas are valid JSON Schema and agree with validation -----------------------------------
@pytest.mark.parametrize("fn", [book_flight, scalars, unions, enums, containers, structured, described])
def test_schemas_are_valid_json_schema(fn: Any) -> None:
    jsonschema.Draft202012Validator.check_schema(tool(fn).parameters)


def test_json_schema_and_pydantic_agree() -> None:
    t = tool(book_flight)
    validator = jsonschema.Draft202012Validator(t.parameters, format_checker=jsonschema.FormatChecker())
    good = {"passengers": [{"name": "Ann", "age": 30}], "date": "2024-05-01", "budget": None}
    bad = [
        {"passengers": [{"age": 30}], "date": "2024-05-01"},
        {"passengers": [{"name": "Ann", "age": -1}], "date": "2024-05-01"},
        {"passengers": [], "date": "not a date"},
        {"date": "2024-05-01"},
    ]
    assert validator.is_valid(good)
    t.validate_arguments(good)
    for case in bad:
        assert not validator.is_valid(case), case
        with pytest.raises(ValueError):
            t.validate_arguments(case)


# -- end to end: registry schemas in a prompt give the official token ids ---------------------------------
@tool
def track(symbol: Annotated[Any, "需要追踪的股票代码"] = None) -> str:
    """追踪指定股票的实时价格"""
    return str(symbol)


@tool(name="text-to-speech")
def text_to_speech(
    text: Annotated[Any, "需要转换成语音的文本"] = None,
    voice: Annotated[Any, "要使用的语音类型（男声、女声等）"] = None,
    speed: Annotated[Any, "语音的速度（快、中等、慢等）"] = None,
) -> str:
    """将文本转换为语音"""
    return ""


@tool
def get_current_weather(
    location: Annotated[str, "The city and state, e.g. San Francisco, CA"],
    unit: Literal["celsius", "fahrenheit"] = None,  # type: ignore[assignment]  # noqa: RUF013 (the official schema has no null)
) -> str:
    """Get the current weather in a given location"""
    return location


@pytest.mark.parametrize(
    ("case_id", "tools"),
    [
        ("chat-021", [track, text_to_speech]),
        ("chat-022", [get_current_weather]),
        ("chat-023", [tool(book_flight)]),
        ("chat-029", [get_current_weather]),
    ],
)
def test_registry_schemas_reproduce_the_official_prompt_tokens(tokenizer: Any, case_id: str, tools: list[Tool]) -> None:
    cases = {c["id"]: c for c in json.loads((GOLDEN / "tokens.json").read_text(encoding="utf-8"))}
    case = cases[case_id]
    messages = [dict(m) for m in case["messages"]]
    assert messages[0]["role"] == "system"
    messages[0]["tools"] = ToolRegistry(tools).chatglm3_schemas()
    assert tokenizer.apply_chat_template(messages) == case["input_ids"]


class PlainPoint(typing.TypedDict):  # typing's, not typing_extensions': pydantic refuses it before 3.12
    """A point."""

    x: int
    y: int


class PlainBox(typing.TypedDict, total=False):
    corner: PlainPoint
    label: str


def test_typing_typeddict_works_on_every_supported_python():
    @tool
    def area(
        p: PlainPoint, boxes: list[PlainBox] | None = None, note: Annotated[PlainPoint | None, "optional"] = None
    ) -> int:
        """Uses points.

        Args:
            p: the point
            boxes: some boxes
            note: maybe a point
        """
        return p["x"] * p["y"] + len(boxes or [])

    registry = ToolRegistry([area])
    assert registry.call("area", {"p": {"x": "2", "y": 3}, "boxes": [{"label": "a"}]}).observation == "7"
    missing = registry.call("area", {"p": {"x": 1}})
    assert not missing.ok and "p.y" in missing.observation
    schema = registry.chatglm3_schemas()[0]["parameters"]["properties"]
    assert schema["p"]["required"] == ["x", "y"] and "required" not in schema["boxes"]["anyOf"][0]["items"]
