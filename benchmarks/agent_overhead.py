"""Framework time per agent step, without model and tool time (target: under 1 ms).

One episode: 9 tool-call turns and a final answer (10 steps) with the scripted model and a
trivial tool. In the same run we time the scripted model streaming the same replies alone
and the bare tool function called directly; the overhead is what is left per step.
Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
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


def main() -> None:
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
