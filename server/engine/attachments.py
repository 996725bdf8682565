"""Images, PDFs and files that come with a prompt.

The CLI takes a user message as a list of content blocks on stdin (``--input-format
stream-json``), so images and PDFs reach the model as they are: ``image`` and ``document``
blocks after the prompt's text. Any other file is written into the workspace, under
``attachments/``, and named in the prompt, for the agent to read with its tools. A ``file``
attachment names a file already in the workspace (uploaded before): an image or PDF is sent as
a block, anything else is named.

Everything is checked before the run is claimed: the count and sizes (:class:`Caps`), that an
image is the image it says it is (by its first bytes: the API refuses a mislabelled one, after
the run has started), and that a named workspace file is a regular file inside the workspace.
Nothing follows a symbolic link a tool may have planted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import mimetypes
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from server.errors import InvalidRequest, NotFound, TooLarge

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
PDF = "application/pdf"
MAX_COUNT = 20
"""Attachments per prompt."""
FOLDER = "attachments"
"""Where files that are not images or PDFs are written in the workspace."""

_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    PDF: (b"%PDF-",),
}


@dataclass(frozen=True)
class Image:
    media_type: str
    data: bytes


@dataclass(frozen=True)
class Document:
    """A PDF (sent as a block) or any other file (written into the workspace)."""

    media_type: str
    data: bytes
    name: str | None = None


@dataclass(frozen=True)
class ImageURL:
    """An image the model's API fetches itself (only where the operator allows it)."""

    url: str


@dataclass(frozen=True)
class WorkspaceFile:
    path: str


Attachment = Image | Document | ImageURL | WorkspaceFile


@dataclass(frozen=True)
class Caps:
    max_bytes: int
    """Per attachment, decoded."""
    max_count: int = MAX_COUNT

    @property
    def max_total(self) -> int:
        return self.max_bytes * 4


@dataclass
class Prepared:
    """What a prompt's attachments became: blocks for the message, a note for its text."""

    blocks: list[dict[str, Any]] = field(default_factory=list)
    named: list[str] = field(default_factory=list)
    """Workspace paths the prompt names (files written there, or already there)."""

    def prompt(self, text: str) -> str:
        if not self.named:
            return text
        listed = "\n".join(f"- {path}" for path in self.named)
        return f"{text}\n\nAttached files (in the working directory):\n{listed}"


def check(attachments: Sequence[Attachment], caps: Caps) -> None:
    """Refuse what is too many, too large, or not what it claims to be (400/413)."""
    if len(attachments) > caps.max_count:
        raise InvalidRequest(f"at most {caps.max_count} attachments per prompt")
    total = 0
    for index, attachment in enumerate(attachments):
        if isinstance(attachment, Image | Document):
            size = len(attachment.data)
            if size > caps.max_bytes:
                raise TooLarge(
                    f"attachment {index} is over the relay's cap of {caps.max_bytes} bytes"
                )
            total += size
            _check_content(index, attachment)
        elif isinstance(attachment, ImageURL) and not attachment.url.startswith(
            ("https://", "http://")
        ):
            raise InvalidRequest(f"attachment {index}: only http(s) image URLs can be fetched")
    if total > caps.max_total:
        raise TooLarge(f"the attachments are over the relay's cap of {caps.max_total} bytes in all")


def _check_content(index: int, attachment: Image | Document) -> None:
    if isinstance(attachment, Image) and attachment.media_type not in IMAGE_TYPES:
        raise InvalidRequest(f"attachment {index}: images must be one of {', '.join(IMAGE_TYPES)}")
    if not attachment.data:
        raise InvalidRequest(f"attachment {index} is empty")
    if not _looks_like(attachment.media_type, attachment.data):
        raise InvalidRequest(f"attachment {index}: its data is not {attachment.media_type}")


def _looks_like(media_type: str, data: bytes) -> bool:
    if media_type == "image/webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    prefixes = _MAGIC.get(media_type)
    return prefixes is None or data.startswith(prefixes)


def needs_workspace(attachments: Sequence[Attachment]) -> bool:
    """Whether preparing them reads or writes the session's workspace."""
    return any(
        isinstance(a, WorkspaceFile) or (isinstance(a, Document) and a.media_type != PDF)
        for a in attachments
    )


async def prepare(
    attachments: Sequence[Attachment], workspace: Path | None, caps: Caps
) -> Prepared:
    """Blocks and names for ``attachments``; files are written into (or read from)
    ``workspace``, which must be given when :func:`needs_workspace`."""
    prepared = Prepared()
    for index, attachment in enumerate(attachments):
        if isinstance(attachment, Image | Document) and attachment.media_type in (
            *IMAGE_TYPES,
            PDF,
        ):
            prepared.blocks.append(_block(attachment.media_type, attachment.data))
        elif isinstance(attachment, ImageURL):
            prepared.blocks.append(
                {"type": "image", "source": {"type": "url", "url": attachment.url}}
            )
        elif isinstance(attachment, Document):
            assert workspace is not None
            path = _attachment_path(index, attachment)
            await asyncio.to_thread(_write, workspace, path, attachment.data)
            prepared.named.append(path)
        elif isinstance(attachment, WorkspaceFile):
            assert workspace is not None
            await _workspace_file(attachment.path, workspace, caps, prepared)
    return prepared


def _block(media_type: str, data: bytes) -> dict[str, Any]:
    kind = "document" if media_type == PDF else "image"
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    return {"type": kind, "source": source}


async def _workspace_file(path: str, workspace: Path, caps: Caps, prepared: Prepared) -> None:
    relative = normal_path(path)
    media_type = mimetypes.guess_type(relative)[0] or ""
    if media_type not in (*IMAGE_TYPES, PDF):
        await asyncio.to_thread(_read, workspace, relative, 0)  # it must be there
        prepared.named.append(relative)
        return
    data = await asyncio.to_thread(_read, workspace, relative, caps.max_bytes)
    if not _looks_like(media_type, data):
        raise InvalidRequest(f"{relative}: its content is not {media_type}")
    prepared.blocks.append(_block(media_type, data))


def normal_path(text: str) -> str:
    """A relative POSIX path inside a workspace, or 400."""
    parts = PurePosixPath(text).parts
    if not text or "\0" in text or text.startswith("/") or ".." in parts or "\\" in text:
        raise InvalidRequest(f"not a relative path inside the workspace: {text!r}")
    return "/".join(part for part in parts if part != ".")


def _attachment_path(index: int, document: Document) -> str:
    name = PurePosixPath((document.name or "").replace("\\", "/")).name
    if name in ("", ".", "..") or "\0" in name:
        extension = mimetypes.guess_extension(document.media_type) or ".bin"
        name = f"attachment-{index + 1}{extension}"
    return f"{FOLDER}/{name[:200]}"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_parent(workspace: Path, relative: str, *, create: bool) -> tuple[int, str]:
    """A descriptor of the file's folder, walked from the workspace without following a
    link, and the file's name in it."""
    *folders, name = relative.split("/")
    fd = os.open(workspace, _DIR_FLAGS)
    try:
        for folder in folders:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder, 0o700, dir_fd=fd)
            next_fd = os.open(folder, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _write(workspace: Path, relative: str, data: bytes) -> None:
    try:
        parent, name = _open_parent(workspace, relative, create=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot write {relative}: {exc.strerror}") from None
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=parent)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    except OSError as exc:
        raise InvalidRequest(f"cannot write {relative}: {exc.strerror}") from None
    finally:
        os.close(parent)


def _read(workspace: Path, relative: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of a regular file in the workspace (404 if there is none)."""
    try:
        parent, name = _open_parent(workspace, relative, create=False)
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent
            )
        finally:
            os.close(parent)
    except OSError:
        raise NotFound(f"no file {relative} in the session's workspace") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NotFound(f"no file {relative} in the session's workspace")
        if info.st_size > limit > 0:
            raise TooLarge(f"{relative} is over the relay's attachment cap of {limit} bytes")
        return file.read(limit) if limit > 0 else b""
