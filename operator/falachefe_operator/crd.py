"""The ``Falachefe`` CustomResourceDefinition, generated from the pydantic models.

``python -m falachefe_operator.crd`` prints it; ``--write`` updates
``crds/falachefe.io_falachefes.yaml``; ``--check`` fails if the committed
file differs from what the models say (a test runs the same check).

Pydantic emits JSON Schema (draft 2020-12); a CRD wants a *structural*
OpenAPI v3 schema. The conversion inlines ``$ref``s, turns "optional"
(``anyOf [X, null]``) into "not required", drops what structural schemas
forbid (``additionalProperties: false``, titles, null defaults) and turns
object defaults that equal the object's own defaults into ``{}`` (the API
server fills the nested defaults in).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .naming import MAX_NAME_LENGTH, NAME_PATTERN
from .resource import CRD_NAME, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from .spec import FalachefeSpec
from .status import FalachefeStatus

#: Where the generated CRD lives in the repository (the chart keeps a copy).
CRD_PATH = Path("crds") / f"{GROUP}_{PLURAL}.yaml"

#: The name becomes part of the owned objects' names and labels.
NAME_RULE = {
    "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{NAME_PATTERN}')",
    "message": f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters"
    " (lower-case letters, digits and '-', starting with a letter): the worker objects are named after it",
}

_READY = '.status.conditions[?(@.type=="Ready")]'
PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status", "description": "Every pool's workers ready"},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason", "description": "Why (not) ready"},
    {"name": "Workers", "type": "string", "jsonPath": ".status.workers", "description": "Ready/desired workers"},
    {"name": "Queue", "type": "integer", "jsonPath": ".status.queueDepth", "description": "Jobs queued or running"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Pools",
        "type": "string",
        "jsonPath": ".status.poolSummary",
        "priority": 1,
        "description": "Per pool: ready/desired workers and queue depth",
    },
    {
        "name": "Scaling",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="ScalingActive")].reason',
        "priority": 1,
        "description": "Autoscaler state",
    },
    {"name": "Image", "type": "string", "jsonPath": ".spec.image", "priority": 1},
    {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused", "priority": 1},
]

#: Keywords a structural schema may keep; everything else pydantic emits is dropped.
_KEPT = {
    "type",
    "description",
    "properties",
    "additionalProperties",
    "items",
    "required",
    "default",
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
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s structural OpenAPI v3 schema, as a CRD wants it."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    definitions = schema.pop("$defs", {})
    return _structural(schema, definitions)


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` inlined and ``Optional[X]`` reduced to ``X``."""
    node = dict(node)
    if "$ref" in node:
        target = definitions[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**_resolve(target, definitions), **node}
    variants = node.pop("anyOf", None)
    if variants is not None:
        # Optional[X]: absent means unset; null itself is never sent.
        real = [variant for variant in variants if variant.get("type") != "null"]
        if len(real) != 1:
            raise ValueError(f"only Optional[X] unions map onto a structural schema, got {variants}")
        node = {**_resolve(real[0], definitions), **node}
    return node


def _structural(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, definitions)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key not in _KEPT:
            continue
        elif key == "properties":
            out[key] = {name: _structural(child, definitions) for name, child in value.items()}
        elif key in ("items", "additionalProperties"):
            if value is False:
                continue
            out[key] = _structural(value, definitions)
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    # The API server checks a default against the node's CEL rules before it
    # fills nested defaults in, so a node with rules keeps its full default.
    if isinstance(out.get("default"), dict) and out.get("properties") and "x-kubernetes-validations" not in out:
        out["default"] = _minimal_default(out)
    return out


def _minimal_default(node: dict[str, Any]) -> dict[str, Any]:
    """``{}`` when the API server's nested defaulting rebuilds the full default from it.

    A field left unset (None, an optional field) is no part of a default: the schema types it, not null.
    """
    default: dict[str, Any] = {name: value for name, value in node["default"].items() if value is not None}
    rebuilt = {name: child["default"] for name, child in node["properties"].items() if "default" in child}
    expanded = {name: _expand(node["properties"][name], value) for name, value in rebuilt.items()}
    return {} if expanded == default else default


def _expand(node: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and node.get("properties"):
        nested = {name: child["default"] for name, child in node["properties"].items() if "default" in child}
        return {**{name: _expand(node["properties"][name], v) for name, v in nested.items()}, **value}
    return value


def definition() -> dict[str, Any]:
    """The CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "falachefe-operator", "app.kubernetes.io/part-of": "falachefe"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["falachefe"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Falachefe worker pools (WhatsApp auth, CrewAI crews, admin) "
                            "on BullMQ queues, reconciled into Deployments and autoscaled on queue depth and CPU.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [NAME_RULE],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"The schema version of this object: {GROUP}/{VERSION}.",
                                },
                                "kind": {"type": "string", "description": f"{KIND}."},
                                # The API server refuses anything here but the type: kubectl explain
                                # describes metadata from ObjectMeta's own schema.
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(FalachefeSpec),
                                "status": openapi_schema(FalachefeStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = (
        "# Generated by `python -m falachefe_operator.crd --write` from\n"
        "# operator/falachefe_operator/spec.py and status.py: edit those, not this file.\n"
    )
    return header + yaml.dump(definition(), Dumper=_PlainDumper, sort_keys=False, width=120)


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: anchors and aliases confuse readers and diffs."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help=f"update {CRD_PATH}")
    parser.add_argument("--check", action="store_true", help=f"fail if {CRD_PATH} is stale")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    args = parser.parse_args(argv)
    path = args.root / CRD_PATH
    text = render()
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    elif args.check:
        if not path.is_file() or path.read_text() != text:
            sys.stderr.write(f"{path} is stale: run python -m falachefe_operator.crd --write\n")
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
