"""The notebook's live display: what rendering a run in place costs, against the same run undisplayed.

A real Jupyter kernel (the notebook's) runs a scripted agent run of about 200 events: text
deltas (4 characters each, one per ``--chunk-ms``: a stand-in for decoding), 10 tool calls
(cards), 3 code calls in the sandbox that print 1,000 lines each. The same
run goes twice per round in that kernel, alternating: ``Agent.run`` alone (the baseline), then
with a :class:`~glm_agent.jupyter.LiveDisplay` taking every event and every line of live output.
This process counts the display messages that reach the frontend (``display_data`` and
``update_display_data`` on iopub). Prints one JSON object:

- ``render_overhead_ratio``: median displayed run time / median baseline run time (target <= 1.2);
- ``display_messages``: messages sent per displayed run (the throttle: ``--interval`` seconds);
- ``render_ms_per_event``: time spent in the display's own calls (render + send) per event.

    python benchmarks/notebook_render.py --rounds 5
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
import textwrap

from jupyter_client.manager import start_new_kernel

KERNEL_CODE = textwrap.dedent(
    """
    import json, time
    from glm_agent import Agent, tool
    from glm_agent.interpreter import CodeInterpreter
    from glm_agent.jupyter import LiveDisplay
    from glm_agent.jupyter._display import listening
    from glm_agent.models import ScriptedModel

    @tool
    def lookup(i: int) -> str:
        '''Look an item up.'''
        return f"item {i}: " + "details " * 20

    CODE = "for i in range(1000):\\n    print('line', i, 'of the output')"
    REPLIES = (
        [f"\\n Step {k}: looking it up.<|assistant|>lookup\\n ```python\\ntool_call(i={k})\\n```" for k in range(10)]
        + [f"interpreter\\n ```python\\n{CODE}\\n```" for _ in range(3)]
        + ["\\n " + "The answer is ready. " * 20]
    )

    class PacedScriptedModel(ScriptedModel):
        # the replies one chunk per CHUNK_S: a stand-in for decoding (labelled scripted: no model runs)

        def _chunks(self, reply):
            for chunk in super()._chunks(reply):
                time.sleep(CHUNK_S)
                yield chunk

    interpreter = CodeInterpreter()
    interpreter.run("1")  # the sandbox is warm before any timing

    def one_run(displayed, interval):
        agent = Agent(PacedScriptedModel(REPLIES, chunk_size=4, label="scripted:render-bench"), tools=[lookup], code_interpreter=interpreter, max_steps=20)
        spent = [0.0]
        view = LiveDisplay(interval=interval, rich=True) if displayed else None

        def timed(fn):
            def call(item):
                start = time.perf_counter()
                fn(item)
                spent[0] += time.perf_counter() - start
            return call

        start = time.perf_counter()
        if view is None:
            result = agent.run("Look up ten items, then run the code three times.")
        else:
            with listening(interpreter, type("V", (), {"output": staticmethod(timed(view.output))})()):
                result = agent.run("Look up ten items, then run the code three times.", on_event=timed(view.add))
            begin = time.perf_counter()
            view.close()
            spent[0] += time.perf_counter() - begin
        took = time.perf_counter() - start
        return {"seconds": took, "events": len(result.events), "render_s": spent[0], "updates": view.updates if view else 0}
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.2, help="LiveDisplay's throttle (seconds)")
    parser.add_argument(
        "--chunk-ms", type=float, default=10.0, help="pause per 4-character chunk: decoding's pace (default 10)"
    )
    args = parser.parse_args()
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        client.execute_interactive(KERNEL_CODE + f"\nCHUNK_S = {args.chunk_ms / 1000!r}", timeout=120)
        base, shown = [], []
        for _ in range(args.rounds):
            for displayed in (False, True):
                counted = {"display": 0}

                def count(msg, counted=counted):
                    if msg["msg_type"] in ("display_data", "update_display_data"):
                        counted["display"] += 1

                reply = client.execute_interactive(
                    f"_r = one_run({displayed}, {args.interval})",
                    user_expressions={"r": "json.dumps(_r)"},
                    output_hook=count,
                    timeout=600,
                )
                if reply["content"]["status"] != "ok":
                    raise SystemExit(f"the run failed in the kernel: {reply['content']}")
                run = json.loads(ast.literal_eval(reply["content"]["user_expressions"]["r"]["data"]["text/plain"]))
                run["display_messages"] = counted["display"]
                (shown if displayed else base).append(run)
        client.execute_interactive("interpreter.close()", timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    base_s = statistics.median(r["seconds"] for r in base)
    shown_s = statistics.median(r["seconds"] for r in shown)
    events = shown[0]["events"]
    print(
        json.dumps(
            {
                "benchmark": "notebook_render",
                "python": sys.version.split()[0],
                "rounds": args.rounds,
                "interval_s": args.interval,
                "chunk_ms": args.chunk_ms,
                "events_per_run": events,
                "baseline_run_s": round(base_s, 3),
                "displayed_run_s": round(shown_s, 3),
                "render_overhead_ratio": round(shown_s / base_s, 3),
                "display_messages": statistics.median(r["display_messages"] for r in shown),
                "display_updates_counted_in_kernel": statistics.median(r["updates"] for r in shown),
                "render_ms_per_event": round(1000 * statistics.median(r["render_s"] for r in shown) / events, 3),
                "baseline_display_messages": max(r["display_messages"] for r in base),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
