"""The agent with a real Jupyter kernel, and with a real local model (the tiny checkpoint)."""

from __future__ import annotations

import asyncio
import json

import nbformat
import pytest

from glm_agent import Agent, tool
from glm_agent import events as ev
from glm_agent.interpreter import CodeInterpreter, conversation_to_notebook
from glm_agent.messages import ObservationMessage, load_jsonl
from glm_agent.models import ScriptedModel
from tests._data import TINY_CHECKPOINT, needs_shared
from tests._helpers import wait_until, wait_until_async


def code(src: str) -> str:
    return f"interpreter\n ```python\n{src}\n```"


PLOT = code(
    "import matplotlib.pyplot as plt\n"
    "xs = list(range(10))\n"
    "plt.plot(xs, [x * x for x in xs])\n"
    "plt.title('squares')\n"
    "print('mean', sum(xs) / len(xs))"
)


@pytest.mark.kernel
def test_code_episode_with_image_error_recovery_and_notebook(tmp_path):
    model = ScriptedModel(
        [
            "\n I'll compute it.<|assistant|>" + PLOT,
            code("1 / 0"),
            code("print(undefined_name if False else 'fixed')"),
            "\n The mean is 4.5; the plot shows the squares.",
        ]
    )
    with Agent(model, code_interpreter=True) as agent:
        result = agent.run("Plot squares and give the mean")
        finished = [e for e in result.events if isinstance(e, ev.CodeFinished)]
        assert len(finished) == 3
        first, failed, fixed = finished
        assert first.ok and "mean 4.5" in first.observation and "[Image]" in first.observation
        assert first.images and all(p.is_file() and p.suffix == ".png" for p in first.images)
        assert not failed.ok and "ZeroDivisionError" in failed.observation and "\x1b[" not in failed.observation
        assert fixed.ok and "fixed" in fixed.observation
        assert result.answer.startswith("The mean is 4.5") and result.images == first.images
        assert [e.type for e in result.events].count("code_started") == 3
        # the observation is what the model read next
        assert model.prompts[1][-1] == ObservationMessage(content=first.observation)

        notebook_path = agent.save_notebook(tmp_path / "session.ipynb")
        nb = nbformat.read(str(notebook_path), as_version=4)
        nbformat.validate(nb)
        code_cells = [c for c in nb.cells if c.cell_type == "code"]
        assert len(code_cells) == 3 and "plt.plot" in code_cells[0].source
        assert any("image/png" in o.get("data", {}) for o in code_cells[0].outputs)
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "Plot squares" in markdown and "The mean is 4.5" in markdown

        session = agent.save(tmp_path / "session.jsonl")
    # a saved session alone (no kernel) still exports: observations become the cell outputs
    offline = conversation_to_notebook(load_jsonl(session), tmp_path / "offline.ipynb")
    nb2 = nbformat.read(str(offline), as_version=4)
    nbformat.validate(nb2)
    assert sum(c.cell_type == "code" for c in nb2.cells) == 3


@pytest.mark.kernel
def test_state_persists_across_turns_and_runs():
    model = ScriptedModel([code("x = 41"), "\n set", code("print(x + 1)"), "\n 42"])
    with Agent(model, code_interpreter=True) as agent:
        agent.run("set x")
        result = agent.run("print x + 1")
        assert "42" in result.calls[0].observation


@pytest.mark.kernel
def test_uploaded_files_are_announced_and_reachable(tmp_path):
    data = tmp_path / "numbers.csv"
    data.write_text("a\n1\n2\n3\n", encoding="utf-8")
    model = ScriptedModel([code("print(open('/mnt/data/numbers.csv').read().split())"), "\n three numbers"])
    with Agent(model, code_interpreter=True) as agent:
        result = agent.run("what is in the file?", files=[data])
        user = result.messages[0]
        assert user.content.startswith("#File: /mnt/data/numbers.csv\n#Size: 8\n#File uploaded\n")
        assert "'1', '2', '3'" in result.calls[0].observation


SLEEPER = "open('started', 'w').close()\nimport time\ntime.sleep(60)"  # the marker file: the sleep has begun


@pytest.mark.kernel
def test_cancelling_while_code_runs_interrupts_the_kernel_and_keeps_state():
    async def go():
        model = ScriptedModel([code("y = 7"), "\n ok", code(SLEEPER), code("print(y)"), "\n 7"])
        interpreter = CodeInterpreter(timeout=120)
        try:
            agent = Agent(model, code_interpreter=interpreter)
            await agent.arun("set y")
            task = asyncio.ensure_future(agent.arun("sleep"))
            await wait_until_async(lambda: (interpreter.workspace / "started").exists() or task.done())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert agent.messages[-1] == ObservationMessage(content="Cancelled by the user before it finished.")
            result = await agent.arun("print y")
            return result
        finally:
            interpreter.close()

    result = asyncio.run(go())
    assert result.answer == "7" and "7" in result.calls[0].observation


@needs_shared
@pytest.mark.slow
def test_local_model_episode_on_the_tiny_checkpoint_holds_together(tokenizer):
    from glm_agent.models import LocalModel

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    model = LocalModel.from_pretrained(TINY_CHECKPOINT, dtype="float32")
    agent = Agent(model, tools=[lookup], max_steps=3, generation={"max_new_tokens": 12, "temperature": 0})
    result = agent.run("look up 'a'")
    # random weights write random text: the loop must still end cleanly, with a consistent history
    assert result.stopped in ("answer", "max_steps") and 1 <= result.steps <= 3
    ids = tokenizer.apply_chat_template(agent.messages, add_generation_prompt=False)
    assert ids[:2] == [tokenizer.gmask_id, tokenizer.sop_id]
    json.dumps([e.to_dict() for e in result.events])


@pytest.mark.kernel
def test_agent_cancel_interrupts_running_code_and_the_kernel_keeps_its_state():
    from concurrent.futures import ThreadPoolExecutor

    model = ScriptedModel([code("y = 7\n" + SLEEPER), code("print(y)"), "\n 7"])
    with CodeInterpreter(timeout=120) as interpreter:
        agent = Agent(model, code_interpreter=interpreter)
        marker = interpreter.workspace / "started"
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(agent.run, "sleep")
            wait_until(lambda: marker.exists() or future.done())
            agent.cancel()
            result = future.result(60)
        assert result.stopped == "cancelled"
        assert "KeyboardInterrupt" in result.calls[0].observation and not result.calls[0].ok
        assert agent.run("print y").answer == "7"


@pytest.mark.kernel
def test_a_cancel_that_lands_just_before_the_cell_starts_still_interrupts_it():
    """The race: cancel() after the agent marked code as running, before the kernel began the cell.

    The first interrupt reaches an idle kernel and is lost; cancel() repeats it while the code runs.
    """
    model = ScriptedModel([code("import time\ntime.sleep(60)\nprint('slept', 'through')"), "\n done"])
    with CodeInterpreter(timeout=120) as interpreter:
        agent = Agent(model, code_interpreter=interpreter)
        real_run = interpreter.run

        def cancel_then_run(src: str, *args, **kwargs):
            agent.cancel()  # the interrupt goes to an idle kernel: lost
            return real_run(src, *args, **kwargs)

        interpreter.run = cancel_then_run  # type: ignore[method-assign]
        result = agent.run("sleep")
        assert result.stopped == "cancelled"
        observation = result.calls[0].observation
        assert "KeyboardInterrupt" in observation and "slept through" not in observation
        del interpreter.run
        assert agent.run("again").stopped == "answer"


@pytest.mark.kernel
def test_files_the_code_wrote_are_host_paths_in_the_result():
    model = ScriptedModel([code("open('/mnt/data/out.csv', 'w').write('a,b\\n1,2\\n')\nprint('written')"), "\n Saved."])
    with Agent(model, code_interpreter=True) as agent:
        result = agent.run("save a csv")
        (written,) = [p for p in result.files if p.name == "out.csv"]
        assert written.is_absolute() and written.read_text() == "a,b\n1,2\n"  # the sandbox's /mnt/data/out.csv, here
        assert written.parent == agent.interpreter.workspace
