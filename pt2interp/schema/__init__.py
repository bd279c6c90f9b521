"""The typed model of an exported program, and how it is read from the archive's JSON.

Nothing here imports torch. :func:`parse_exported_program` turns the program JSON (after
:func:`pt2interp.versions.normalize` has rewritten what older releases wrote into the newest
form) into the frozen dataclasses of :mod:`.model`; unknown fields are ignored, and anything
that cannot be understood raises :class:`~pt2interp.errors.SchemaError` naming the member, the
JSON path and the field.

One job per module:

* :mod:`.model`: the dataclasses (``ExportedProgramModel``, ``Graph``, ``Node``, ``Argument``...).
* :mod:`.parser`: the checked parser, which names the JSON path of any error.
* :mod:`.fastpath`: the plain shapes nearly every node, argument and tensor meta comes in,
  read without building paths; anything else goes to the checked parser.
* :mod:`.module_stack`: a node's ``nn_module_stack`` string.
"""

from pt2interp.schema.model import (
    Argument,
    CustomObjRef,
    Device,
    ExportedProgramModel,
    Graph,
    GraphArgument,
    GraphSignature,
    InputSpec,
    ModuleCallEntry,
    ModuleCallSignature,
    NamedArgument,
    Node,
    OutputSpec,
    PayloadMeta,
    RangeConstraint,
    Ref,
    SymExpr,
    SymInt,
    TensorMeta,
    static_nbytes,
    static_numel,
)
from pt2interp.schema.module_stack import ModuleFrame, normalize_module_path, parse_nn_module_stack
from pt2interp.schema.parser import parse_exported_program, parse_payload_config, schema_version_of

__all__ = [
    "Argument",
    "CustomObjRef",
    "Device",
    "ExportedProgramModel",
    "Graph",
    "GraphArgument",
    "GraphSignature",
    "InputSpec",
    "ModuleCallEntry",
    "ModuleCallSignature",
    "ModuleFrame",
    "NamedArgument",
    "Node",
    "OutputSpec",
    "PayloadMeta",
    "RangeConstraint",
    "Ref",
    "SymExpr",
    "SymInt",
    "TensorMeta",
    "normalize_module_path",
    "parse_exported_program",
    "parse_nn_module_stack",
    "parse_payload_config",
    "schema_version_of",
    "static_nbytes",
    "static_numel",
]
