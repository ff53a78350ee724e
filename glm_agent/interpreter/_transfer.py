"""Values in and out of the sandboxed kernel in formats that cannot run code on the host.

In (:func:`put`): the host encodes a value (JSON, raw bytes, ``.npy`` without pickle, Arrow IPC
for DataFrames and Series), writes it through the kernel channel and has the kernel load it into a
variable. Out (:func:`get`): the kernel encodes a variable the same way (PNG for a matplotlib
figure) and sends it back in base64 pieces through ``user_expressions``; the host decodes it
with a decoder chosen from a fixed set. The kernel runs the model's code, so whatever it sends is
untrusted: its format tag only picks among these decoders, ``.npy`` is read with
``allow_pickle=False``, Arrow with pyarrow >= 14.0.1 (no pickled extension types), and nothing is
ever unpickled.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import keyword
import uuid
from dataclasses import dataclass
from typing import Any

from glm_agent.errors import InterpreterError
from glm_agent.interpreter._backend import KernelBackend
from glm_agent.interpreter._bootstrap import run_silent, silent_reply, write_file

__all__ = ["PNGImage", "put_value", "get_value", "list_variables", "describe", "check_name", "SUPPORTED"]

SUPPORTED = (
    "None, bool, int, float, str, lists and dicts of them (JSON), bytes, numpy arrays (not of objects), "
    "pandas DataFrames and Series (Arrow)"
)
_CHUNK = 1024 * 1024  # bytes per piece back from the kernel (base64 in one user expression)


@dataclass(frozen=True)
class PNGImage:
    """A figure brought back from the kernel as PNG bytes (shown as an image in a notebook)."""

    data: bytes

    def _repr_png_(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return f"PNGImage({len(self.data):,} bytes)"


def check_name(name: str) -> str:
    """A kernel variable name: an identifier, not a keyword, not dunder (names are put into code)."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("__"):
        raise InterpreterError(
            f"{name!r} is not a variable name to use in the kernel: use a plain identifier like 'df'"
        )
    return name


# -- host -> kernel ---------------------------------------------------------------------------------
def _is_json_like(value: Any, depth: int = 0) -> bool:
    if depth > 100:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_like(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_like(v, depth + 1) for k, v in value.items())
    return False


def _module_of(value: Any) -> str:
    return type(value).__module__.split(".", 1)[0]


def encode(value: Any) -> tuple[str, bytes]:
    """``(format, bytes)`` of a host value; ``TypeError`` for a type that has no safe format."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes", bytes(value)
    if _is_json_like(value):
        return "json", json.dumps(value, ensure_ascii=False).encode()
    module = _module_of(value)
    if module == "numpy":
        import numpy as np

        if isinstance(value, np.generic):
            return "json", json.dumps(value.item()).encode()
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TypeError("a numpy array of Python objects has no safe format; convert it (e.g. .astype(str))")
            buffer = io.BytesIO()
            np.save(buffer, value, allow_pickle=False)
            return "npy", buffer.getvalue()
    if module == "pandas":
        import pandas as pd

        if isinstance(value, (pd.DataFrame, pd.Series)):
            import pyarrow as pa

            frame = value if isinstance(value, pd.DataFrame) else value.to_frame()
            table = pa.Table.from_pandas(frame)
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            return ("arrow" if isinstance(value, pd.DataFrame) else "arrow-series"), sink.getvalue()
    raise TypeError(
        f"cannot put a {type(value).__module__}.{type(value).__qualname__} into the kernel; supported: {SUPPORTED}"
    )


def describe(value: Any) -> str:
    """A short description of a value for the model (type and shape, never its contents)."""
    module = _module_of(value)
    if module == "pandas" and hasattr(value, "shape"):
        if len(value.shape) == 2:
            columns = ", ".join(map(str, list(value.columns)[:20])) + (", ..." if value.shape[1] > 20 else "")
            return f"pandas DataFrame, {value.shape[0]} rows x {value.shape[1]} columns ({columns})"
        return f"pandas Series, {value.shape[0]} values, dtype {value.dtype}"
    if module == "numpy" and hasattr(value, "shape"):
        return f"numpy array, shape {tuple(value.shape)}, dtype {value.dtype}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"bytes, {len(bytes(value)):,} bytes"
    if isinstance(value, (list, tuple, dict, str)):
        return (
            f"{type(value).__name__}, {len(value):,} items"
            if not isinstance(value, str)
            else f"str, {len(value):,} characters"
        )
    return type(value).__name__


_LOAD = """
def __glm_agent_load(path, fmt):
    import os
    with open(path, "rb") as f:
        raw = f.read()
    os.unlink(path)
    if fmt == "json":
        import json
        return json.loads(raw)
    if fmt == "bytes":
        return raw
    if fmt == "npy":
        import io, numpy
        return numpy.load(io.BytesIO(raw), allow_pickle=False)
    import pyarrow
    frame = pyarrow.ipc.open_stream(raw).read_all().to_pandas()
    return frame if fmt == "arrow" else frame.iloc[:, 0]
"""


def put_value(backend: KernelBackend, name: str, value: Any, timeout: float) -> None:
    """Set ``name`` in the kernel to a copy of ``value`` (see :data:`SUPPORTED`)."""
    check_name(name)
    fmt, data = encode(value)
    path = f"{backend.kernel_workspace}/.glm_agent_put_{uuid.uuid4().hex}"
    write_file(backend, path, data, timeout)
    try:
        run_silent(backend, f"{_LOAD}\n{name} = __glm_agent_load({path!r}, {fmt!r})\ndel __glm_agent_load", timeout)
    except InterpreterError as exc:
        run_silent(backend, f"__import__('os').path.exists({path!r}) and __import__('os').unlink({path!r})", timeout)
        raise InterpreterError(f"could not load {name} in the kernel: {exc}") from exc


# -- kernel -> host ---------------------------------------------------------------------------------
_PACK = """
def __glm_agent_pack(value):
    import io, json
    kind = type(value).__module__.split(".")[0]
    if kind == "pandas" and type(value).__name__ in ("DataFrame", "Series"):
        import pyarrow
        frame = value if type(value).__name__ == "DataFrame" else value.to_frame()
        table = pyarrow.Table.from_pandas(frame)
        sink = io.BytesIO()
        with pyarrow.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return ("arrow" if type(value).__name__ == "DataFrame" else "arrow-series"), sink.getvalue()
    if kind == "numpy":
        import numpy
        if isinstance(value, numpy.generic):
            return "json", json.dumps(value.item()).encode()
        if isinstance(value, numpy.ndarray):
            if value.dtype.hasobject:
                raise TypeError("a numpy array of Python objects cannot leave the kernel; convert it first")
            buffer = io.BytesIO()
            numpy.save(buffer, value, allow_pickle=False)
            return "npy", buffer.getvalue()
    if kind == "matplotlib" and hasattr(value, "savefig"):
        buffer = io.BytesIO()
        value.savefig(buffer, format="png")
        return "png", buffer.getvalue()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes", bytes(value)
    try:
        return "json", json.dumps(value, ensure_ascii=False, allow_nan=True).encode()
    except (TypeError, ValueError, RecursionError):
        raise TypeError(
            f"cannot bring back a {type(value).__module__}.{type(value).__qualname__}: supported are JSON values, "
            "bytes, numpy arrays, pandas DataFrames and Series, matplotlib figures"
        ) from None
"""


def _evaluate(backend: KernelBackend, code: str, expression: str, timeout: float) -> str:
    """Run ``code`` silently, then evaluate ``expression``; its ``text/plain`` (a repr) or an ``InterpreterError``."""
    content = silent_reply(backend, code, timeout, user_expressions={"value": expression})
    if content.get("status") != "ok":
        raise InterpreterError(f"{content.get('ename')}: {content.get('evalue')}")
    result = (content.get("user_expressions") or {}).get("value") or {}
    if result.get("status") != "ok":
        raise InterpreterError(f"{result.get('ename')}: {result.get('evalue')}")
    text = (result.get("data") or {}).get("text/plain")
    if not isinstance(text, str):
        raise InterpreterError("the kernel sent no value back")
    return text


def _literal(text: str, kind: type) -> Any:
    try:
        value = ast.literal_eval(text)  # a repr the kernel wrote: read as a literal, never evaluated
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise InterpreterError("the kernel sent back something that is not a value") from exc
    if not isinstance(value, kind):
        raise InterpreterError("the kernel sent back something that is not a value")
    return value


def get_value(backend: KernelBackend, name: str, timeout: float, max_bytes: int) -> Any:
    """A copy of the kernel's variable ``name`` (see the module's docstring for the formats)."""
    check_name(name)
    token = f"__glm_agent_out_{uuid.uuid4().hex}"
    code = (
        f"{_PACK}\ntry:\n    {token} = __glm_agent_pack({name})\nfinally:\n    del __glm_agent_pack\n"
        f"{token} = ({token}[0], __import__('base64').b64encode({token}[1]).decode('ascii'))"
    )
    try:
        header = _literal(_evaluate(backend, code, f"({token}[0], len({token}[1]))", timeout), tuple)
        if len(header) != 2 or not isinstance(header[0], str) or not isinstance(header[1], int):
            raise InterpreterError("the kernel sent back something that is not a value")
        fmt, size = header
        if size > max_bytes * 4 // 3 + 4:
            raise InterpreterError(f"{name} is {size * 3 // 4:,} bytes encoded, over max_bytes={max_bytes:,}")
        pieces = []
        step = _CHUNK * 4 // 3
        for start in range(0, size, step):
            piece = _literal(_evaluate(backend, "", f"{token}[1][{start}:{start + step}]", timeout), str)
            pieces.append(piece)
    except InterpreterError as exc:
        raise InterpreterError(f"could not get {name} from the kernel: {exc}") from exc
    finally:
        try:
            run_silent(backend, f"globals().pop({token!r}, None)", timeout)
        except InterpreterError:
            pass
    try:
        raw = base64.b64decode("".join(pieces), validate=True)
    except ValueError as exc:
        raise InterpreterError(f"could not get {name}: the kernel sent bad base64") from exc
    return decode(fmt, raw, name)


def decode(fmt: str, raw: bytes, name: str = "the value") -> Any:
    """A value from what the kernel sent, by one of the fixed safe decoders (never pickle)."""
    try:
        if fmt == "json":
            return json.loads(raw)
        if fmt == "bytes":
            return raw
        if fmt == "png":
            if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
                raise ValueError("not a PNG image")
            return PNGImage(raw)
        if fmt == "npy":
            import numpy as np

            return np.load(io.BytesIO(raw), allow_pickle=False)
        if fmt in ("arrow", "arrow-series"):
            import pyarrow as pa

            frame = pa.ipc.open_stream(raw).read_all().to_pandas()
            return frame if fmt == "arrow" else frame.iloc[:, 0]
    except ImportError as exc:
        raise InterpreterError(
            f"cannot read {name}: {exc.name} is not installed (pip install 'glm-agent[jupyter]')"
        ) from exc
    except Exception as exc:
        raise InterpreterError(f"could not read {name} from the kernel ({fmt}): {exc}") from exc
    raise InterpreterError(f"could not read {name}: the kernel sent an unknown format {fmt[:40]!r}")


_VARIABLES = (
    "{k: type(v).__module__ + '.' + type(v).__qualname__ for k, v in list(globals().items()) "
    "if not k.startswith('_') and k not in ('In', 'Out', 'exit', 'quit', 'get_ipython') "
    "and type(v).__name__ not in ('module', 'function', 'type', 'builtin_function_or_method')}"
)


def list_variables(backend: KernelBackend, timeout: float) -> dict[str, str]:
    """The kernel's variables (not modules, functions or classes): name -> type name."""
    found = _literal(_evaluate(backend, "", _VARIABLES, timeout), dict)
    return {str(k): str(v) for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}
