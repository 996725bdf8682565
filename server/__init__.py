"""claude-relay: the headless Claude Code CLI behind HTTP.

Public surface: :func:`create_app` (an ASGI app for uvicorn) and :class:`Settings`. Everything
else is internal and may change.
"""

__version__ = "0.1.0"

from server.app import create_app
from server.config import Settings

__all__ = ["Settings", "__version__", "create_app"]
