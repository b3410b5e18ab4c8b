"""Sample fields a family declares and the stream reads, with the WebDataset conventions.

A family says what it needs from each sample, e.g. `{"image": Image(), "cls": Label(optional=True)}`;
the stream looks each field up among the sample's members (`000042.jpg`, `000042.cls`,
`000042.json`) and batches it: images as uint8 [B, 3, R, R], labels as int64 [B] (-1 where an
optional label is missing), texts as a list of str ("" where an optional text is missing).

A member name is what follows the key's first dot, lower-cased (read_samples' naming):
`000042.target.jpg` has member `target.jpg`. A member name "json:KEY" reads KEY from the sample's
`.json` member (labels and texts only).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

from pipeline.data.errors import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class Image:
    """An encoded image: the first of `members` present (jpg, jpeg, png, webp by default), decoded
    by its content (JPEG, PNG, WebP; other formats torchvision reads). Missing and optional ->
    an all-zero image in the batch."""
    members: tuple[str, ...] = IMAGE_EXTS
    optional: bool = False


@dataclass(frozen=True)
class Label:
    """An integer class: `cls`, or a key inside `.json` (members=("json:label",)). Missing and
    optional -> -1 in the batch."""
    members: tuple[str, ...] = ("cls",)
    optional: bool = False


@dataclass(frozen=True)
class Text:
    """A caption: `txt` by default (utf-8), or a key inside `.json`. Missing and optional -> ""."""
    members: tuple[str, ...] = ("txt",)
    optional: bool = False


Field = Image | Label | Text

# What every family read before fields were declared: an image and a class, both required.
DEFAULT_FIELDS: dict[str, Field] = {"image": Image(), "cls": Label()}


class FieldError(DataError):
    """A field declaration that cannot work (raised before any shard is read)."""


def validate(fields: dict[str, Field] | None) -> dict[str, Field]:
    """The declared fields, checked, with member names lower-cased as read_samples names them.
    None -> DEFAULT_FIELDS."""
    if fields is None:
        return dict(DEFAULT_FIELDS)
    if not isinstance(fields, dict) or not fields:
        raise FieldError(f"fields must be a non-empty dict of name -> Image/Label/Text, got {fields!r}")
    out = {}
    for name, f in fields.items():
        if not isinstance(name, str) or not name:
            raise FieldError(f"field name {name!r}: must be a non-empty string")
        if not isinstance(f, (Image, Label, Text)):
            raise FieldError(f"field {name!r}: {f!r} is not an Image, Label or Text")
        members = f.members
        if isinstance(members, str) or not isinstance(members, (tuple, list)) or not members or \
                not all(isinstance(m, str) and m for m in members):
            raise FieldError(f"field {name!r}: members must be a non-empty tuple of member names, "
                             f"e.g. ('jpg',), got {members!r}")
        norm = tuple(m if m.startswith("json:") else m.lower() for m in members)
        if isinstance(f, Image) and any(m.startswith("json:") for m in norm):
            raise FieldError(f"field {name!r}: an image cannot come from inside .json ({members!r})")
        if any(m == "json:" for m in norm):
            raise FieldError(f"field {name!r}: 'json:' needs a key, e.g. 'json:label'")
        out[name] = replace(f, members=norm)
    return out


def describe(fields: dict[str, Field]) -> str:
    """'image (jpg|jpeg|png|webp), cls (cls, optional)' for error messages."""
    parts = []
    for name, f in fields.items():
        opt = ", optional" if f.optional else ""
        parts.append(f"{name} ({'|'.join(f.members)}{opt})")
    return ", ".join(parts)


def member(members: dict, name: str, _json_cache: dict | None = None):
    """The raw value of member `name` ("json:KEY" reads inside .json), or None if absent.

    Raises ValueError if a "json:KEY" is asked of a sample whose .json is not a JSON object.
    _json_cache: a dict kept for one sample, so several json: fields parse its .json once."""
    if name.startswith("json:"):
        if _json_cache is not None and "doc" in _json_cache:
            doc = _json_cache["doc"]
        else:
            raw = members.get("json")
            if raw is None:
                return None
            try:
                doc = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f".json is not valid JSON ({e})") from None
            if not isinstance(doc, dict):
                raise ValueError(f".json is a {type(doc).__name__}, not an object")
            if _json_cache is not None:
                _json_cache["doc"] = doc
        return doc.get(name[5:])
    return members.get(name)
