"""Who may use the UI: user names and passwords (``--auth``, ``--auth-file``), or the API server's key."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from glm_agent._net import is_loopback
from glm_agent.errors import GlmAgentError

__all__ = ["Login", "check_bind"]


class Login:
    """The UI's login, as Gradio's ``auth`` callable (``login(user, password) -> bool``).

    ``users``: user name -> password (each user owns the sessions they open). ``api_key``: any
    user name with this password (``serve --ui --api-key KEY`` without ``--auth``). Passwords
    compare as UTF-8 bytes in constant time; anything unexpected is a no.
    """

    def __init__(self, users: Mapping[str, str] | None = None, *, api_key: str | None = None) -> None:
        self.users = {name: password.encode() for name, password in (users or {}).items()}
        self.api_key = api_key.encode() if api_key else None
        if not self.users and self.api_key is None:
            raise ValueError("a Login needs users or an API key")
        if any(not name or not password for name, password in self.users.items()):
            raise ValueError("user names and passwords must not be empty")

    def __call__(self, user: object, password: object) -> bool:
        if not isinstance(user, str) or not isinstance(password, str) or not user:
            return False
        given = password.encode()
        expected = self.users.get(user)
        if expected is not None:
            return hmac.compare_digest(given, expected)
        if self.api_key is not None and not self.users:
            return hmac.compare_digest(given, self.api_key)
        hmac.compare_digest(given, b"\0" * 16)  # the same work for an unknown user
        return False

    def __repr__(self) -> str:
        kind = f"{len(self.users)} users" if self.users else "the API key"
        return f"Login({kind})"


def check_bind(host: str, login: Login | None) -> None:
    """Refuse to serve beyond this machine without a login: the UI runs code in kernels."""
    if not is_loopback(host) and login is None:
        raise GlmAgentError(
            f"refusing to serve the web UI on {host} without a login: anyone who reaches it can run code. "
            "Pass --auth USER:PASS or --auth-file FILE (or bind to 127.0.0.1 and use an SSH tunnel)"
        )
