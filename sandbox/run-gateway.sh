#!/usr/bin/env bash
# Start a Jupyter Kernel Gateway for glm-agent with sandbox/kernelgateway_config.py.
#   sandbox/run-gateway.sh                 # 127.0.0.1:8888, a fresh token printed on stderr
#   KG_PORT=9000 KG_AUTH_TOKEN=... sandbox/run-gateway.sh
# Run it with the Python environment that has glm-agent installed (the kernels run
# `python -m glm_agent.interpreter._gateway_kernel` with the gateway's own Python).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${KG_AUTH_TOKEN:-}" ]]; then
    KG_AUTH_TOKEN="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    export KG_AUTH_TOKEN
    echo "glm-agent gateway token: ${KG_AUTH_TOKEN}" >&2
    echo "  (pass it as CodeInterpreter(gateway=..., token=...) or GLM_AGENT_GATEWAY_TOKEN)" >&2
fi
python -c 'import glm_agent.interpreter._gateway_kernel' 2>/dev/null || {
    echo "run-gateway.sh: glm_agent is not importable by $(command -v python); activate its environment" >&2
    exit 1
}
exec jupyter kernelgateway --config "${here}/kernelgateway_config.py" "$@"
