"""Jupyter Kernel Gateway configuration for glm-agent: `jupyter kernelgateway --config sandbox/kernelgateway_config.py`.

Every setting can be overridden from the environment (names below) or the command line
(`--KernelGatewayApp.port=9000`). See sandbox/README.md.
"""

import os
import sys
import tempfile
from pathlib import Path

c = get_config()  # noqa: F821  (provided by traitlets when it loads this file)

HERE = Path(__file__).resolve().parent

# -- who may talk to it ------------------------------------------------------------------------
# Token auth is always on: every request needs "Authorization: token <KG_AUTH_TOKEN>".
token = os.environ.get("KG_AUTH_TOKEN", "")
if len(token) < 16:
    sys.exit(
        "glm-agent gateway: set KG_AUTH_TOKEN to a random token of at least 16 characters "
        "(e.g. KG_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')); "
        "sandbox/run-gateway.sh makes one for you"
    )
c.KernelGatewayApp.auth_token = token
c.KernelGatewayApp.ip = os.environ.get("KG_IP", "127.0.0.1")  # loopback unless told otherwise
c.KernelGatewayApp.port = int(os.environ.get("KG_PORT", "8888"))
c.KernelGatewayApp.port_retries = 0  # the port asked for, or fail: clients must know where it is
c.KernelGatewayApp.api = "kernel_gateway.jupyter_websocket"
c.JupyterWebsocketPersonality.list_kernels = True  # GET /api/kernels (operators, leak checks)

# -- which kernels -----------------------------------------------------------------------------
# Only the sandboxed kernel spec: python -m glm_agent.interpreter._gateway_kernel, which runs each
# kernel like glm-agent's local kernels (launcher/supervisor, rlimits, namespaces when available).
# (kernel_dirs is not configurable; JUPYTER_PATH is read when the spec manager is created, after this file)
# GLM_AGENT_KERNEL_SPECS: a folder like this one (kernels/glm-agent-python/kernel.json) with other limits
specs = os.environ.get("GLM_AGENT_KERNEL_SPECS", str(HERE))
os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [specs, os.environ.get("JUPYTER_PATH")]))
c.KernelSpecManager.ensure_native_kernel = False
c.KernelSpecManager.allowed_kernelspecs = {"glm-agent-python"}
c.KernelGatewayApp.default_kernel_name = "glm-agent-python"
c.KernelGatewayApp.max_kernels = int(os.environ.get("KG_MAX_KERNELS", "32"))

# An isolated kernel has no network: the gateway reaches it over ZMQ ipc sockets (files). They
# live in the runtime directory, which must be under /tmp (private in every sandbox) so that
# kernels cannot see each other's connection files, sockets and workspaces.
c.KernelManager.transport = "ipc"
# (runtime_dir is not configurable either: it comes from JUPYTER_RUNTIME_DIR)
os.environ["JUPYTER_RUNTIME_DIR"] = os.environ.get(
    "GLM_AGENT_GATEWAY_RUNTIME_DIR",
    str(Path(tempfile.gettempdir()) / f"glm-agent-gateway-{os.getuid()}" / f"port-{c.KernelGatewayApp.port}"),
)

# -- kernel life ---------------------------------------------------------------------------------
c.KernelRestarter.time_to_dead = (
    0.5  # notice a dead kernel within half a second (a cheap process poll), then restart it
)
c.MappingKernelManager.cull_idle_timeout = int(os.environ.get("KG_CULL_IDLE_TIMEOUT", "3600"))
c.MappingKernelManager.cull_interval = int(os.environ.get("KG_CULL_INTERVAL", "300"))
c.MappingKernelManager.cull_connected = True  # an idle kernel is culled even with a client attached
c.MappingKernelManager.cull_busy = False
c.MappingKernelManager.buffer_offline_messages = True  # a client that reconnects gets what it missed
c.KernelManager.shutdown_wait_time = 1.0  # shutdown_request, SIGTERM after 0.5 s, SIGKILL after 1 s

# -- output --------------------------------------------------------------------------------------
# glm-agent bounds a run's output itself (max_output_chars: head + tail); the server's own rate
# limit would instead drop output from the middle with a notice glm-agent cannot see.
c.ZMQChannelsWebsocketConnection.limit_rate = False


# -- latency -------------------------------------------------------------------------------------
# Tornado's WebSockets leave Nagle's algorithm on: a kernel's second message (after "busy") then
# waits for the client's delayed ACK, about 40 ms on Linux, on every run. Send at once instead.
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection  # noqa: E402


class NoDelayChannelsConnection(ZMQChannelsWebsocketConnection):
    """The standard kernel WebSocket connection with TCP_NODELAY on."""

    def connect(self):
        try:
            self.websocket_handler.set_nodelay(True)
        except (AssertionError, AttributeError):  # no stream (closed meanwhile): nothing to tune
            pass
        return super().connect()


c.KernelGatewayApp.kernel_websocket_connection_class = NoDelayChannelsConnection
