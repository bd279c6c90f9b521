"""The program a user holds: the typed graph plus lazily materialized weights.

Reading a :class:`Program` parses the JSON only; torch is imported the first time weights
are asked for (:meth:`Program.state_dict`, :meth:`Program.constants`).

>>> import pt2interp, sys, importlib.resources as r
>>> prog = pt2interp.read_program(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> prog.layout, prog.schema_version >= (8, 0), len(prog.graph.nodes) > 0
('pt2', True, True)
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import TYPE_CHECKING, Any, BinaryIO

from pt2interp import jsontext, limits
from pt2interp.archive import (
    LEGACY_EXAMPLE_INPUTS,
    LEGACY_PROGRAM,
    LEGACY_VERSION,
    PT2_MODELS_DIR,
    PT2_SAMPLE_INPUTS_DIR,
    Archive,
    open_archive,
)
from pt2interp.errors import LimitError, SchemaError, WeightError
from pt2interp.kinds import InputKind
from pt2interp.schema import (
    ExportedProgramModel,
    PayloadMeta,
    parse_exported_program,
    parse_payload_config,
)
from pt2interp.zipdir import MAX_COMPRESSION_RATIO

if TYPE_CHECKING:
    import torch


class Program:
    """An exported program read from a ``.pt2`` archive.

    Attributes: ``archive``, ``model_name``, ``model`` (:class:`ExportedProgramModel`),
    ``layout``, ``schema_version``, ``torch_version``, ``source``.
    """

    def __init__(self, archive: Archive, model_name: str, model: ExportedProgramModel):
        self.archive = archive
        self.model_name = model_name
        self.model = model
        self._weights = None

    # -- facts -----------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self.archive.source

    @property
    def layout(self) -> str:
        return self.archive.layout

    @property
    def schema_version(self) -> tuple[int, int]:
        return self.model.schema_version

    @property
    def torch_version(self) -> str | None:
        return self.model.torch_version

    @property
    def graph(self):
        return self.model.graph

    @property
    def signature(self):
        return self.model.signature

    # -- weights ---------------------------------------------------------------------
    def _loaded(self):
        if self._weights is None:
            from pt2interp.weights import read_state_tensors

            self._weights = read_state_tensors(self.archive, self.model_name)
        return self._weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` keyed like the exporting module's ``state_dict()``: parameters
        and persistent buffers, in graph order, then the names the stored state dict holds
        beyond the graph signature (see :meth:`aliases`)."""
        w = self._loaded()
        out = {}
        for spec in self.signature.input_specs:
            if spec.kind is InputKind.PARAMETER or (
                spec.kind is InputKind.BUFFER and spec.persistent is not False
            ):
                out[spec.target] = self._lookup(spec.target, w)
        for name, value in w.tensors.items():
            out.setdefault(name, value)
        return out

    def aliases(self) -> dict[str, str]:
        """``{name: signature name}`` for stored state-dict names the graph signature leaves
        out that are the very same tensor as a name it lists (a tied parameter: torch 2.5 to
        2.7 lift one name of a tied pair into the graph and pickle the state dict with both).

        >>> import pt2interp, importlib.resources as r
        >>> pt2interp.read_program(r.files("pt2interp.examples") / "tiny_mlp.pt2").aliases()
        {}
        """
        w = self._loaded()
        listed = {s.target for s in self.signature.input_specs if s.target is not None}
        first_of = {}
        for name, value in w.tensors.items():
            if name in listed:
                first_of.setdefault(view_key(value), name)
        return {
            name: first_of[view_key(value)]
            for name, value in w.tensors.items()
            if name not in listed and view_key(value) in first_of
        }

    def parameter_names(self) -> list[str]:
        return [s.target for s in self.signature.inputs_of(InputKind.PARAMETER)]

    def buffer_names(self, persistent_only: bool = False) -> list[str]:
        return [
            s.target
            for s in self.signature.inputs_of(InputKind.BUFFER)
            if not persistent_only or s.persistent is not False
        ]

    def constants(self) -> dict[str, Any]:
        """Tensor constants, non-persistent buffers and opaque objects, by name."""
        return dict(self._loaded().constants)

    def tensor(self, name: str) -> torch.Tensor:
        """One parameter, buffer or constant by its state-dict name."""
        return self._lookup(name, self._loaded())

    def _lookup(self, name: str, w) -> Any:
        if name in w.tensors:
            return w.tensors[name]
        if name in w.constants:
            return w.constants[name]
        from pt2interp.errors import WeightError

        raise WeightError(
            f"{self.source}: the graph signature names {name!r}, "
            f"but the archive stores no weight or constant of that name"
        )

    def example_inputs(self) -> tuple[tuple, dict] | None:
        """The sample inputs stored at export time, as ``(args, kwargs)``, if any."""
        from pt2interp.weights import load_pickled

        member = (
            LEGACY_EXAMPLE_INPUTS
            if self.layout == "legacy"
            else f"{PT2_SAMPLE_INPUTS_DIR}{self.model_name}.pt"
        )
        if not self.archive.has(member) or self.archive.info(member).size == 0:
            return None
        obj = load_pickled(self.archive, member)
        if (
            isinstance(obj, tuple)
            and len(obj) == 2
            and isinstance(obj[0], (tuple, list))
            and isinstance(obj[1], dict)
        ):
            return tuple(obj[0]), dict(obj[1])
        return None

    def __repr__(self) -> str:
        v = ".".join(map(str, self.schema_version))
        return (
            f"<Program {self.source!r} model={self.model_name!r} layout={self.layout} schema={v} "
            f"torch={self.torch_version or '?'} nodes={len(self.graph.nodes)}>"
        )


def view_key(t) -> tuple:
    """Equal for tensors that are the very same view of one storage."""
    if not hasattr(t, "untyped_storage") or t.numel() == 0:
        return (id(t),)  # not a tensor, or empty: shares no data, whatever its pointer says
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


@contextlib.contextmanager
def collector_paused():
    """Pause the cyclic garbage collector while a program is parsed.

    Parsing builds hundreds of thousands of small acyclic objects, each allocation counting
    towards a collection that finds nothing to free; pausing it makes loading about a third
    faster. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_payload_config(archive: Archive, config_member: str) -> dict[str, PayloadMeta]:
    """``<model>_weights_config.json`` / ``_constants_config.json`` (torch 2.9+), parsed.

    Shared by the torch and numpy weight readers and by ``read_schema``, none of which may
    pull in the others' dependencies."""
    text = archive.read_text(config_member)
    try:
        doc = jsontext.loads(text)
    except ValueError as exc:
        raise WeightError(
            f"{archive.source}: {archive.member_path(config_member)} is not valid JSON: {exc}"
        ) from None
    return parse_payload_config(doc, archive.member_path(config_member))


def read_program(
    source: str | os.PathLike | BinaryIO | Archive,
    model: str | None = None,
    *,
    outline: bool = False,
    verify: bool = True,
) -> Program:
    """Read the typed program of one model in a ``.pt2`` (weights stay on disk until asked for).

    ``model`` picks one of an archive's models by name; with several and none named, the
    one called ``model`` is taken, else an error lists the names. ``outline=True`` skips
    node arguments (see :func:`~pt2interp.schema.parse_exported_program`): for describing a
    program, not running it. ``verify=False`` skips the CRC-32 check of weight records mapped
    from the file (about 0.25 s per GB), for a file you trust.
    """
    with collector_paused():
        return _read_program(source, model, outline, verify)


def _read_program(source, model: str | None, outline: bool, verify: bool = True) -> Program:
    archive = source if isinstance(source, Archive) else open_archive(source, verify=verify)
    name = _pick_model(archive, model)
    member = LEGACY_PROGRAM if archive.layout == "legacy" else f"{PT2_MODELS_DIR}{name}.json"
    full = archive.member_path(member)
    info, budget = archive.info(member), limits.current().max_program_bytes
    bomb = not info.stored and info.size > max(info.compressed_size, 1) * MAX_COMPRESSION_RATIO
    if info.size > budget and not bomb:  # a bomb gets the archive's own error, from read_text
        raise LimitError(
            f"{archive.source}: {full} is {info.size} bytes, over the {budget} a program "
            "may take (parsing costs about ten times that in memory)",
            limit="max_program_bytes",
        )
    text = archive.read_text(member)
    try:
        doc = jsontext.loads(text)
    except jsontext.NestingError as exc:
        raise SchemaError(str(exc), member=full, path="$") from None
    except ValueError as exc:
        raise SchemaError(f"invalid JSON: {exc}", member=full, path="$") from None
    _check_legacy_version_member(archive, doc, full)
    return Program(archive, name, parse_exported_program(doc, full, outline=outline))


def _pick_model(archive: Archive, model: str | None) -> str:
    names = archive.model_names
    if model is not None:
        if model not in names:
            raise SchemaError(
                f"{archive.source}: no model named {model!r}; the archive holds {names}"
            )
        return model
    if len(names) == 1:
        return names[0]
    if "model" in names:
        return "model"
    raise SchemaError(
        f"{archive.source}: the archive holds several models {names}; pick one with model=..."
    )


def _check_legacy_version_member(archive: Archive, doc: Any, member: str) -> None:
    # The legacy `version` member must agree with the JSON; a disagreement means a mangled file.
    if archive.layout != "legacy" or not archive.has(LEGACY_VERSION) or not isinstance(doc, dict):
        return
    text = archive.read(LEGACY_VERSION, limit=64).decode("ascii", "replace").strip()
    sv = doc.get("schema_version")
    if (
        isinstance(sv, dict)
        and text
        and text.split(".")[0].isdigit()
        and int(text.split(".")[0]) != sv.get("major")
    ):
        raise SchemaError(
            f"the archive's version member says {text!r} but the program declares schema "
            f"{sv.get('major')}.{sv.get('minor')}",
            member=member,
            path="schema_version",
        )
