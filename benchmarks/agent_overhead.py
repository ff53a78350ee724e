"""Framework time per agent step, without model and tool time (target: under 1 ms).

One episode: 9 tool-call turns and a final answer (10 steps) with the scripted model and a
trivial tool. In the same run we time the scripted model streaming the same replies alone
and the bare tool function called directly; the overhead is what is left per step.
Prints one JSON object.

``--trace``: the cost of tracing, episodes interleaved in one process: ``off`` (the run's trace
replaced by one that does nothing: the code without telemetry), ``api`` (opentelemetry-api with
no SDK, the default) and ``sdk`` (the SDK's tracer provider with a batch span processor, its
exporter dropping the spans). Targets: sdk adds at most 0.2 ms a step; api adds nothing measurable.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time

from glm_agent import Agent, tool
from glm_agent.models import ScriptedModel

STEPS = 10
EPISODES = 200


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: first
        b: second
    """
    return a + b


REPLIES = ["add\n ```python\ntool_call(a=1, b=2)\n```"] * (STEPS - 1) + ["\n The sum is 3."]


def episode_agent() -> float:
    agent = Agent(ScriptedModel(REPLIES, chunk_size=4), tools=[add], max_steps=STEPS)
    t = time.perf_counter()
    result = agent.run("add 1 and 2, nine times")
    elapsed = time.perf_counter() - t
    assert result.answer == "The sum is 3." and result.steps == STEPS
    return elapsed


def episode_model_alone() -> float:
    model = ScriptedModel(REPLIES, chunk_size=4)
    messages = [*Agent(ScriptedModel([]), tools=[add]).messages, {"role": "user", "content": "x"}]
    t = time.perf_counter()
    for _ in range(STEPS):
        for _delta in model.stream(messages):
            pass
    return time.perf_counter() - t


def episode_tool_alone() -> float:
    fn = add.function
    t = time.perf_counter()
    for _ in range(STEPS - 1):
        fn(a=1, b=2)
    return time.perf_counter() - t


class _NoTrace:
    """What a run's trace would be without telemetry: no spans, nothing current."""

    recording = False
    current = None

    def __init__(self, **_: object) -> None:
        self.text, self.stream, self.model_object = "", None, None

    def end(self, **_: object) -> None:
        return None

    def active(self, span: object = None) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


def main_trace() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    import glm_agent.agent as agent_module
    from glm_agent.telemetry import _spans

    class Drop(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    sdk_tracer = provider.get_tracer("glm_agent")
    real_trace, api_tracer = agent_module.RunTrace, _spans.tracer()

    def configure(mode: str) -> None:
        agent_module.RunTrace = _NoTrace if mode == "off" else real_trace  # type: ignore[misc]
        _spans._tracer = sdk_tracer if mode == "sdk" else api_tracer

    modes = ("off", "api", "sdk")
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(20):
        for mode in modes:
            configure(mode)
            episode_agent()
    for _ in range(EPISODES):
        for mode in modes:
            configure(mode)
            times[mode].append(episode_agent())
    configure("api")
    provider.shutdown()
    median = {m: statistics.median(t) / STEPS * 1e3 for m, t in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "agent_overhead --trace",
                "ms_per_step": {m: round(v, 4) for m, v in median.items()},
                "api_added_ms_per_step": round(median["api"] - median["off"], 4),
                "sdk_added_ms_per_step": round(median["sdk"] - median["off"], 4),
                "api_ratio": round(median["api"] / median["off"], 3),
                "target_sdk_added_ms": 0.2,
                "steps_per_episode": STEPS,
                "episodes": EPISODES,
            }
        )
    )


def main() -> None:
    if "--trace" in sys.argv[1:]:
        main_trace()
        return
    for _ in range(20):  # warm up imports and caches
        episode_agent()
    agent, model, tools = [], [], []
    for _ in range(EPISODES):
        agent.append(episode_agent())
        model.append(episode_model_alone())
        tools.append(episode_tool_alone())
    agent_s, model_s, tool_s = (statistics.median(x) for x in (agent, model, tools))
    overhead = (agent_s - model_s - tool_s) / STEPS
    print(
        json.dumps(
            {
                "overhead_ms_per_step": round(overhead * 1e3, 4),
                "agent_ms_per_step": round(agent_s / STEPS * 1e3, 4),
                "model_ms_per_step": round(model_s / STEPS * 1e3, 4),
                "tool_ms_per_step": round(tool_s / STEPS * 1e3, 5),
                "steps_per_episode": STEPS,
                "episodes": EPISODES,
                "target_ms": 1.0,
            }
        )
    )


if __name__ == "__main__":
    main()
