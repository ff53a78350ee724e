"""Cost of calling a tool through ToolRegistry, against calling the function directly (same process).

Prints one JSON object: microseconds per operation and ratios to the direct call.
Run: python benchmarks/bench_tool_calls.py
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable
from typing import Any

from typing_extensions import NotRequired, TypedDict

from glm_agent import Tool, ToolRegistry


class Passenger(TypedDict):
    name: str
    age: NotRequired[int]


def book_flight(
    passengers: list[Passenger], date: datetime.date, flexible: bool = False, budget: float | None = None
) -> dict[str, Any]:
    """Book a flight."""
    return {"code": "ABC123", "passengers": len(passengers), "date": date.isoformat()}


async def book_flight_async(
    passengers: list[Passenger], date: datetime.date, flexible: bool = False, budget: float | None = None
) -> dict[str, Any]:
    """Book a flight."""
    return {"code": "ABC123", "passengers": len(passengers), "date": date.isoformat()}


ARGS = {"passengers": [{"name": "Ann", "age": "30"}], "date": "2024-05-01", "budget": None}
TYPED = {"passengers": [{"name": "Ann", "age": 30}], "date": datetime.date(2024, 5, 1), "budget": None}


def per_call_us(fn: Callable[[], Any], seconds: float = 0.3) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            fn()
        n += 50
    return (time.perf_counter() - start) / n * 1e6


async def per_acall_us(make: Callable[[], Any], seconds: float = 0.3) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            await make()
        n += 20
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    sync_tool = Tool(book_flight)
    async_tool = Tool(book_flight_async)
    registry = ToolRegistry([sync_tool, async_tool])
    timed = ToolRegistry([Tool(book_flight, name="timed", timeout=5)])
    results: dict[str, float] = {
        "direct_call_us": per_call_us(lambda: book_flight(**TYPED)),
        "define_tool_us": per_call_us(lambda: Tool(book_flight), seconds=0.5),
        "validate_arguments_us": per_call_us(lambda: sync_tool.validate_arguments(ARGS)),
        "registry_call_us": per_call_us(lambda: registry.call("book_flight", ARGS)),
        "registry_call_with_timeout_us": per_call_us(lambda: timed.call("timed", ARGS)),
    }

    async def run_async() -> None:
        results["direct_await_us"] = await per_acall_us(lambda: book_flight_async(**TYPED))
        results["acall_async_tool_us"] = await per_acall_us(lambda: registry.acall("book_flight_async", ARGS))
        results["acall_sync_tool_us"] = await per_acall_us(lambda: registry.acall("book_flight", ARGS))

    asyncio.run(run_async())
    ok = registry.call("book_flight", ARGS).ok
    report: dict[str, Any] = {"benchmark": "tool_calls", "ok": ok}
    report.update({k: round(v, 2) for k, v in results.items()})
    base = results["direct_call_us"]
    report["ratio_registry_call_to_direct"] = round(results["registry_call_us"] / base, 1)
    report["ratio_call_with_timeout_to_call"] = round(
        results["registry_call_with_timeout_us"] / results["registry_call_us"], 2
    )
    report["ratio_acall_async_to_direct_await"] = round(results["acall_async_tool_us"] / results["direct_await_us"], 1)
    report["ratio_acall_sync_to_call"] = round(results["acall_sync_tool_us"] / results["registry_call_us"], 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
