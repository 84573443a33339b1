"""OpenAPI pieces shared by the document's parts: the form field of each swap option (from
:func:`pipeline.options.option_facts`, the one typed definition), binary uploads and multipart bodies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from pipeline.options import OptionFact, option_facts

BINARY: Mapping[str, str] = MappingProxyType({"type": "string", "format": "binary"})
SOURCE_IMAGE: Mapping[str, str] = MappingProxyType(
    {**BINARY, "description": "JPEG, PNG or WebP; its largest face is the identity."}
)


def multipart_body(properties: Mapping[str, Any], required: Sequence[str]) -> dict[str, Any]:
    """A required ``multipart/form-data`` request body of an object with ``properties``."""
    schema = {"type": "object", "properties": dict(properties), "required": list(required)}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def option_schema(fact: OptionFact) -> dict[str, Any]:
    """The multipart form field of one option. Lists are sent as one comma-separated (or JSON) field."""
    schema: dict[str, Any] = {"description": fact.description}
    if fact.kind == "list":
        schema["type"] = "string"
        if fact.choices:
            schema["description"] += f" Comma-separated, any of: {', '.join(fact.choices)}."
        else:
            schema["description"] += " Comma-separated integers."
    else:
        schema["type"] = fact.kind
    if fact.kind == "string" and fact.choices:
        schema["enum"] = list(fact.choices)
    if fact.minimum is not None:
        schema["minimum"] = fact.minimum
    if fact.maximum is not None:
        schema["maximum"] = fact.maximum
    if isinstance(fact.default, tuple):
        schema["default"] = ",".join(str(v) for v in fact.default)
    elif fact.default is not None:
        schema["default"] = fact.default
    return schema


def option_schemas() -> dict[str, dict[str, Any]]:
    """Form-field schemas of every swap option, in definition order."""
    return {fact.name: option_schema(fact) for fact in option_facts()}
