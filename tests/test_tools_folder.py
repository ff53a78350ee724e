"""The ready-made tools in tools/: loading by path, valid schemas, and each tool's behaviour."""

from __future__ import annotations

import ast
import http.server
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from glm_agent import Tool, ToolDefinitionError, ToolRegistry
from glm_agent.cli import main
from glm_agent.tools import load_module_tools, load_tools
from tests._data import REPO, TOOLS

MODULES = sorted(p for p in TOOLS.glob("*.py") if not p.name.startswith("_"))


def module_of(name: str) -> Any:
    """Load tools/<name>.py by path, the way a user does, and return its module."""
    tools = load_module_tools(TOOLS / f"{name}.py")
    return sys.modules[tools[0].function.__module__]


# -- loading ------------------------------------------------------------------------------------------------
def test_every_module_loads_by_path_with_valid_schemas() -> None:
    assert {p.stem for p in MODULES} >= {"weather", "calculator", "files", "web", "clock", "dice"}
    for path in MODULES:
        tools = load_module_tools(path)
        assert tools, path
        for t in tools:
            jsonschema.Draft202012Validator.check_schema(t.parameters)
            schema = t.chatglm3_schema()
            assert list(schema) == ["name", "description", "parameters"] and schema["description"], t.name
            assert list(schema["parameters"]) == ["type", "properties", "required"]
            assert "$ref" not in json.dumps(schema)


def test_folder_loads_into_one_registry() -> None:
    registry = load_tools(TOOLS)
    assert set(registry.names) == {
        "calculate",
        "current_time",
        "convert_time",
        "random_number_generator",
        "roll_dice",
        "random_choice",
        "list_files",
        "read_file",
        "write_file",
        "get_weather",
        "fetch_url",
    }
    for entry in registry.openai_schemas():
        assert entry["type"] == "function"
        jsonschema.Draft202012Validator.check_schema(entry["function"]["parameters"])


def test_tool_modules_use_only_the_public_api() -> None:
    for path in MODULES:
        source = path.read_text(encoding="utf-8")
        assert "eval(" not in source and "exec(" not in source, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("glm_agent"):
                assert node.module == "glm_agent", f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("glm_agent") for a in node.names), path


def test_library_code_has_no_eval() -> None:
    for path in (REPO / "glm_agent" / "tools").glob("*.py"):
        assert "eval(" not in path.read_text(encoding="utf-8"), path


def test_loading_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "syntax.py").write_text("def broken(:\n", encoding="utf-8")
    (tmp_path / "imports.py").write_text("import a_module_that_does_not_exist_here\n", encoding="utf-8")
    (tmp_path / "empty.py").write_text("X = 1\n", encoding="utf-8")
    (tmp_path / "untyped.py").write_text(
        "from glm_agent import tool\n@tool\ndef f(x):\n    return x\n", encoding="utf-8"
    )
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    cases = {
        tmp_path / "missing.py": "no such file or folder",
        tmp_path / "syntax.py": "syntax error at line 1",
        tmp_path / "imports.py": "ModuleNotFoundError: No module named 'a_module_that_does_not_exist_here'",
        tmp_path / "empty.py": "no tools found in",
        tmp_path / "untyped.py": "parameter 'x' of f has no type hint",
        tmp_path / "notes.txt": "expected a .py file",
        "no_such_module_anywhere": "no such file, folder or importable module",
    }
    for source, message in cases.items():
        with pytest.raises(ToolDefinitionError, match="cannot load tools|no tools found") as info:
            load_module_tools(source)
        assert message in str(info.value), (source, str(info.value))
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(ToolDefinitionError, match="no tools found in folder"):
        load_tools(empty_dir)


def test_module_path_all_and_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "my_tools_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "greet.py").write_text(
        "from glm_agent import tool\n"
        "__all__ = ['hello']\n"
        "@tool\ndef hello(name: str) -> str:\n    '''Greet.'''\n    return 'hi ' + name\n"
        "@tool\ndef hidden() -> str:\n    return 'not exported'\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_tools("my_tools_pkg.greet")
    assert registry.names == ["hello"]
    assert registry.call("hello", {"name": "Ann"}).observation == "hi Ann"
    with pytest.raises(ToolDefinitionError, match="a tool named 'hello' is already registered"):
        load_tools(["my_tools_pkg.greet", package / "greet.py"])
    registry.load(package / "greet.py", replace=True)
    assert registry.names == ["hello"]
    for name in [n for n in sys.modules if n.startswith("my_tools_pkg")]:
        monkeypatch.delitem(sys.modules, name)


# -- the command ------------------------------------------------------------------------------------------
def test_cli_prints_schemas(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tools", str(TOOLS / "calculator.py")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in out] == ["calculate"]
    assert main(["tools", str(TOOLS / "clock.py"), str(TOOLS / "dice.py"), "--format", "openai"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["function"]["name"] for t in out] == [
        "current_time",
        "convert_time",
        "random_number_generator",
        "roll_dice",
        "random_choice",
    ]


def test_cli_errors_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom at import')\n", encoding="utf-8")
    assert main(["tools", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"glm-agent tools: error: cannot load tools from {bad}: RuntimeError: boom at import"
    ]


# -- calculator ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calc() -> ToolRegistry:
    return ToolRegistry(load_module_tools(TOOLS / "calculator.py"))


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 10", 1024),
        ("2^10", 1024),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("sqrt(16) + abs(-2)", 6),
        ("round(pi, 3)", 3.142),
        ("max(1, 5, 3)", 5),
        ("factorial(5)", 120),
        ("3 × 4 ÷ 2", 6),
        ("1e3 + 0.5", 1000.5),
    ],
)
def test_calculator_values(calc: ToolRegistry, expression: str, value: float) -> None:
    result = calc.call("calculate", {"expression": expression})
    assert result.ok and result.value == value, result.observation


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "only the listed functions can be called"),
        ("round(x=1)", "only the listed functions can be called"),
        ("(1).__class__", "Attribute is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 3", "only numbers are allowed"),
        ("9 ** 9 ** 9", "too large to compute"),
        ("factorial(100000)", "limited to n <= 1000"),
        ("1 / 0", "division by zero"),
        ("(-8) ** 0.5", "complex number"),
        ("1 +", "not a valid arithmetic expression"),
        ("lambda: 1", "Lambda is not allowed"),
        ("", "the expression is empty"),
        ("1+" * 600 + "1", "longer than 1000 characters"),
    ],
)
def test_calculator_refusals(calc: ToolRegistry, expression: str, message: str) -> None:
    result = calc.call("calculate", {"expression": expression})
    assert result.error == "exception" and message in result.observation, result.observation


# -- clock and dice ----------------------------------------------------------------------------------------------
def test_clock() -> None:
    registry = ToolRegistry(load_module_tools(TOOLS / "clock.py"))
    now = registry.call("current_time", {"time_zone": "Asia/Shanghai"})
    assert now.ok and now.value["time_zone"] == "Asia/Shanghai" and now.value["utc_offset"] == "+0800"
    assert registry.call("current_time", {}).value["time_zone"] == "UTC"
    converted = registry.call(
        "convert_time", {"time": "2024-01-15T09:30", "from_zone": "Asia/Shanghai", "to_zone": "America/New_York"}
    )
    assert converted.value["iso"] == "2024-01-14T20:30:00-05:00" and converted.value["weekday"] == "Sunday"
    bad_zone = registry.call("current_time", {"time_zone": "Mars/Olympus"})
    assert (
        bad_zone.error == "exception" and "unknown time zone 'Mars/Olympus'; use an IANA name" in bad_zone.observation
    )
    bad_time = registry.call("convert_time", {"time": "tomorrow", "from_zone": "UTC", "to_zone": "UTC"})
    assert "cannot read 'tomorrow' as a date and time" in bad_time.observation


def test_dice() -> None:
    registry = ToolRegistry(load_module_tools(TOOLS / "dice.py"))
    first = registry.call("random_number_generator", {"seed": 42, "range": (10, 20)})
    assert first.ok and 10 <= first.value < 20
    assert registry.call("random_number_generator", {"seed": 42, "range": [10, 20]}).value == first.value
    assert "low < high" in registry.call("random_number_generator", {"seed": 1, "range": (5, 5)}).observation
    rolled = registry.call("roll_dice", {"count": 3, "sides": 4}).value
    assert (
        len(rolled["rolls"]) == 3
        and all(1 <= r <= 4 for r in rolled["rolls"])
        and rolled["total"] == sum(rolled["rolls"])
    )
    assert registry.call("roll_dice", {"count": 101}).error == "invalid_arguments"
    picked = registry.call("random_choice", {"options": ["a", "b", "c"], "count": 3}).value
    assert sorted(picked) == ["a", "b", "c"]
    assert "cannot pick 4 different items" in registry.call("random_choice", {"options": ["a"], "count": 4}).observation


# -- files -----------------------------------------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path: Path) -> tuple[ToolRegistry, Path, Path]:
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret", encoding="utf-8")
    files = module_of("files")
    return ToolRegistry(files.make_file_tools(root)), root, outside


def test_files_write_read_list(workspace: tuple[ToolRegistry, Path, Path]) -> None:
    registry, root, _ = workspace
    wrote = registry.call("write_file", {"path": "notes/todo.txt", "content": "买牛奶\n"})
    assert wrote.ok and wrote.value == "Wrote 4 characters to notes/todo.txt"
    assert (root / "notes" / "todo.txt").read_text(encoding="utf-8") == "买牛奶\n"
    assert registry.call("write_file", {"path": "notes/todo.txt", "content": "x"}).error == "exception"
    assert registry.call("write_file", {"path": "notes/todo.txt", "content": "面包\n", "mode": "append"}).ok
    assert registry.call("read_file", {"path": "notes/todo.txt"}).observation == "买牛奶\n面包\n"
    assert registry.call("write_file", {"path": "notes/todo.txt", "content": "new", "mode": "overwrite"}).ok
    assert registry.call("read_file", {"path": "./notes/todo.txt"}).observation == "new"
    listing = registry.call("list_files", {"recursive": True}).value
    assert listing["entries"] == [
        {"path": "notes", "type": "folder", "size": None},
        {"path": "notes/todo.txt", "type": "file", "size": 3},
    ]
    assert registry.call("list_files", {"path": "notes"}).value["entries"] == [
        {"path": "notes/todo.txt", "type": "file", "size": 3}
    ]
    missing = registry.call("read_file", {"path": "nope.txt"})
    assert "no file 'nope.txt' in the workspace; call list_files" in missing.observation
    (root / "blob.bin").write_bytes(b"\xff\xfe\x00\x01")
    assert "'blob.bin' is not a UTF-8 text file" in registry.call("read_file", {"path": "blob.bin"}).observation


@pytest.mark.parametrize(
    ("tool_name", "arguments", "message"),
    [
        ("read_file", {"path": "../outside/secret.txt"}, "'..' is not allowed in paths"),
        ("read_file", {"path": "notes/../../outside/secret.txt"}, "'..' is not allowed in paths"),
        ("read_file", {"path": "/etc/passwd"}, "absolute paths are not allowed"),
        ("read_file", {"path": "~/.bashrc"}, "absolute paths are not allowed"),
        ("read_file", {"path": "C:\\Windows\\win.ini"}, "absolute paths are not allowed"),
        ("write_file", {"path": "/tmp/evil.txt", "content": "x"}, "absolute paths are not allowed"),
        ("write_file", {"path": "..\\evil.txt", "content": "x"}, "'..' is not allowed in paths"),
        ("list_files", {"path": ".."}, "'..' is not allowed in paths"),
    ],
)
def test_files_refuse_leaving_the_workspace(
    workspace: tuple[ToolRegistry, Path, Path], tool_name: str, arguments: dict[str, Any], message: str
) -> None:
    registry, _, _ = workspace
    result = registry.call(tool_name, arguments)
    assert result.error == "exception" and "PermissionError" in result.observation and message in result.observation


def test_files_refuse_symlinks_that_escape(workspace: tuple[ToolRegistry, Path, Path]) -> None:
    registry, root, outside = workspace
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "secret-link.txt").symlink_to(outside / "secret.txt")
    (root / "inside.txt").write_text("fine", encoding="utf-8")
    (root / "alias.txt").symlink_to(root / "inside.txt")
    for tool_name, arguments in [
        ("read_file", {"path": "link/secret.txt"}),
        ("read_file", {"path": "secret-link.txt"}),
        ("write_file", {"path": "link/new.txt", "content": "x"}),
        ("write_file", {"path": "secret-link.txt", "content": "x", "mode": "overwrite"}),
        ("list_files", {"path": "link"}),
    ]:
        result = registry.call(tool_name, arguments)
        assert result.error == "exception" and "leads outside the workspace" in result.observation, (
            tool_name,
            arguments,
        )
    assert (outside / "secret.txt").read_text(encoding="utf-8") == "top secret"
    assert not (outside / "new.txt").exists()
    assert registry.call("read_file", {"path": "alias.txt"}).observation == "fine"


def test_module_level_file_tools_use_the_workspace_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = module_of("files")
    monkeypatch.setenv(files.WORKSPACE_ENV, str(tmp_path))
    registry = ToolRegistry([files.write_file, files.read_file])
    assert registry.call("write_file", {"path": "a.txt", "content": "env"}).ok
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "env"
    monkeypatch.setenv(files.WORKSPACE_ENV, str(tmp_path / "missing"))
    assert (
        "does not exist; create it or set GLM_AGENT_WORKSPACE"
        in registry.call("read_file", {"path": "a.txt"}).observation
    )


def test_without_the_variable_the_file_tools_use_a_temporary_folder_not_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = module_of("files")
    monkeypatch.delenv(files.WORKSPACE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    registry = ToolRegistry([files.write_file])
    with caplog.at_level("WARNING"):
        assert registry.call("write_file", {"path": "here.txt", "content": "x"}).ok
    assert not (tmp_path / "here.txt").exists()  # not where the user stands
    assert "works in the temporary folder" in caplog.text and "GLM_AGENT_WORKSPACE" in caplog.text


# -- web: a real HTTP server on 127.0.0.1 ----------------------------------------------------------------------
PAGE = (
    "<!doctype html><html><head><title>Test  page</title><style>body{color:red}</style>"
    "<script>var secret = 1;</script></head><body><h1>Hello</h1><p>First &amp; <b>bold</b> paragraph.</p>"
    "<ul><li>one</li><li>二</li></ul><noscript>enable js</noscript></body></html>"
)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "text/html; charset=utf-8", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
            pass

    def do_GET(self) -> None:
        if self.path == "/page":
            self._send(200, PAGE.encode("utf-8"))
        elif self.path == "/big":
            self._send(200, b"a" * 50_000, "text/plain")
        elif self.path == "/json":
            self._send(200, '{"城市": "北京"}'.encode(), "application/json")
        elif self.path == "/image":
            self._send(200, b"\x89PNG\r\n\x1a\n", "image/png")
        elif self.path == "/redirect":
            self._send(302, b"", Location="/page")
        elif self.path == "/loop":
            self._send(302, b"", Location="/loop")
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, b"late")
        else:
            self._send(404, b"not here")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def web() -> Any:
    return module_of("web")


def test_fetch_html_as_text(server: str, web: Any) -> None:
    registry = ToolRegistry([web.make_fetch_tool(allow_private_networks=True)])
    result = registry.call("fetch_url", {"url": f"{server}/page"})
    assert result.ok, result.observation
    assert (
        result.observation == f"URL: {server}/page\nTitle: Test page\n\nHello\n\nFirst & bold paragraph.\n\none\n\n二"
    )
    redirected = registry.call("fetch_url", {"url": f"{server}/redirect"})
    assert redirected.observation.startswith(f"URL: {server}/page\nTitle: Test page")
    assert (
        registry.call("fetch_url", {"url": f"{server}/json"}).observation == f'URL: {server}/json\n\n{{"城市": "北京"}}'
    )


def test_fetch_limits_and_errors(server: str, web: Any) -> None:
    registry = ToolRegistry([web.make_fetch_tool(allow_private_networks=True, max_bytes=1000, timeout=0.5)])
    big = registry.call("fetch_url", {"url": f"{server}/big"})
    assert big.ok and big.observation == f"URL: {server}/big\n\n" + "a" * 1000 + "\n[... stopped after 1000 bytes ...]"
    slow = registry.call("fetch_url", {"url": f"{server}/slow"})
    assert not slow.ok and "Timeout" in slow.observation, slow.observation
    for path, message in [
        ("/missing", "HTTP 404 Not Found"),
        ("/image", "is 'image/png', not a text or HTML page"),
        ("/loop", "more than 5 redirects"),
    ]:
        result = registry.call("fetch_url", {"url": f"{server}{path}"})
        assert result.error == "exception" and message in result.observation, result.observation
    scheme = registry.call("fetch_url", {"url": "file:///etc/passwd"})
    assert "only http:// and https:// URLs can be fetched" in scheme.observation


def test_fetch_refuses_local_addresses_by_default(server: str, web: Any) -> None:
    registry = ToolRegistry([web.fetch_url])
    for url in (
        f"{server}/page",
        "http://localhost:1/",
        "http://[::1]:1/",
        "http://10.0.0.1/",
        "http://169.254.169.254/",
    ):
        result = registry.call("fetch_url", {"url": url})
        assert result.error == "exception" and "only public web sites can be fetched" in result.observation, url


# -- weather: the remote API is answered by httpx.MockTransport -----------------------------------------------------
def _weather_api(request: httpx.Request) -> httpx.Response:
    params = dict(request.url.params)
    if request.url.host == "geocoding-api.open-meteo.com":
        if params["name"] == "Atlantis":
            return httpx.Response(200, json={"generationtime_ms": 0.1})
        if params["name"] == "Errorville":
            return httpx.Response(503, text="busy")
        assert params == {"name": "Beijing", "count": "1", "language": "en", "format": "json"}
        return httpx.Response(
            200,
            json={
                "results": [
                    {"name": "Beijing", "latitude": 39.9, "longitude": 116.4, "country": "China", "admin1": "Beijing"}
                ]
            },
        )
    assert request.url.host == "api.open-meteo.com" and request.url.path == "/v1/forecast"
    assert params["latitude"] == "39.9" and params["longitude"] == "116.4"
    unit = "°F" if params["temperature_unit"] == "fahrenheit" else "°C"
    return httpx.Response(
        200,
        json={
            "current_units": {
                "temperature_2m": unit,
                "apparent_temperature": unit,
                "relative_humidity_2m": "%",
                "precipitation": "mm",
                "wind_speed_10m": "km/h",
            },
            "current": {
                "time": "2024-05-01T14:00",
                "temperature_2m": 21.3,
                "apparent_temperature": 20.1,
                "relative_humidity_2m": 40,
                "precipitation": 0.0,
                "weather_code": 2,
                "wind_speed_10m": 11.5,
            },
        },
    )


def test_weather_with_mock_transport() -> None:
    weather = module_of("weather")
    registry = ToolRegistry([weather.make_weather_tool(transport=httpx.MockTransport(_weather_api))])
    result = registry.call("get_weather", {"city": " Beijing "})
    assert result.ok, result.observation
    assert result.value == {
        "city": "Beijing",
        "region": "Beijing",
        "country": "China",
        "local_time": "2024-05-01T14:00",
        "weather": "partly cloudy",
        "temperature": "21.3 °C",
        "feels_like": "20.1 °C",
        "humidity": "40 %",
        "precipitation": "0.0 mm",
        "wind_speed": "11.5 km/h",
    }
    assert json.loads(result.observation)["weather"] == "partly cloudy"
    assert registry.call("get_weather", {"city": "Beijing", "unit": "fahrenheit"}).value["temperature"] == "21.3 °F"
    assert registry.call("get_weather", {"city": "Beijing", "unit": "kelvin"}).error == "invalid_arguments"
    missing = registry.call("get_weather", {"city": "Atlantis"})
    assert missing.error == "exception" and "no place named 'Atlantis' was found" in missing.observation
    down = registry.call("get_weather", {"city": "Errorville"})
    assert "the weather service answered HTTP 503" in down.observation
    assert isinstance(weather.get_weather, Tool)
