"""Test helpers: a real ``jupyter kernelgateway`` with sandbox/'s configuration, and a TCP proxy that can fail.

Used by tests/test_interpreter_gateway.py and benchmarks/gateway.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import psutil

from tests._data import REPO
from tests._helpers import free_port, wait_http

CONFIG = REPO / "sandbox" / "kernelgateway_config.py"


class GatewayServer:
    """``jupyter kernelgateway --config sandbox/kernelgateway_config.py`` on 127.0.0.1, a free port, a random token."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="glm-agent-test-gateway-", dir="/tmp"))
        self.log_path = self.runtime_dir.parent / f"{self.runtime_dir.name}.log"
        jupyter = Path(sys.executable).with_name("jupyter")
        command = (
            [str(jupyter), "kernelgateway"] if jupyter.exists() else [sys.executable, "-m", "jupyter", "kernelgateway"]
        )
        environment = dict(os.environ)
        environment.update(
            KG_AUTH_TOKEN=self.token, KG_PORT=str(self.port), KG_IP="127.0.0.1",
            GLM_AGENT_GATEWAY_RUNTIME_DIR=str(self.runtime_dir), **(env or {}),
        )  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*command, "--config", str(CONFIG)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=environment, cwd=str(REPO), start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_up(60)
        except BaseException:
            self.stop()
            raise

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def _wait_up(self, timeout: float) -> None:
        wait_http(f"{self.url}/api", self.proc, timeout, status=200, headers=self.headers, output=self.log)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kernels(self) -> list[dict]:
        """``GET /api/kernels``."""
        response = httpx.get(f"{self.url}/api/kernels", headers=self.headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def delete_kernel(self, kernel_id: str) -> int:
        return httpx.delete(f"{self.url}/api/kernels/{kernel_id}", headers=self.headers, timeout=30).status_code

    def kernel_processes(self, kernel_id: str | None = None) -> list[psutil.Process]:
        """The gateway's kernel wrappers and everything under them (of one kernel, or all)."""
        try:
            wrappers = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        found = []
        for wrapper in wrappers:
            try:
                if kernel_id is None or kernel_id in " ".join(wrapper.cmdline()):
                    found += [wrapper, *wrapper.children(recursive=True)]
            except psutil.Error:
                continue
        return found

    def ipykernel(self, kernel_id: str) -> psutil.Process:
        (kernel,) = [p for p in self.kernel_processes(kernel_id) if p.cmdline()[1:3] == ["-m", "ipykernel_launcher"]]
        return kernel

    def kill(self) -> None:
        """SIGKILL the gateway process alone (its kernels are on their own)."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """Stop the gateway and everything it started."""
        descendants = []
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for proc in descendants:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(descendants, timeout=5)
        for point in session_mounts(self.runtime_dir):  # sessions whose files were left (a killed gateway)
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)


def session_mounts(under: Path) -> list[str]:
    """Mount points (the sessions' tmpfs) under ``under``, from /proc/self/mounts."""
    found = []
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(str(under) + "/"):
                found.append(point)
    return found


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 in front of ``port`` that the test can break.

    ``cut()`` resets every open connection (new ones are accepted); ``blackhole = True``
    silently drops what the server sends, as a dead network path would.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.blackhole = False
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (from_server and self.blackhole):
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Reset every connection through the proxy now."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self._server.close()
        self.cut()
