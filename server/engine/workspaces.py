"""Workspace directories: one per session, named by the relay, always directly under the root.

A client never names a directory. The relay makes up a UUID, and every path is rebuilt from
the configured root (resolved once, at start-up) and that UUID. The path itself is never
resolved again: a tool can replace its own workspace with a symbolic link (one ``Bash`` call
does it while runs are not sandboxed), and following that link would let the relay run, list
or delete *somewhere else*. So a workspace is looked at with ``lstat`` only: a plain directory
is a workspace; anything else (a link, a file, nothing) makes the session *broken*, which the
listing shows and which deleting cures. Removal never follows a link: a link is unlinked
itself, a directory is removed with :func:`shutil.rmtree`, which on Linux walks by file
descriptor and does not follow links inside the tree (``rmtree.avoids_symlink_attacks``).

A session's CLI config directory (``session_config.py``) belongs to its workspace: a broken one
makes the session broken, and removing the workspace removes it too, on every path that
removes one (a purge, a new session that failed or never got a transcript).

A root that is full, read-only or gone refuses new runs with a storage error (507 or 503 and
``Retry-After``): a run started there could not even write its first file. Space is checked
before a run starts, not only when ``mkdir`` fails, because a directory takes no block on
some file systems (tmpfs) while everything the run writes in it does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from server.engine import session_config
from server.errors import Conflict, InvalidRequest
from server.storage.faults import PlaceState, directory_state, os_fault, space_fault

ROOT = "the workspaces root"


class Workspaces:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def ensure_root(self) -> None:
        with _root_faults():
            self.root.mkdir(parents=True, exist_ok=True)

    def state(self) -> PlaceState:
        """The root as ``/health`` reports it: there, a directory, writable, space left."""
        return directory_state(self.root, what=ROOT)

    def path_for(self, workspace_id: str) -> Path:
        """The directory of a session, refusing anything that is not a plain UUID."""
        try:
            name = str(uuid.UUID(workspace_id))
        except ValueError:
            raise InvalidRequest(f"not a workspace id: {workspace_id!r}") from None
        return self.root / name

    def broken(self, workspace_id: str) -> str | None:
        """Why the session's workspace cannot be used, or None when it is a plain directory
        (or missing: the next run makes it again, and the transcript is elsewhere)."""
        try:
            mode = os.lstat(self.path_for(workspace_id)).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"its workspace cannot be read: {exc.strerror}"
        if stat.S_ISLNK(mode):
            return "its workspace was replaced by a symbolic link"
        if not stat.S_ISDIR(mode):
            return "its workspace is not a directory"
        return session_config.broken(self.root, workspace_id)

    def prepare(self, workspace_id: str) -> Path:
        """The workspace a run will use: made if missing (a new session, or one whose empty
        directory went away), refused if something else stands in its place."""
        path = self.path_for(workspace_id)
        full = space_fault(self.root, what=ROOT)
        if full is not None:
            raise full
        with _root_faults(), contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        why = self.broken(workspace_id)
        if why is not None:
            raise Conflict(
                f"the session cannot run: {why}. Delete it (DELETE /api/sessions/<id>?purge=true)"
            )
        return path

    def remove(self, workspace_id: str) -> bool:
        """Remove the workspace, or the link or file standing in its place; never a link's
        target. False if there was nothing. Its CLI config directory goes too."""
        path = self.path_for(workspace_id)
        session_config.remove(self.root, workspace_id)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(mode):
            path.unlink()
            return True
        # Errors (a file a tool made read-only, a swap mid-way) leave what could not go.
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.lexists(path)


@contextlib.contextmanager
def _root_faults() -> Iterator[None]:
    """The root's storage faults (``OSError``: full, read-only, gone) as domain errors."""
    try:
        yield
    except OSError as exc:
        found = os_fault(exc, what=ROOT)
        if found is None:
            raise
        raise found from exc
