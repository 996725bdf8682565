"""claude-relay: the headless Claude Code CLI behind HTTP.

Public surface: :func:`create_app` (an ASGI app for uvicorn), :class:`Settings`, and the error
tree rooted at :class:`RelayError` (see ``server/errors.py``). Everything else is internal and
may change. The packages are layers, each importing only those below it::

    app, main        the composition root: the Litestar app, the ``claude-relay`` command
    compat           the OpenAI- and Anthropic-compatible APIs
    api              the relay's own HTTP API
    engine           runs, the planner, the manager, replay, workspaces, recovery
    claude | storage the Claude Code CLI | the database
    config, errors   settings and the domain errors
"""

from server.app import create_app
from server.config import VERSION as __version__
from server.config import Settings
from server.errors import RelayError

__all__ = ["RelayError", "Settings", "__version__", "create_app"]
