"""Keep the charts in step with crds/, the one source of truth for the Falachefe API.

    python helm/sync.py --write   # after crds/ changes (e.g. `python -m falachefe_operator.crd --write`)
    python helm/sync.py --check   # what the tests run: fails, naming the file, if a chart is behind

It does two things:

1. makes every CustomResourceDefinition file of crds/ (not the samples) a
   template of the falachefe-operator chart (templates/crds/), its spec
   byte for byte: a template, not the chart's crds/ directory, because Helm
   installs crds/ once and never upgrades it. The template renders only with
   ``crds.install`` (one release per cluster owns the CRD), carries the
   release's labels and ``helm.sh/resource-policy: keep`` (uninstalling the
   chart never deletes the CRD, which would delete every Falachefe);
2. generates the falachefe chart's values.schema.json from the CRD's spec
   (and its ``name`` value from the operator's rule for a Falachefe's name).

The CRD's structural schema becomes JSON Schema draft-07 for Helm. Two
differences matter:

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

from falachefe_operator.naming import MAX_NAME_LENGTH, NAME_PATTERN

HELM = Path(__file__).resolve().parent
REPO = HELM.parent
CRDS = REPO / "crds"
OPERATOR_CRDS = HELM / "falachefe-operator" / "templates" / "crds"
#: Where Helm would install CRDs once and never upgrade them: must not exist.
OLD_OPERATOR_CRDS = HELM / "falachefe-operator" / "crds"
SCHEMA = HELM / "falachefe" / "values.schema.json"
FALACHEFE_CRD = "falachefe.io_falachefes.yaml"


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
        "title": "falachefe chart values (generated from the Falachefe CRD by helm/sync.py)",
        "type": "object",
        "additionalProperties": False,
        "required": ["spec"],
        "properties": {
            "global": {"type": "object", "description": "Helm's global values, shared with parent charts."},
            "name": {
                "type": "string",
                "maxLength": MAX_NAME_LENGTH,
                # Empty too: the release name.
                "pattern": f"^({NAME_PATTERN.removeprefix('^').removesuffix('$')})?$",
                "description": "The Falachefe's name; the release name when empty.",
            },
            "labels": {**string_map, "description": "Extra labels of the Falachefe."},
            "annotations": {**string_map, "description": "Annotations of the Falachefe."},
            "spec": spec,
        },
    }


def crd_template(name: str, crd: bytes) -> bytes:
    """crds/'s ``name`` as a chart template: Helm's metadata, then the CRD's spec as it is."""
    text = crd.decode()
    (document,) = [doc for doc in yaml.safe_load_all(text) if doc]
    _, separator, spec = text.partition("\nspec:\n")
    if not separator or "{{" in spec or "}}" in spec:
        raise ValueError(f"crds/{name}: expected a top-level spec: without template delimiters ({{{{ or }}}})")
    return (
        f"{{{{- /* Generated by helm/sync.py from crds/{name}: edit the operator's models, not this file. */}}}}\n"
        "{{- if .Values.crds.install }}\n"
        f"apiVersion: {document['apiVersion']}\n"
        f"kind: {document['kind']}\n"
        "metadata:\n"
        f"  name: {document['metadata']['name']}\n"
        "  labels:\n"
        '    {{- include "falachefe-operator.labels" . | nindent 4 }}\n'
        "  annotations:\n"
        "    # Uninstalling the chart never deletes the CRD (and with it every Falachefe).\n"
        "    helm.sh/resource-policy: keep\n"
        "spec:\n" + spec.rstrip("\n") + "\n{{- end }}\n"
    ).encode()


def crd_files() -> dict[str, bytes]:
    """crds/'s CustomResourceDefinition files, by name."""
    files = {}
    for path in sorted(CRDS.glob("*.yaml")):
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        if documents and all(doc.get("kind") == "CustomResourceDefinition" for doc in documents):
            files[path.name] = path.read_bytes()
    return files


def expected_files() -> dict[Path, bytes]:
    crds = crd_files()
    files = {OPERATOR_CRDS / name: crd_template(name, data) for name, data in crds.items()}
    crd = yaml.safe_load(crds[FALACHEFE_CRD])
    files[SCHEMA] = (json.dumps(values_schema(crd), indent=2) + "\n").encode()
    return files


def out_of_date() -> list[str]:
    """What differs from what crds/ says, as "path: why" lines."""
    problems = []
    expected = expected_files()
    for path, data in expected.items():
        if not path.is_file() or path.read_bytes() != data:
            problems.append(f"{path.relative_to(REPO)}: differs from what crds/ says")
    for path in OPERATOR_CRDS.iterdir():
        if path not in expected:
            problems.append(f"{path.relative_to(REPO)}: not a CRD of crds/")
    if OLD_OPERATOR_CRDS.exists():
        problems.append(f"{OLD_OPERATOR_CRDS.relative_to(REPO)}: Helm would install these once and never upgrade them")
    return problems


def write() -> None:
    OPERATOR_CRDS.mkdir(parents=True, exist_ok=True)
    expected = expected_files()
    for path in OPERATOR_CRDS.iterdir():
        if path not in expected:
            path.unlink()
    for path, data in expected.items():
        path.write_bytes(data)
    if OLD_OPERATOR_CRDS.exists():
        for path in OLD_OPERATOR_CRDS.iterdir():
            path.unlink()
        OLD_OPERATOR_CRDS.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="bring the charts up to date")
    action.add_argument("--check", action="store_true", help="fail if a chart is out of date")
    args = parser.parse_args(argv)
    if args.write:
        write()
        return 0
    problems = out_of_date()
    for problem in problems:
        sys.stderr.write(f"{problem}; run: python helm/sync.py --write\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
