"""ChatGLM3's official default system prompts and the file-upload header (exact text), and their inverses."""

from __future__ import annotations

from typing import Any

from glm_agent.messages import SystemMessage

__all__ = [
    "CHAT_SYSTEM",
    "TOOLS_SYSTEM",
    "CODE_SYSTEM_ZH",
    "CODE_SYSTEM_EN",
    "MNT_DATA",
    "variable_header",
    "code_system_prompt",
    "build_system_message",
    "upload_header",
    "strip_upload_headers",
]

#: where uploaded files are, as the model is told (the official prompts and upload header say so)
MNT_DATA = "/mnt/data"

CHAT_SYSTEM = (
    "You are ChatGLM3, a large language model trained by Zhipu.AI. "
    "Follow the user's instructions carefully. Respond using markdown."
)
TOOLS_SYSTEM = "Answer the following questions as best as you can. You have access to the following tools:"
CODE_SYSTEM_ZH = (
    "你是一位智能AI助手，你叫ChatGLM3，你连接着一台电脑，但请注意不能联网。在使用Python解决任务时，"
    "你可以运行代码并得到结果，如果运行结果有错误，你需要尽可能对代码进行改进。"
    "你可以处理用户上传到电脑上的文件，文件默认存储路径是/mnt/data/。"
)
CODE_SYSTEM_EN = (
    "You are an intelligent AI assistant, named ChatGLM3. You are connected to a computer, but please note "
    "that you cannot connect to the internet. When using Python to solve tasks, you can run the code and get "
    "the results. If there are errors in the running results, you need to improve the code as much as "
    "possible. You can process files uploaded by users to your computer, and the default storage path for "
    "files is /mnt/data/."
)


def code_system_prompt(language: str = "zh") -> str:
    """The code-interpreter system prompt (PROMPT.md, ``zh``; PROMPT_en.md, ``en``)."""
    if language not in ("zh", "en"):
        raise ValueError(f"language must be 'zh' or 'en', not {language!r}")
    return CODE_SYSTEM_ZH if language == "zh" else CODE_SYSTEM_EN


def upload_header(name: str, size: int) -> str:
    """The header ChatGLM3 expects before a user message that announces an uploaded file."""
    return f"#File: {MNT_DATA}/{name}\n#Size: {size}\n#File uploaded\n"


def variable_header(name: str, description: str) -> str:
    """The header before a user message that names a variable put into the code interpreter's kernel
    (the same shape as :func:`upload_header`'s for a file)."""
    return f"#Variable: {name}\n#Type: {description}\n#Variable loaded\n"


def strip_upload_headers(content: str) -> str:
    """A user message without the upload headers (:func:`upload_header`) before it: what the user typed."""
    lines = content.split("\n")
    while (
        len(lines) >= 3
        and lines[0].startswith(f"#File: {MNT_DATA}/")
        and lines[1].startswith("#Size: ")
        and lines[2] == "#File uploaded"
    ):
        lines = lines[3:]
    return "\n".join(lines)


def build_system_message(
    system: str | None, tools: list[dict[str, Any]] | None, code: bool, language: str = "zh"
) -> SystemMessage:
    """ChatGLM3's official system prompt for the mode, or the user's own text (never dropped).

    Tools mode: the tuned tools sentence with the schemas attached. Code mode: the PROMPT.md
    interpreter prompt (``zh`` or ``en``). Both: the interpreter prompt, then the tools sentence.
    Chat mode: the official chat prompt.
    """
    if system is None:
        if code and tools:
            system = code_system_prompt(language) + "\n" + TOOLS_SYSTEM
        elif code:
            system = code_system_prompt(language)
        elif tools:
            system = TOOLS_SYSTEM
        else:
            system = CHAT_SYSTEM
    return SystemMessage(content=system, tools=tools or None)
