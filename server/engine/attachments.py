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

import base64
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from server.config import Settings
from server.engine import workspace_files
from server.errors import InvalidRequest, TooLarge

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
    max_workspace_bytes: int
    """What the workspace may hold with the files written into it."""
    max_count: int = MAX_COUNT

    @classmethod
    def of(cls, settings: Settings) -> Caps:
        return cls(settings.max_attachment_bytes, settings.max_workspace_bytes)

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
            written = await workspace_files.write_file(
                workspace,
                _attachment_path(index, attachment),
                attachment.data,
                max_file_bytes=caps.max_bytes,
                max_workspace_bytes=caps.max_workspace_bytes,
            )
            prepared.named.append(written.path)
        elif isinstance(attachment, WorkspaceFile):
            assert workspace is not None
            await _workspace_file(attachment.path, workspace, caps, prepared)
    return prepared


def _block(media_type: str, data: bytes) -> dict[str, Any]:
    kind = "document" if media_type == PDF else "image"
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    return {"type": kind, "source": source}


async def _workspace_file(path: str, workspace: Path, caps: Caps, prepared: Prepared) -> None:
    """Read as the file API reads (never through a link); an image or PDF becomes a block,
    anything else is named once it is known to be there."""
    relative = workspace_files.check_path(path)
    media_type = mimetypes.guess_type(relative)[0] or ""
    reader = await workspace_files.open_file(workspace, relative)
    if media_type not in (*IMAGE_TYPES, PDF):
        reader.close()
        prepared.named.append(relative)
        return
    if reader.size > caps.max_bytes:
        reader.close()
        raise TooLarge(f"{relative} is over the relay's attachment cap of {caps.max_bytes} bytes")
    data = b"".join([chunk async for chunk in reader])
    if not _looks_like(media_type, data):
        raise InvalidRequest(f"{relative}: its content is not {media_type}")
    prepared.blocks.append(_block(media_type, data))


def _attachment_path(index: int, document: Document) -> str:
    name = PurePosixPath((document.name or "").replace("\\", "/")).name
    if name in ("", ".", "..") or "\0" in name:
        extension = mimetypes.guess_extension(document.media_type) or ".bin"
        name = f"attachment-{index + 1}{extension}"
    return f"{FOLDER}/{name[:200]}"
