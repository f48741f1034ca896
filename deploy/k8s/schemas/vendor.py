"""Regenerate the JSON schemas that kubeconform checks deploy/k8s/ against, offline.

Usage::

    python deploy/k8s/schemas/vendor.py --kubernetes-validate-wheel WHEEL --crds DIR

``WHEEL`` is the PyPI wheel ``kubernetes_validate-1.37.0-py3-none-any.whl``
(``pip download --no-deps kubernetes-validate==1.37.0``; Apache-2.0, Will Thames), whose
``v1.33.0-local-strict`` folder holds the Kubernetes 1.33.0 schemas made from the
Kubernetes OpenAPI document by openapi2jsonschema (one file per kind, ``$ref`` into a
shared ``_definitions.json``). ``DIR`` holds the CustomResourceDefinition YAML files of
the four operators at the pinned tags listed in ``SOURCES.md`` beside this script.

What it writes (and nothing else; the folder is otherwise hand-kept):

``kubernetes/<kind>-<group>-<version>.json``
    The kinds in :data:`KUBE_KINDS`, made standalone: every definition a kind reaches is
    copied into its own ``$defs`` and its ``$ref`` rewritten to ``#/$defs/...``, so that
    kubeconform needs no network (the wheel's ``$ref`` are relative to
    ``https://kubernetes.io/api/``). The schemas themselves are not changed.
``crds/<group>/<kind>_<version>.json``
    For every version of every CRD in ``DIR``: ``spec.versions[].schema.openAPIV3Schema``,
    converted the way kubeconform's ``scripts/openapi2jsonschema.py`` converts it
    (yannh/kubeconform, Apache-2.0): ``additionalProperties: false`` added to every
    object below the root that lists ``properties`` and says nothing of additional
    properties (kubectl's strict validation), and ``format: int-or-string`` replaced by
    ``oneOf: [string, integer]``. One deviation, on purpose: an object marked
    ``x-kubernetes-preserve-unknown-fields: true`` keeps accepting unknown fields, as the
    API server does.

Raises ``SystemExit`` with a message when a kind or a CRD file is missing.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import zipfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KUBE_VERSION = "v1.33.0"
KUBE_KINDS = ("configmap-v1", "secret-v1", "service-v1", "serviceaccount-v1", "namespace-v1",
              "deployment-apps-v1", "cronjob-batch-v1")
"""The Kubernetes kinds deploy/k8s uses (file stems of the kubernetes-validate wheel)."""


def _refs(node: object, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            found.add(ref.split("#/$defs/", 1)[1])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def _local(node: object) -> object:
    """``node`` with every ``.../_definitions.json#/$defs/X`` ref turned into ``#/$defs/X``."""
    if isinstance(node, dict):
        out = {k: _local(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            out["$ref"] = "#/$defs/" + ref.split("#/$defs/", 1)[1]
        return out
    if isinstance(node, list):
        return [_local(v) for v in node]
    return node


def standalone(kind: dict, definitions: dict) -> dict:
    """``kind`` with the definitions it reaches (transitively) in its own ``$defs``."""
    wanted: set[str] = set()
    _refs(kind, wanted)
    todo = list(wanted)
    while todo:
        name = todo.pop()
        more: set[str] = set()
        _refs(definitions[name], more)
        for m in more - wanted:
            wanted.add(m)
            todo.append(m)
    out = _local(kind)
    out.pop("$id", None)  # the refs are local now; an https $id would make them remote again
    out["$defs"] = {n: _local(definitions[n]) for n in sorted(wanted)}
    return out


def additional_properties(node: object, skip: bool = False) -> object:
    """kubeconform's openapi2jsonschema ``additional_properties`` (see the module doc)."""
    if isinstance(node, dict):
        if ("properties" in node and not skip and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for v in node.values():
            additional_properties(v)
    elif isinstance(node, list):
        for v in node:
            additional_properties(v)
    return node


def replace_int_or_string(node: object) -> object:
    """kubeconform's openapi2jsonschema ``replace_int_or_string``."""
    if isinstance(node, dict):
        if node.get("format") == "int-or-string":
            return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        return {k: replace_int_or_string(v) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_int_or_string(v) for v in node]
    return node


def convert_crd(crd: dict) -> dict[str, dict]:
    """``{"<group>/<kind>_<version>.json": schema}`` for every version of one CRD."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
    out = {}
    for version in crd["spec"]["versions"]:
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        schema = replace_int_or_string(additional_properties(schema, skip=True))
        out[f"{group}/{kind}_{version['name']}.json"] = schema
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kubernetes-validate-wheel", type=Path, required=True)
    ap.add_argument("--crds", type=Path, required=True, help="folder of CRD YAML files (searched recursively)")
    args = ap.parse_args(argv)
    prefix = f"kubernetes_validate/kubernetes-json-schema/{KUBE_VERSION}-local-strict/"
    with zipfile.ZipFile(args.kubernetes_validate_wheel) as whl:
        definitions = json.loads(whl.read(prefix + "_definitions.json"))["$defs"]
        kube = HERE / "kubernetes"
        kube.mkdir(exist_ok=True)
        for stem in KUBE_KINDS:
            try:
                kind = json.loads(whl.read(f"{prefix}{stem}.json"))
            except KeyError:
                raise SystemExit(f"{stem}.json is not in {args.kubernetes_validate_wheel.name}") from None
            (kube / f"{stem}.json").write_text(json.dumps(standalone(kind, definitions), indent=1) + "\n")
    files = sorted(args.crds.rglob("*.yaml"))
    if not files:
        raise SystemExit(f"no CRD YAML file under {args.crds}")
    for path in files:
        crd = yaml.safe_load(path.read_text())
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        for name, schema in convert_crd(crd).items():
            target = HERE / "crds" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(schema, indent=1) + "\n")
            print(f"wrote crds/{name}", file=sys.stderr)


if __name__ == "__main__":
    main()
