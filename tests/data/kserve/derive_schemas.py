"""Write the JSON Schemas the KServe manifests are checked against, from the kserve package.

The kserve SDK (PyPI ``kserve``) carries KServe's API types as generated model classes, with the
Kubernetes ones from the ``kubernetes`` client: each class lists its fields (``attribute_map``:
the YAML names), their types (``openapi_types``) and, in its pydantic fields or its setters,
which ones must be given. This turns the classes reachable from ServingRuntime and
InferenceService into one JSON Schema each, strict as ``kubectl apply`` is with server-side
field validation: an unknown field is an error. Run it with a Python that has kserve, such as
the one ``bash benchmarks/setup_kserve.sh`` makes, after a change to the manifests' kinds or a
new KServe release::

    benchmarks/.venv-kserve/bin/python tests/data/kserve/derive_schemas.py tests/data/kserve
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
import sys
from pathlib import Path

import kserve.models
import kubernetes.client

ROOTS = {"servingruntime": "V1alpha1ServingRuntime", "inferenceservice": "V1beta1InferenceService"}
SCALARS = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "object": {},  # int-or-string (ports, quantities) or free-form
}


def model_class(name: str):
    """The class, or None where the SDK names a type it does not ship (V1alpha1WorkerSpec)."""
    for module in (kserve.models, kubernetes.client):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def required_fields(cls) -> list[str]:
    """Fields that must be given: pydantic's word (kubernetes), or a setter that refuses None."""
    if hasattr(cls, "model_fields"):
        fields = cls.model_fields
        return sorted(
            cls.attribute_map[a]
            for a in cls.attribute_map
            if a.lstrip("_") in fields and fields[a.lstrip("_")].is_required()
        )
    required = []
    for attr, field in cls.attribute_map.items():
        setter = getattr(cls, attr).fset
        if setter and "must not be `None`" in inspect.getsource(setter):
            required.append(field)
    return sorted(required)


def type_schema(text: str, pending: list[str]) -> dict:
    text = text.strip()
    if text in SCALARS:
        return dict(SCALARS[text])
    if m := re.fullmatch(r"[Ll]ist\[(.+)\]", text):
        return {"type": "array", "items": type_schema(m[1], pending)}
    if m := re.fullmatch(r"(?:dict\(|Dict\[)str, (.+)[)\]]", text):
        return {"type": "object", "additionalProperties": type_schema(m[1], pending)}
    pending.append(text)
    return {"$ref": f"#/$defs/{text}"}


def schema_for(root: str) -> dict:
    defs: dict[str, dict] = {}
    pending = [root]
    while pending:
        name = pending.pop()
        if name in defs:
            continue
        cls = model_class(name)
        if cls is None:
            defs[name] = {"type": "object", "description": "not in the SDK: not checked"}
            continue
        properties = {
            cls.attribute_map[attr]: type_schema(kind, pending)
            for attr, kind in sorted(cls.openapi_types.items())
        }
        defs[name] = {
            "type": "object",
            "properties": properties,
            "required": required_fields(cls),
            "additionalProperties": False,
        }
    versions = {p: importlib.metadata.version(p) for p in ("kserve", "kubernetes")}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": f"{root}, derived from the model classes of "
        + ", ".join(f"{p} {v}" for p, v in versions.items())
        + " (PyPI) by derive_schemas.py",
        "$ref": f"#/$defs/{root}",
        "$defs": dict(sorted(defs.items())),
    }


def main(out_dir: str) -> None:
    for stem, root in ROOTS.items():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / f"{stem}.schema.json"
        path.write_text(json.dumps(schema_for(root), indent=1, sort_keys=False) + "\n")
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
