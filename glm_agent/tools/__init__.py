"""Tools from plain Python functions: ``@tool``, ``Tool``, ``ToolRegistry``, ``ToolResult``.

```python
from typing import Annotated, Literal
from glm_agent import tool, ToolRegistry

@tool
def get_weather(city: Annotated[str, "The city"], unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    \"\"\"Get the current weather in a city.\"\"\"
    ...

registry = ToolRegistry([get_weather])
registry.chatglm3_schemas()                  # for SystemMessage(tools=...)
result = registry.call("get_weather", {"city": "Beijing"})
result.observation                           # the text the model reads
```
"""

from __future__ import annotations

from glm_agent.tools._loading import load_module_tools
from glm_agent.tools._output import Attachment, OutputPart, ToolOutput
from glm_agent.tools._registry import ToolRegistry, load_tools
from glm_agent.tools._result import ToolResult
from glm_agent.tools._runner import ToolTimeout
from glm_agent.tools._schema_tool import SchemaTool
from glm_agent.tools._tool import ArgumentProblem, Tool, ToolArgumentsError, tool
from glm_agent.tools._toolset import PREFIX_SEPARATOR, Toolset, check_prefix, prefixed_name

__all__ = [
    "tool",
    "Tool",
    "ToolRegistry",
    "ToolResult",
    "ToolArgumentsError",
    "ArgumentProblem",
    "load_tools",
    "load_module_tools",
    "SchemaTool",
    "ToolOutput",
    "Attachment",
    "OutputPart",
    "Toolset",
    "ToolTimeout",
    "prefixed_name",
    "check_prefix",
    "PREFIX_SEPARATOR",
]
