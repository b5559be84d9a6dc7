"""Encoding of task parameters: JSON by default, raw bytes when passed explicitly; never pickle."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from django.utils.formats import number_format
from django.utils.translation import gettext as _

from .exceptions import InvalidParameters

JSON = "json"
BYTES = "bytes"
CODECS = (JSON, BYTES)


class Encoded(NamedTuple):
    """Parameters ready to store. A tuple of a bytes and a str, which the garbage
    collector stops tracking: a ``submit_many`` keeps one per task."""

    data: bytes
    codec: str

    @property
    def size(self) -> int:
        return len(self.data)


# One encoder: json.dumps with options builds a new one per call, a fifth of its cost.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode(params: Any, *, type_name: str, limit: int) -> Encoded:
    """Encode parameters for storage, or raise ``InvalidParameters`` saying what to change."""
    if isinstance(params, bytes | bytearray | memoryview):
        encoded = Encoded(bytes(params), BYTES)
    else:
        try:
            text = _ENCODER.encode(params)
        except (TypeError, ValueError) as exc:
            raise InvalidParameters(
                _(
                    "Parameters for %(type)s cannot be stored as JSON: %(error)s. Pass only "
                    "dicts, lists, strings, numbers, booleans and None (convert dates and "
                    "decimals to strings), or pass bytes."
                )
                % {"type": repr(type_name), "error": exc}
            ) from exc
        try:
            encoded = Encoded(text.encode(), JSON)
        except UnicodeEncodeError as exc:
            raise InvalidParameters(
                _(
                    "Parameters for %(type)s cannot be stored as JSON: %(error)s at character "
                    "%(position)s (a lone surrogate is no text); pass valid Unicode."
                )
                % {"type": repr(type_name), "error": exc.reason, "position": exc.start}
            ) from exc
    if encoded.size > limit:
        raise InvalidParameters(
            _(
                "Parameters for %(type)s are %(size)s bytes; the limit is %(limit)s "
                "(BATCHTASKS['MAX_PARAMS_BYTES']). Store large data elsewhere (a file or a "
                "model) and pass a reference to it."
            )
            % {
                "type": repr(type_name),
                "size": number_format(encoded.size, force_grouping=True),
                "limit": number_format(limit, force_grouping=True),
            }
        )
    return encoded


def decode(data: bytes, codec: str) -> Any:
    """Turn stored parameters back into what was submitted."""
    if codec == JSON:
        # Most tasks of tiny types have none: a new empty dict, without the decoder.
        return {} if data == b"{}" else json.loads(data)
    if codec == BYTES:
        return bytes(data)
    raise InvalidParameters(f"Unknown parameter codec {codec!r}; known codecs are {CODECS}.")
