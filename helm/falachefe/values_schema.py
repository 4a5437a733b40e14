"""Generate the falachefe chart's values.schema.json from the Falachefe CRD.

    python helm/falachefe/values_schema.py --write   # after the CRD changes
    python helm/falachefe/values_schema.py --check   # what the tests run

The CRD's structural schema is the one source of truth for a spec; this
turns its ``spec`` into JSON Schema draft-07 for Helm. Two differences
matter:

- the API server *prunes* unknown fields of a custom resource (a typo
  silently does nothing), so every object with declared properties gets
  ``additionalProperties: false`` here, and Helm refuses the typo instead;
- OpenAPI's boolean ``exclusiveMinimum``/``exclusiveMaximum`` become
  draft-07's numeric ones.

CEL rules (``x-kubernetes-validations``) have no JSON Schema equivalent; the
API server still enforces them when Helm applies the resource.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent
#: The operator chart's copy of crds/ (a test keeps the two byte-identical).
CRD = CHART.parent / "falachefe-operator" / "crds" / "falachefe.io_falachefes.yaml"
SCHEMA = CHART / "values.schema.json"

#: OpenAPI keywords JSON Schema validators understand the same way.
_KEPT = {
    "type",
    "description",
    "properties",
    "additionalProperties",
    "items",
    "required",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "uniqueItems",
}


def json_schema(openapi: dict[str, Any]) -> dict[str, Any]:
    """One OpenAPI (structural) schema node as draft-07."""
    out: dict[str, Any] = {key: value for key, value in openapi.items() if key in _KEPT}
    if "properties" in openapi:
        out["properties"] = {name: json_schema(node) for name, node in openapi["properties"].items()}
        if "additionalProperties" not in openapi and not openapi.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(openapi.get("additionalProperties"), dict):
        out["additionalProperties"] = json_schema(openapi["additionalProperties"])
    if "items" in openapi:
        out["items"] = json_schema(openapi["items"])
    if openapi.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if openapi.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if openapi.get(bound) is True:
            out[bound] = out.pop(limit)
    return out


def values_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    spec = json_schema(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "falachefe chart values (generated from the Falachefe CRD by values_schema.py)",
        "type": "object",
        "additionalProperties": False,
        "required": ["spec"],
        "properties": {
            "global": {"type": "object", "description": "Helm's global values, shared with parent charts."},
            "name": {
                "type": "string",
                "maxLength": 50,
                "pattern": "^([a-z]([-a-z0-9]*[a-z0-9])?)?$",
                "description": "The Falachefe's name; the release name when empty.",
            },
            "labels": {**string_map, "description": "Extra labels of the Falachefe."},
            "annotations": {**string_map, "description": "Annotations of the Falachefe."},
            "spec": spec,
        },
    }


def render() -> str:
    return json.dumps(values_schema(yaml.safe_load(CRD.read_text())), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {SCHEMA.name}")
    action.add_argument("--check", action="store_true", help=f"fail if {SCHEMA.name} is out of date")
    args = parser.parse_args(argv)
    schema = render()
    if args.write:
        SCHEMA.write_text(schema)
        return 0
    if SCHEMA.read_text() != schema:
        sys.stderr.write(f"{SCHEMA} is out of date: run python helm/falachefe/values_schema.py --write\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
