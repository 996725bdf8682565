"""Images and documents in the messages of a compatible endpoint, as engine attachments.

Both APIs carry media inline: OpenAI as ``data:`` URLs (``image_url`` and ``file`` parts),
Anthropic as base64 ``source`` objects. Each router reads its own shapes and hands the pieces
to the functions here, which decode them and name the part at fault in every refusal
(``messages[2].content[1]: ...``), so a user can tell which attachment was not accepted.

Only the latest user message is sent to the CLI (earlier ones are in the resumed transcript,
or quoted as text with placeholders, see ``continuity.py``), so only its attachments are
checked against the relay's caps (:class:`MediaRules`): the same checks as ``POST
/api/claude`` (``engine.attachments.check``): media type, the first bytes, size (413), count
and total. Earlier messages' media are only decoded, to fingerprint the conversation by their
bytes; an earlier image URL is never fetched, so it is not refused either.

An ``http(s)`` image URL becomes an :class:`~server.engine.attachments.ImageURL` (a block the
model's API fetches itself) only where the operator allows it (``fetch_image_urls``):
otherwise any URL a client sends would be fetched by Anthropic's servers on the relay's
account.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from server.config import Settings
from server.engine.attachments import IMAGE_TYPES, Attachment, Caps, Image, ImageURL, check
from server.errors import InvalidRequest, TooLarge

_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}


@dataclass(frozen=True)
class MediaRules:
    """What the latest message's media may be: the relay's settings for them."""

    max_bytes: int = Settings.max_attachment_bytes
    fetch_image_urls: bool = Settings.fetch_image_urls
    max_workspace_bytes: int = Settings.max_workspace_bytes

    @classmethod
    def of(cls, settings: Settings) -> MediaRules:
        return cls(
            settings.max_attachment_bytes, settings.fetch_image_urls, settings.max_workspace_bytes
        )

    @property
    def caps(self) -> Caps:
        return Caps(self.max_bytes, self.max_workspace_bytes)


@dataclass(frozen=True)
class Located:
    """An attachment and where in the request it was (for messages)."""

    where: str
    attachment: Attachment


def media_type_of(raw: str) -> str:
    media_type = raw.strip().lower()
    return _ALIASES.get(media_type, media_type)


def decode_base64(where: str, data: object) -> bytes:
    """Strict base64 (whitespace allowed, as some clients wrap lines), or 400 naming it."""
    if not isinstance(data, str):
        raise InvalidRequest(f"{where}: the data must be a base64 string")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: the data is not valid base64") from None


def data_url(where: str, url: str) -> tuple[str, bytes]:
    """The media type and bytes of ``data:<type>;base64,<data>``, or 400 naming it."""
    header, comma, payload = url.removeprefix("data:").partition(",")
    media_type, *params = header.split(";")
    if not comma or "base64" not in (p.strip().lower() for p in params):
        raise InvalidRequest(f"{where}: a data URL must be data:<media type>;base64,<data>")
    if not media_type.strip():
        raise InvalidRequest(f"{where}: the data URL names no media type")
    return media_type_of(media_type), decode_base64(where, payload)


def image_from_url(where: str, url: object) -> Attachment:
    """A ``data:`` URL as an :class:`Image`; an ``http(s)`` URL as an :class:`ImageURL`
    (refused later, by :func:`checked`, unless the operator allows fetching)."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}: the image URL is missing")
    if url[:5].lower() == "data:":
        media_type, data = data_url(where, url)
        return Image(media_type, data)
    if url.lower().startswith(("https://", "http://")):
        return ImageURL(url)
    raise InvalidRequest(f"{where}: an image URL must be a data: URL or an http(s) URL")


def checked(found: Sequence[Located], rules: MediaRules) -> tuple[Attachment, ...]:
    """The latest message's attachments, each checked as ``POST /api/claude`` checks them
    (400/413, naming the part), then all of them together (count, total size)."""
    for item in found:
        attachment = item.attachment
        if isinstance(attachment, ImageURL) and not rules.fetch_image_urls:
            raise InvalidRequest(
                f"{item.where}: image URLs are not fetched by this relay "
                "(CLAUDE_RELAY_FETCH_IMAGE_URLS is off); send the image inline, base64-encoded"
            )
        if isinstance(attachment, Image) and attachment.media_type not in IMAGE_TYPES:
            raise InvalidRequest(
                f"{item.where}: unsupported image type {attachment.media_type!r}; "
                f"one of {', '.join(IMAGE_TYPES)}"
            )
        try:
            check((attachment,), rules.caps)
        except (InvalidRequest, TooLarge) as exc:
            # The engine names it "attachment 0"; the client knows it by its place.
            raise type(exc)(exc.message.replace("attachment 0", item.where, 1)) from None
    attachments = tuple(item.attachment for item in found)
    check(attachments, rules.caps)
    return attachments
