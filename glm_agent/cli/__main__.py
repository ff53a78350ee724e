"""``python -m glm_agent.cli``: the same as the ``glm-agent`` command."""

from __future__ import annotations

import sys

from glm_agent.cli import main

sys.exit(main())
