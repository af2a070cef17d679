"""Which JSON-schema keywords constrained decoding enforces; any other is refused, by name.

A keyword the grammar cannot enforce would be silently ignored and the output might not
validate, so it is an error instead. Annotations (titles, descriptions, examples) change no
output and are accepted.
"""

from __future__ import annotations

from typing import Any

from pagedllm.structured_outputs_params import StructuredOutputsError

ENFORCED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "format",
    }
)
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
# Formats the grammar knows; any other would be accepted as a plain string.
FORMATS = frozenset(
    {
        "email",
        "date",
        "time",
        "date-time",
        "duration",
        "ipv4",
        "ipv6",
        "hostname",
        "uuid",
        "uri",
        "uri-reference",
    }
)
# Keywords whose value is a map of names to subschemas, or a subschema, or a list of them.
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_VALUES = ("items", "additionalProperties")
_SCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")


def check_schema(schema: Any, path: str = "#") -> None:
    """Raise `StructuredOutputsError` naming the first keyword the grammar would not enforce."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise StructuredOutputsError(f"the JSON schema at {path} is {type(schema).__name__}, not an object")
    for keyword, value in schema.items():
        if keyword in ANNOTATIONS:
            continue
        if keyword not in ENFORCED:
            raise StructuredOutputsError(
                f"JSON-schema keyword {keyword!r} (at {path}) cannot be enforced while decoding; "
                f"remove it or use one of: {', '.join(sorted(ENFORCED))}"
            )
        if keyword == "format" and value not in FORMATS:
            raise StructuredOutputsError(
                f"JSON-schema format {value!r} (at {path}) cannot be enforced; supported formats: "
                f"{', '.join(sorted(FORMATS))}"
            )
        if keyword in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_schema(sub, f"{path}/{keyword}/{name}")
        elif keyword in _SCHEMA_VALUES and isinstance(value, dict):
            check_schema(value, f"{path}/{keyword}")
        elif keyword in _SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                check_schema(sub, f"{path}/{keyword}/{i}")
