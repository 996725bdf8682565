"""Workspace directories: one per session, named by the relay, always under the root.

A client never names a directory. The relay makes up a UUID, and every path is rebuilt from
the configured root and that UUID, then checked to still be inside the root (a symlinked
root is resolved first, so the check compares real paths).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from server.errors import InvalidRequest


class Workspaces:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, workspace_id: str) -> Path:
        """The directory of a session, refusing anything that is not a plain UUID."""
        try:
            name = str(uuid.UUID(workspace_id))
        except ValueError:
            raise InvalidRequest(f"not a workspace id: {workspace_id!r}") from None
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise InvalidRequest(f"workspace of {workspace_id!r} would leave the workspaces root")
        return path

    def remove(self, workspace_id: str) -> bool:
        path = self.path_for(workspace_id)
        if not path.exists():
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True
