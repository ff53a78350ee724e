"""Calling tools through a ToolRegistry: validation, coercion, failures, timeouts, observations."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from glm_agent import ObservationMessage, ToolRegistry, ToolResult, tool
from glm_agent.tools import ToolArgumentsError


@tool
def add(a: int, b: int = 0) -> int:
    """Add two numbers."""
    return a + b


@tool
def span(bounds: tuple[int, int], label: str = "") -> dict[str, Any]:
    """Describe a range."""
    assert isinstance(bounds, tuple)
    return {"low": bounds[0], "high": bounds[1], "label": label}


@tool
def fail(message: str) -> str:
    """Always fails."""
    raise ValueError(message)


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([add, span, fail])


# -- validation ---------------------------------------------------------------------------------------
def test_coercion_string_to_int_and_list_to_tuple(registry: ToolRegistry) -> None:
    result = registry.call("add", {"a": "3", "b": 4})
    assert result.ok and result.value == 7 and result.observation == "7" and result.error is None
    result = registry.call("span", {"bounds": [1, "9"], "label": 5})
    assert result.ok and result.value == {"low": 1, "high": 9, "label": "5"}
    assert json.loads(result.observation) == {"low": 1, "high": 9, "label": "5"}
    assert result.arguments == {"bounds": [1, "9"], "label": 5}


def test_wrong_type_names_the_argument(registry: ToolRegistry) -> None:
    result = registry.call("add", {"a": "three"})
    assert not result.ok and result.error == "invalid_arguments"
    assert result.observation.splitlines()[0] == "Error: invalid arguments for tool 'add':"
    assert "- a: Input should be a valid integer" in result.observation
    assert "(got 'three'); expected integer" in result.observation
    assert "Call add again with corrected arguments." in result.observation
    assert isinstance(result.exception, ToolArgumentsError)
    assert [p.argument for p in result.exception.problems] == ["a"]


def test_missing_required_argument(registry: ToolRegistry) -> None:
    result = registry.call("add", {"b": 1})
    assert result.error == "invalid_arguments"
    assert "- a: required argument is missing; expected integer" in result.observation


def test_extra_argument_lists_the_parameters(registry: ToolRegistry) -> None:
    result = registry.call("add", {"a": 1, "c": 2})
    assert result.error == "invalid_arguments"
    assert "- c: unexpected argument; this tool takes a, b" in result.observation


def test_every_problem_is_reported_at_once(registry: ToolRegistry) -> None:
    result = registry.call("span", {"bounds": [1], "colour": "red"})
    lines = result.observation.splitlines()
    assert any(line.startswith("- colour: unexpected argument") for line in lines)
    assert any(line.startswith("- bounds") for line in lines)


def test_arguments_that_are_not_a_mapping(registry: ToolRegistry) -> None:
    result = registry.call("add", [1, 2])  # type: ignore[arg-type]
    assert result.error == "invalid_arguments"
    assert "expected keyword arguments, got list" in result.observation
    assert registry.call("span", None).error == "invalid_arguments"


def test_omitted_arguments_keep_the_python_default() -> None:
    seen: list[Any] = []

    @tool
    def record(items: list[int] | None = None, flag: bool = True) -> str:
        seen.append((items, flag))
        return "ok"

    assert ToolRegistry([record]).call("record", {}).ok
    assert seen == [(None, True)]


def test_official_convention_tool_works_unchanged() -> None:
    @tool
    def random_number_generator(
        seed: Annotated[int, "The random seed used by the generator", True],
        range: Annotated[tuple[int, int], "The range of the generated numbers", True],
    ) -> int:
        """Generates a random number x, s.t. range[0] <= x < range[1]"""
        import random

        return random.Random(seed).randint(*range)

    registry = ToolRegistry([random_number_generator])
    # The model writes Python literals: a tuple here, parsed with ast by the reply parser.
    first = registry.call("random_number_generator", {"seed": 7, "range": (1, 100)})
    again = registry.call("random_number_generator", {"seed": "7", "range": [1, 100]})
    assert first.ok and again.ok and first.value == again.value and 1 <= first.value <= 100


# -- failures ---------------------------------------------------------------------------------------------
def test_unknown_tool_lists_available_tools(registry: ToolRegistry) -> None:
    result = registry.call(" get_weather ", {"city": "Beijing"})
    assert not result.ok and result.error == "unknown_tool" and result.name == "get_weather"
    assert result.observation == (
        "Error: there is no tool named 'get_weather'. Available tools: add, span, fail. "
        "Call one of them by its exact name, or answer without a tool."
    )
    assert registry.call("add", {"a": 1}).ok


def test_exception_becomes_failed_result_and_registry_stays_usable(registry: ToolRegistry) -> None:
    result = registry.call("fail", {"message": "the disk is full"})
    assert not result.ok and result.error == "exception"
    assert result.observation == "Error: tool 'fail' failed with ValueError: the disk is full"
    assert isinstance(result.exception, ValueError)
    assert registry.call("add", {"a": 2, "b": 2}).value == 4


def test_system_exit_in_a_tool_does_not_end_the_run() -> None:
    @tool
    def quit_now() -> None:
        raise SystemExit(3)

    result = ToolRegistry([quit_now]).call("quit_now", {})
    assert result.error == "exception" and "SystemExit: 3" in result.observation


def test_sync_timeout_abandons_the_call() -> None:
    release = threading.Event()
    finished = threading.Event()

    @tool(timeout=0.2)
    def hang() -> str:
        release.wait(30)
        finished.set()
        return "late"

    registry = ToolRegistry([hang, add])
    try:
        result = registry.call("hang", {})
        assert not result.ok and result.error == "timeout"
        assert result.observation.startswith("Error: tool 'hang' did not finish within 0.2 s")
        assert not finished.is_set()
        assert registry.call("add", {"a": 1}).ok
    finally:
        release.set()
    assert finished.wait(10)


def test_a_tool_raising_timeout_error_is_an_exception_not_a_timeout() -> None:
    @tool(timeout=5)
    def socket_timeout() -> None:
        raise TimeoutError("the server did not answer")

    result = ToolRegistry([socket_timeout]).call("socket_timeout", {})
    assert result.error == "exception" and "TimeoutError: the server did not answer" in result.observation


def test_registry_default_timeout_and_call_override() -> None:
    release = threading.Event()

    @tool
    def wait_a_bit() -> str:
        release.wait(30)
        return "done"

    registry = ToolRegistry([wait_a_bit], default_timeout=0.1)
    try:
        assert registry.call("wait_a_bit", {}).error == "timeout"
        assert "within 0.05 s" in registry.call("wait_a_bit", {}, timeout=0.05).observation
    finally:
        release.set()
    assert registry.call("wait_a_bit", {}, timeout=10).observation == "done"


# -- async ------------------------------------------------------------------------------------------------
async def test_acall_runs_async_tools_on_the_loop() -> None:
    loop = asyncio.get_running_loop()

    @tool
    async def where() -> bool:
        return asyncio.get_running_loop() is loop

    result = await ToolRegistry([where]).acall("where", {})
    assert result.ok and result.value is True


async def test_acall_async_timeout_cancels_the_coroutine() -> None:
    cancelled = asyncio.Event()

    @tool(timeout=0.1)
    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    result = await ToolRegistry([slow]).acall("slow", {})
    assert result.error == "timeout"
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_sync_tool_does_not_block_the_event_loop() -> None:
    """The sync tool waits for an event that only a coroutine on the loop can set."""
    ready = threading.Event()

    @tool(timeout=10)
    def wait_for_loop() -> str:
        return "loop ran" if ready.wait(10) else "loop was blocked"

    async def set_soon() -> None:
        await asyncio.sleep(0.05)
        ready.set()

    result, _ = await asyncio.gather(ToolRegistry([wait_for_loop]).acall("wait_for_loop", {}), set_soon())
    assert result.ok and result.value == "loop ran"


async def test_acall_sync_timeout_and_failures() -> None:
    release = threading.Event()

    @tool(timeout=0.1)
    def stuck() -> None:
        release.wait(30)

    registry = ToolRegistry([stuck, fail, add])
    try:
        assert (await registry.acall("stuck", {})).error == "timeout"
    finally:
        release.set()
    assert (await registry.acall("fail", {"message": "x"})).error == "exception"
    assert (await registry.acall("nope", {})).error == "unknown_tool"
    assert (await registry.acall("add", {"a": "x"})).error == "invalid_arguments"
    assert (await registry.acall("add", {"a": "2"})).value == 2


def test_sync_call_of_an_async_tool() -> None:
    @tool
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @tool(timeout=0.1)
    async def forever() -> None:
        await asyncio.sleep(30)

    registry = ToolRegistry([double, forever])
    assert registry.call("double", {"x": "21"}).value == 42
    assert registry.call("forever", {}).error == "timeout"


async def test_sync_call_of_an_async_tool_inside_a_running_loop() -> None:
    @tool
    async def double(x: int) -> int:
        return 2 * x

    assert ToolRegistry([double]).call("double", {"x": 4}).value == 8


# -- observations ---------------------------------------------------------------------------------------
class Forecast(BaseModel):
    city: str
    temperature: float = Field(description="°C")


@dataclasses.dataclass
class Reading:
    sensor: str
    values: list[int]


def _value_tool(value: Any) -> ToolRegistry:
    @tool
    def give() -> Any:
        return value

    return ToolRegistry([give])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain text, as is", "plain text, as is"),
        ({"city": "北京", "temp": 21.5}, '{"city": "北京", "temp": 21.5}'),
        ([1, "二", None, True], '[1, "二", null, true]'),
        (Forecast(city="上海", temperature=18), '{"city": "上海", "temperature": 18.0}'),
        (Reading("t1", [1, 2]), '{"sensor": "t1", "values": [1, 2]}'),
        (None, "null"),
        (3.5, "3.5"),
        ((1, 2), "[1, 2]"),
    ],
)
def test_values_become_observation_text(value: Any, text: str) -> None:
    result = _value_tool(value).call("give", {})
    assert result.ok and result.observation == text and result.value is value


def test_bytes_are_saved_to_a_file(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20

    @tool
    def chart() -> bytes:
        return png

    result = ToolRegistry([chart], output_dir=tmp_path / "out").call("chart", {})
    assert result.ok and len(result.files) == 1
    path = result.files[0]
    assert path.parent == tmp_path / "out" and path.suffix == ".png" and path.read_bytes() == png
    assert result.observation == f"[28 bytes saved to {path}]"


def test_bytes_default_output_dir_is_made_lazily() -> None:
    registry = _value_tool(b"raw")
    assert registry._output_dir is None
    result = registry.call("give", {})
    assert result.files[0].read_bytes() == b"raw" and result.files[0].suffix == ".bin"
    assert result.files[0].parent == registry.output_dir


def test_pil_image_is_saved_as_png(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    image = image_module.new("RGB", (4, 3), "red")
    result = ToolRegistry([tool(lambda: image, name="draw")], output_dir=tmp_path).call("draw", {})
    assert result.ok and result.observation.startswith("[Image 4x3 saved to ")
    with image_module.open(result.files[0]) as saved:
        assert saved.size == (4, 3) and saved.format == "PNG"


def test_long_results_are_truncated_with_a_marker() -> None:
    registry = _value_tool("x" * 50)
    registry.max_observation_chars = 10
    result = registry.call("give", {})
    assert result.truncated and result.full_text == "x" * 50
    assert result.observation == "x" * 10 + "\n[... truncated: showing the first 10 of 50 characters ...]"
    registry.max_observation_chars = None
    assert registry.call("give", {}).observation == "x" * 50
    assert not ToolRegistry(list(registry), max_observation_chars=100).call("give", {}).truncated


def test_result_to_message_and_bad_settings() -> None:
    result = _value_tool("hi").call("give", {})
    assert isinstance(result, ToolResult) and result.elapsed_s >= 0 and result.full_text == "hi"
    assert result.to_message() == ObservationMessage(content="hi")
    with pytest.raises(ValueError, match="max_observation_chars"):
        ToolRegistry(max_observation_chars=0)
    with pytest.raises(ValueError, match="default_timeout"):
        ToolRegistry(default_timeout=-1)
