"""The ``pt2interp`` command line.

Errors from an archive print as one line and exit with status 1 (``--debug`` shows the
traceback). Subcommands that only read a program never import torch.

Names, versions, targets and error messages are file content. Whatever a subcommand prints of
them goes through :func:`shown` (and, in rich output, is plain :class:`rich.text.Text`, never
markup): no file can style, move or retitle the terminal, or make printing fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

from pt2interp.errors import Pt2Error
from pt2interp.kinds import ArgKind, InputKind
from pt2interp.printable import printable
from pt2interp.units import human_bytes

_MAX_SHOWN = 300  # characters of one name in a table or output line
_MAX_ERROR_LINE = 2000  # characters of an error message


def shown(text: object, limit: int = _MAX_SHOWN) -> str:
    r"""Archive text as the command line prints it: cut at ``limit`` characters (saying how
    many more there were), control, bidi and surrogate characters escaped (:func:`printable`).

    >>> shown("fc1\x1b[2J\u202egnp.exe\ud800 [bold]")
    'fc1\\x1b[2J\\u202egnp.exe\\ud800 [bold]'
    >>> shown("é∈1..8 layer.0", limit=5)
    'é∈1..… (9 more characters)'
    """
    s = str(text)
    if len(s) > limit:
        s = f"{s[:limit]}… ({len(s) - limit:,} more characters)"
    return printable(s)


# json.dumps escapes C0 controls itself; with ensure_ascii=False the rest it writes raw
_NOT_ASCII_OR_DEL = re.compile("[\x7f-\U0010ffff]")


def json_printable(document: str) -> str:
    r"""JSON text with the characters :func:`printable` escapes written as JSON ``\u``
    escapes: the same document, safe for a terminal.

    >>> json_printable('{"name": "a\\u001b\u202e\ud800∈"}')
    '{"name": "a\\u001b\\u202e\\ud800∈"}'
    """
    return _NOT_ASCII_OR_DEL.sub(_json_escaped, document)


def _json_escaped(match: re.Match) -> str:
    ch = match.group()
    if printable(ch) == ch:
        return ch
    code = ord(ch)
    if code > 0xFFFF:  # JSON spells characters beyond the BMP as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"
    return f"\\u{code:04x}"


def _import_torch(args) -> None:
    """Import torch for a subcommand that needs it, saying so on a terminal meanwhile (it takes
    seconds); a missing torch is one line saying what to install."""
    if "torch" in sys.modules:
        return
    from rich.console import Console

    console = Console(stderr=True)
    try:
        if console.is_terminal:
            with console.status(f"importing torch for `pt2interp {args.command}`…", spinner="dots"):
                import torch
        else:
            import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise _MissingDependency(
            "torch", f"`pt2interp {args.command}` needs torch: pip install torch"
        ) from None


class _MissingDependency(Pt2Error):
    def __init__(self, module: str, message: str):
        super().__init__(message)
        self.module = module


# an optional package a subcommand imports -> the line saying what to install
_INSTALL_HINTS = {
    "torch": "needs torch: pip install torch",
    "uvicorn": "needs the serve extras: pip install 'pt2interp[serve]'",
    "fastapi": "needs the serve extras: pip install 'pt2interp[serve]'",
    "prometheus_client": "needs the serve extras: pip install 'pt2interp[serve]'",
    "httpx": "needs the serve extras: pip install 'pt2interp[serve]'",
    "grpc": "needs the serve extras: pip install 'pt2interp[serve]'",
    "google": "needs the serve extras: pip install 'pt2interp[serve]'",
    "ray": "needs Ray Serve: pip install 'pt2interp[ray]'",
}


def _example_path() -> Path:
    from importlib.resources import files

    return Path(str(files("pt2interp.examples") / "tiny_mlp.pt2"))


def cmd_demo(args) -> int:
    """Load the bundled example, run it on its stored inputs and compare with torch itself
    (bit for bit, in this process) and with the outputs stored beside it."""
    _import_torch(args)
    import numpy as np
    import torch

    import pt2interp

    path = _example_path()
    prog = pt2interp.read_program(path)
    print(
        f"archive   {path.name}: layout {prog.layout}, "
        f"schema {'.'.join(map(str, prog.schema_version))}, "
        f"written by torch {prog.torch_version}"
    )
    print(f"graph     {len(prog.graph.nodes)} nodes, {len(prog.state_dict())} weights")
    loaded = pt2interp.load(path)
    ref = np.load(path.with_suffix(".npz"))
    x = torch.from_numpy(ref["in_0"])
    out = loaded(x)
    print(f"run       input {list(x.shape)} {x.dtype} -> output {list(out.shape)} {out.dtype}")
    print(f"output    {_preview(out)}")
    ok = True
    torch_out, why_not = _torch_export_output(path, x)
    if torch_out is None:
        print(f"torch     not compared: {why_not}")
    else:
        same = torch.equal(out, torch_out)
        ok = same
        print(
            f"torch     torch.export.load(...).module() here: "
            f"{'equal, bit for bit' if same else 'DIFFERENT: ' + _max_diff(out, torch_out)}"
        )
    # computed when the example was made, maybe on another CPU: equal to float32 rounding
    stored = torch.from_numpy(ref["out"])
    close = torch.allclose(out, stored, rtol=1e-5, atol=1e-6)
    ok = ok and close
    if torch.equal(out, stored):
        verdict = "equal, bit for bit"
    else:
        verdict = "equal within 1e-5" if close else "DIFFERENT: " + _max_diff(out, stored)
    print(f"stored    the example's reference output: {verdict}")
    return 0 if ok else 1


def _torch_export_output(path: Path, x):
    """torch's own loader on the example, or None and why it cannot (another schema major)."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.export.load(path).module()
        with torch.no_grad():
            return module(x), None
    except Exception as exc:  # noqa: BLE001 (torch's loader raises many kinds)
        return None, f"torch {torch.__version__} cannot load it ({type(exc).__name__})"


def _max_diff(a, b) -> str:
    return f"max abs diff {(a.double() - b.double()).abs().max().item():.3g}"


def cmd_run(args) -> int:
    _import_torch(args)
    import torch

    import pt2interp

    prog = pt2interp.load(args.file, device=args.device, model=args.model)
    call_args, call_kwargs = _inputs_for(prog, args)
    out = prog(*call_args, **call_kwargs)
    named = prog.named_outputs(out)
    for key, value in named.items():
        # keys are the file's (output dict keys); values may be strings it holds
        if isinstance(value, torch.Tensor):
            print(
                f"{shown(key)}: tensor {list(value.shape)} "
                f"{str(value.dtype).replace('torch.', '')} {value.device} {_preview(value)}"
            )
        else:
            print(f"{shown(key)}: {type(value).__name__} {shown(_value_text(value))}")
    if args.output:
        from safetensors.torch import save_file

        from pt2interp.files import as_created_file

        tensors = {
            k: v.detach().cpu().contiguous()
            for k, v in named.items()
            if isinstance(v, torch.Tensor)
        }
        save_file(tensors, args.output)
        as_created_file(args.output)
        print(f"wrote {len(tensors)} tensors to {args.output}")
    fb = prog.fallback_ops()
    if fb:
        print(
            "ops run through the generic torch.ops fallback: "
            f"{shown(', '.join(fb), _MAX_ERROR_LINE)}",
            file=sys.stderr,
        )
    return 0


def _value_text(value) -> str:
    # repr() of an int stops at 4300 digits; sym-int outputs are the file's arithmetic
    if isinstance(value, int) and value.bit_length() > 4096:
        return f"<an integer of {value.bit_length()} bits>"
    return repr(value)


def _inputs_for(prog, args):
    import torch

    if args.inputs:
        values = _read_tensor_file(args.inputs)
        outputs = set(
            prog.output_names
        )  # a fixture's npz holds its reference outputs beside the inputs
        return prog.bind_named({k: v for k, v in values.items() if k not in outputs})
    if args.random:
        return prog.bind_named(_random_inputs(prog))
    sample = prog.program.example_inputs()
    if sample is None:
        raise Pt2Error(
            f"{args.file}: the archive stores no sample inputs; pass --inputs FILE or --random"
        )
    a, kw = sample
    return tuple(x.to(prog.device) if isinstance(x, torch.Tensor) else x for x in a), kw


def _read_tensor_file(path: str) -> dict:
    """Tensors by name from .npz, .safetensors or .pt (a dict of tensors, read with
    ``weights_only=True``: never arbitrary code)."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        if path.endswith(".npz"):
            import numpy as np

            with np.load(path, allow_pickle=False) as npz:
                return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
        if path.endswith((".pt", ".pth")):
            values = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
                raise Pt2Error(
                    f"{path}: a .pt inputs file must hold a dict of input name -> tensor, "
                    f"not {type(values).__name__}"
                )
            return values
    except (OSError, ValueError, RuntimeError) as exc:
        raise Pt2Error(f"{path}: cannot read inputs: {exc}") from None
    raise Pt2Error(f"{path}: inputs must be a .npz, .safetensors or .pt file")


# A recorded shape is a claim made by the file: random inputs beyond this are refused.
_MAX_RANDOM_ELEMENTS = 1 << 28


def _random_inputs(prog) -> dict:
    """A random value for every input, positional and keyword, by name: the recorded dtype, and
    the recorded example size of each dimension (within its dynamic range)."""
    import torch

    from pt2interp.weights import torch_dtype

    model = prog.program.model
    leaves = [s for s in model.signature.input_specs if s.kind.is_passed]
    out = {}
    for (name, _keyword), spec in zip(prog.input_names, leaves):
        if spec.kind is InputKind.CONSTANT_INPUT:
            continue  # the recorded constant is the default
        if spec.arg.kind is not ArgKind.TENSOR:
            raise Pt2Error(
                f"--random cannot make a value for input {shown(name)!r} ({spec.arg.kind}); "
                f"pass --inputs with real data instead"
            )
        meta = model.graph.tensor_values.get(spec.arg.value.name)
        if meta is None:
            raise Pt2Error(f"--random: the archive records no shape for input {shown(name)!r}")
        shape = meta.example_sizes(unknown=2)
        if not _small_shape(shape):
            raise Pt2Error(
                f"--random: input {shown(name)!r} would have more than "
                f"{_MAX_RANDOM_ELEMENTS:,} elements (or a negative size) in its recorded shape; "
                "pass --inputs with real data instead"
            )
        dtype = torch_dtype(meta.dtype, where=f"--random: input {shown(name)!r}: ")
        try:
            if dtype.is_floating_point or dtype.is_complex:
                out[name] = torch.randn(shape, dtype=dtype)
            elif dtype == torch.bool:
                out[name] = torch.rand(shape) > 0.5
            else:
                out[name] = torch.randint(0, 2, shape, dtype=dtype)
        except (RuntimeError, TypeError) as exc:  # a dtype torch makes no random values of
            raise Pt2Error(
                f"--random: cannot make input {shown(name)!r} of {dtype}: {exc}"
            ) from None
    return out


def _small_shape(shape: list[int]) -> bool:
    """Sizes a file recorded, within _MAX_RANDOM_ELEMENTS; multiplied only while they are
    (a file's hints may be thousands of digits long, or thousands of them)."""
    if any(s < 0 for s in shape):
        return False
    if 0 in shape:
        return True
    n = 1
    for s in shape:
        n *= s
        if n > _MAX_RANDOM_ELEMENTS:
            return False
    return True


def _preview(t, n: int = 4) -> str:
    flat = t.detach().reshape(-1)[:n].float().tolist()
    return "[" + ", ".join(f"{v:.4g}" for v in flat) + (", ...]" if t.numel() > n else "]")


def cmd_info(args) -> int:
    """Describe an archive: rich tables for people, ``--json`` for programs. Never imports torch
    (unless ``--check-ops`` asks whether this torch has every op)."""
    if args.check_ops:
        _import_torch(args)
    schema, plan = _describe(args, check_ops=True if args.check_ops else None)
    if args.json:
        doc = schema.to_dict()
        doc["cuda_graphs"] = plan.to_dict() if plan is not None else None
        print(json_printable(json.dumps(doc, indent=2, ensure_ascii=False)))
        return 0
    _print_schema(schema)
    _print_capture_plan(plan)
    return 0


def _describe(args, check_ops: bool | None):
    """The description, and whether the program can run as CUDA graphs, from one reading of
    the program whole. The plan needs the nodes' arguments; a program that cannot be read
    whole (a value running never would, which the description tolerates) is described from an
    outline instead, and has no plan."""
    import pt2interp
    from pt2interp.capture_plan import plan_capture
    from pt2interp.introspect import describe_program
    from pt2interp.program import collector_paused, read_program

    try:
        with collector_paused():
            program = read_program(args.file, model=args.model)
            return describe_program(program, check_ops=check_ops), plan_capture(program.model)
    except Pt2Error:
        return pt2interp.read_schema(args.file, model=args.model, check_ops=check_ops), None


def _print_capture_plan(plan) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    if plan is None:
        console.print("CUDA graphs: not decided (the program cannot be read to run)")
    elif plan.verdict == "whole":
        console.print(
            "CUDA graphs: the whole program can be captured (load(..., cuda_graphs=True))"
        )
    else:
        if plan.verdict == "segments":
            parts = [f"nodes {a}-{b - 1}" for a, b in plan.captured] + [
                f"{name} of node {i}" for i, name in plan.captured_subgraphs
            ]
            what = (
                f"runs {len(parts)} part(s) as graphs of their own ({', '.join(parts)}) and "
                "the rest eagerly, because"
            )
        else:
            what = "runs eagerly, because"
        console.print(Text.assemble(("CUDA graphs", "yellow"), f": {what}"))
        for reason in plan.reasons:
            console.print(Text(f"  {shown(reason, _MAX_ERROR_LINE)}"))


def _print_schema(schema) -> None:
    """The rich rendering of a :class:`~pt2interp.introspect.ProgramSchema`. Every string the
    archive supplied goes in as :func:`shown` (plain text, never markup, never raw controls)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # piped output: do not squeeze tables to 80 columns
    t = schema.totals
    arch = schema.archive
    console.print(
        Text.assemble(
            (printable(schema.source), "bold"),
            f": {arch.kind} layout",
            f" (top folder {shown(repr(arch.top))})" if arch.top else "",
            f", {arch.members} members"
            + (f", {human_bytes(arch.file_bytes)}" if arch.file_bytes else ""),
        )
    )
    console.print(
        Text(
            f"schema {'.'.join(map(str, schema.schema_version))}, written by torch "
            f"{shown(schema.torch_version or 'unknown')}, IR {shown(schema.dialect)}, "
            f"model {shown(repr(schema.model))}"
        )
    )
    by_dtype = (
        ", ".join(f"{shown(k)} {human_bytes(v)}" for k, v in t.bytes_by_dtype.items()) or "none"
    )
    console.print(
        Text(
            f"{t.parameter_count:,} parameters ({human_bytes(t.parameter_bytes)}), "
            f"{t.buffer_count} buffers ({human_bytes(t.buffer_bytes)}), "
            f"{len(schema.constants)} constants; "
            f"bytes by dtype: {by_dtype}"
        )
    )
    for group in t.tied:
        console.print(Text(f"tied: {' = '.join(shown(name) for name in group)}"))

    io_table = Table(title="Inputs and outputs", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("", "name", "kind", "dtype", "shape"):
        io_table.add_column(col)
    for direction, values in (("in", schema.inputs), ("out", schema.outputs)):
        for v in values:
            tensor = v.tensor
            kind = v.kind + (" (keyword)" if v.keyword else "")
            shape = tensor.shape_str if tensor else ("" if v.value is None else str(v.value))
            io_table.add_row(
                direction, *_cells(v.name, kind, tensor.dtype if tensor else "", shape)
            )
        io_table.add_section()
    console.print(io_table)

    weights = schema.weights()
    if weights:
        w_table = Table(
            title="Parameters, buffers and constants by module",
            box=box.SIMPLE_HEAD,
            title_justify="left",
        )
        for col, justify in (
            ("module", "left"),
            ("class", "left"),
            ("name", "left"),
            ("kind", "left"),
            ("shape", "left"),
            ("dtype", "left"),
            ("bytes", "right"),
        ):
            w_table.add_column(col, justify=justify)
        classes = {m.fqn: m.class_name for m in schema.module_tree.walk()}
        order = {m.fqn: i for i, m in enumerate(schema.module_tree.walk())}
        last = None
        for w in sorted(
            weights, key=lambda w: order.get(w.module, len(order))
        ):  # stable: keeps file order
            first = w.module != last
            kind = w.kind + (" (not persistent)" if w.persistent is False else "")
            kind += f" = {w.tied_to}" if w.tied_to else ""
            w_table.add_row(
                *_cells(
                    w.module or "(root)" if first else "",
                    (classes.get(w.module) or "") if first else "",
                    w.name.rpartition(".")[2],
                    kind,
                    w.tensor.shape_str if w.tensor else (w.class_fqn or ""),
                    w.tensor.dtype if w.tensor else "",
                    f"{w.nbytes:,}" if w.nbytes is not None else "",
                )
            )
            last = w.module
        console.print(w_table)

    ops = Table(title="Op histogram", box=box.SIMPLE_HEAD, title_justify="left")
    ops.add_column("target")
    ops.add_column("count", justify="right")
    for name in schema.subgraph_ops:
        ops.add_column(Text(f"in {shown(name)}"), justify="right")
    for target, count in schema.op_histogram.items():
        ops.add_row(
            *_cells(target.removeprefix("torch.ops.")),
            str(count),
            *(str(sub.get(target, "")) for sub in schema.subgraph_ops.values()),
        )
    console.print(ops)

    def label(m) -> Text:
        return Text.assemble(
            shown(m.name or "(root)"),
            (f" {shown(m.class_name)}" if m.class_name else "", "cyan"),
            f"  {m.parameter_count:,} params" if m.parameter_count else "",
        )

    def add(node, branch) -> None:
        for child in node.children:
            add(child, branch.add(label(child)))

    tree = Tree(label(schema.module_tree))
    add(schema.module_tree, tree)
    console.print("Module tree")
    console.print(tree)

    for where, why in schema.unreadable.items():
        console.print(
            Text.assemble(
                ("not read", "yellow"),
                f" (not needed to describe the program): "
                f"{shown(where)}: {shown(why, _MAX_ERROR_LINE)}",
            )
        )
    if schema.missing_ops is None:
        console.print(
            "ops this torch lacks: not checked (torch is not imported; --check-ops imports it)"
        )
    elif schema.missing_ops:
        console.print(
            Text.assemble(
                ("ops this torch lacks", "red"), f": {shown(', '.join(schema.missing_ops))}"
            )
        )
    else:
        console.print("ops this torch lacks: none")


def _cells(*values: object) -> list:
    from rich.text import Text

    return [Text(shown(v)) for v in values]


def cmd_weights(args) -> int:
    """Write an archive's weights to safetensors (and/or npz) without importing torch."""
    import pt2interp
    from pt2interp.extract import save_safetensors

    if not args.output and not args.numpy:
        raise Pt2Error("nothing to write: give -o FILE.safetensors and/or --numpy FILE.npz")
    if args.output:
        saved = save_safetensors(
            args.file,
            args.output,
            model=args.model,
            include_buffers=not args.no_buffers,
            include_constants=args.constants,
        )
        tied = f", {len(saved.aliases)} tied name(s) recorded as aliases" if saved.aliases else ""
        print(
            f"wrote {len(saved.tensors)} tensors{tied} to {saved.path} "
            f"({human_bytes(saved.nbytes)})"
        )
    if args.numpy:
        import json

        import numpy as np

        weights = pt2interp.extract_weights(
            args.file,
            backend="numpy",
            model=args.model,
            include_buffers=not args.no_buffers,
            include_constants=args.constants,
        )
        # npz members are plain .npy files; the torch dtype names travel as one JSON string
        np.savez(args.numpy, **weights, __torch_dtypes__=np.array(json.dumps(weights.dtypes)))
        raw = (
            f" ({len(weights.raw_bits)} as raw bits, see __torch_dtypes__)"
            if weights.raw_bits
            else ""
        )
        print(f"wrote {len(weights)} arrays{raw} to {args.numpy}")
    return 0


@contextlib.contextmanager
def _sigterm_ends_quietly():
    """SIGTERM handled by returning (in the main thread; elsewhere signals are not ours)."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _threads_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}")
    return value


def _serve_targets(specs: list[str]) -> list[tuple[str, str]]:
    """(name, path) of each archive to serve; name "" for the file's stem.

    NAME=PATH names a model. PATH may be a directory, as a model store mounts one (KServe puts
    a storageUri's contents at /mnt/models): the .pt2 files directly in it are served, and
    NAME=DIR must hold exactly one, so a runtime can name the model without knowing the file.
    """
    targets = []
    for spec in specs:
        name, _, path = (
            spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        )
        if not Path(path).is_dir():
            targets.append((name, path))
            continue
        found = sorted(str(p) for p in Path(path).glob("*.pt2") if p.is_file())
        if not found:
            raise Pt2Error(f"{path}: a directory with no .pt2 file in it")
        if name and len(found) > 1:
            listed = ", ".join(Path(f).name for f in found)
            raise Pt2Error(f"{path}: holds several .pt2 files ({listed}): name one as {name}=FILE")
        targets.extend((name, f) for f in found)
    return targets


def _model_specs(files: list[str]) -> list[tuple[str, str]]:
    """``[(name, path)]`` for serve's FILE arguments: NAME=PATH names a model, else its stem."""
    return [(name or Path(path).stem, path) for name, path in _serve_targets(files)]


def cmd_serve(args) -> int:
    """Serve one or more archives over HTTP (Open Inference Protocol v2, /metrics, status page)."""
    if args.ray:
        if args.grpc_port is not None:
            raise Pt2Error("--grpc-port does not go with --ray: Ray's proxy serves HTTP only")
        if args.cuda_graphs:
            raise Pt2Error("--cuda-graphs does not go with --ray yet: serve without --ray")
        return _serve_on_ray(args)
    if args.replicas is not None or args.ray_address is not None:
        raise Pt2Error("--replicas and --ray-address need --ray")
    import uvicorn  # first: without the serve extras, say so before torch takes seconds to import

    _import_torch(args)

    from pt2interp.serve import Server
    from pt2interp.serve.http import create_app

    servers = []
    try:
        for name, path in _serve_targets(args.files):
            servers.append(
                Server(
                    path,
                    name=name,
                    device=args.device,
                    batch_size=args.batch_size,
                    batch_timeout_ms=args.batch_timeout_ms,
                    request_timeout_s=args.request_timeout,
                    threads=args.threads,
                    cuda_graphs=args.cuda_graphs,
                )
            )
        app = create_app(
            servers,
            max_body_bytes=args.max_body_bytes,
            body_timeout_s=args.body_timeout,
            max_inflight_bytes=args.max_inflight_bytes,
            max_queued_rows=args.max_queued_rows,
        )
        for s in servers:
            note = f", {s.info()['batching_note']}" if s.info()["batching_note"] else ""
            print(
                shown(f"model {s.name!r}: {s.path} on {s.device}, batch size {s.batch_size}{note}")
            )
        print(
            f"serving on http://{args.host}:{args.port}/  (status page at /, metrics at /metrics)",
            flush=True,
        )
        # On SIGTERM or Ctrl-C uvicorn stops taking connections and lets requests under way
        # finish for --graceful-timeout seconds; then the models' queues drain for as long again.
        # uvicorn raises the signal once more when it is done, for the handler it found: ours
        # takes SIGTERM as the normal way to stop a server, so the drain below still runs.
        grpc_front = None
        if args.grpc_port is not None:
            from pt2interp.serve.grpc import GrpcLimits, GrpcThread

            # its own event loop in a thread, beside uvicorn's, for the same Server objects
            grpc_front = GrpcThread(
                servers,
                host=args.host,
                port=args.grpc_port,
                limits=GrpcLimits(
                    max_message_bytes=args.max_body_bytes, max_queued_rows=args.max_queued_rows
                ),
            )
            print(f"serving gRPC on {args.host}:{grpc_front.port}", flush=True)
        with _sigterm_ends_quietly():
            uvicorn.run(
                app,
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                timeout_graceful_shutdown=args.graceful_timeout,
                access_log=args.access_log,
            )
        if grpc_front is not None:  # HTTP has stopped (SIGTERM, Ctrl-C): gRPC stops with it
            grpc_front.stop(grace=args.graceful_timeout)
    except ValueError as exc:
        raise Pt2Error(str(exc)) from None
    finally:
        for s in servers:
            s.shutdown(timeout=args.graceful_timeout)
    return 0


def _serve_on_ray(args) -> int:
    """``serve --ray``: the same routes from ``--replicas`` Ray Serve replicas behind Ray's HTTP
    proxy, on a new local Ray cluster or the one at ``--ray-address``; until SIGINT or SIGTERM."""
    # first: without a usable ray extra, say so before anything starts
    try:
        from pt2interp.serve.ray import DEFAULT_APP_NAME, DeployFailedError, build_app, run_app
    except ModuleNotFoundError:
        raise  # not installed: main's install hint
    except ImportError as exc:  # installed, but it cannot be imported here
        raise Pt2Error(str(exc)) from None
    import ray
    from ray import serve

    if args.replicas is not None and args.replicas < 1:
        raise Pt2Error(f"--replicas must be at least 1, got {args.replicas}")
    try:  # the files and options are checked before a cluster starts
        app = build_app(
            dict(_model_specs(args.files)),
            replicas=args.replicas or 1,
            batch_size=args.batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
            request_timeout_s=args.request_timeout,
            threads=args.threads,
            device=args.device,
            http_options={
                "max_body_bytes": args.max_body_bytes,
                "body_timeout_s": args.body_timeout,
                "max_inflight_bytes": args.max_inflight_bytes,
                "max_queued_rows": args.max_queued_rows,
                "graceful_timeout_s": args.graceful_timeout,
            },
            logging_config={"enable_access_log": args.access_log},
        )
    except ValueError as exc:
        raise Pt2Error(str(exc)) from None
    stop = threading.Event()
    # "local": a cluster of our own, even where `ray start` left one running on this machine
    # (plain ray.init() would join that one, and stopping would then take down its Serve).
    ray.init(address=args.ray_address or "local", logging_level="warning")
    try:
        previous = {
            sig: signal.signal(sig, lambda signum, frame: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            run_app(app, host=args.host, port=args.port)
            print(
                f"serving {args.replicas or 1} Ray Serve replica(s) on "
                f"http://{args.host}:{args.port}/  (Ray's HTTP proxy)",
                flush=True,
            )
            while not stop.wait(0.5):
                pass
        except DeployFailedError as exc:
            raise Pt2Error(f"the Ray Serve replicas did not start: {exc}") from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # A cluster we joined keeps its other applications; one we started goes entirely.
            if args.ray_address is None:
                serve.shutdown()
            else:
                serve.delete(DEFAULT_APP_NAME)
    finally:
        ray.shutdown()
    return 0


def cmd_codegen(args) -> int:
    """Write a .pt2 back as readable nn.Module source (and, with --weights, its weights)."""
    _import_torch(args)
    from pt2interp.codegen import to_python

    source = to_python(
        args.file, class_name=args.class_name, comments=not args.no_comments, weights=args.weights
    )
    if args.output:
        Path(args.output).write_text(source, encoding="utf-8")
        module = Path(args.output).stem
        if args.weights:
            how = (
                f"from {module} import load_safetensors; "
                f"model = load_safetensors({str(args.weights)!r})"
            )
            print(f"wrote {args.output} and {args.weights} (class {args.class_name!r}); {how}")
        else:
            how = f"from {module} import from_pt2; model = from_pt2({str(args.file)!r})"
            print(f"wrote {args.output} (class {args.class_name!r}); {how}")
    else:
        sys.stdout.write(source)
    return 0


_GRAPH_FORMATS = ("html", "svg", "png")


def cmd_graph(args) -> int:
    """Draw a program: the interactive HTML page, or a static picture of its module tree.
    Never imports torch and never reads weight bytes."""
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
        fmt = suffix if suffix in _GRAPH_FORMATS else "html"
    output = Path(args.output) if args.output else Path(Path(args.file).stem + "." + fmt)
    if fmt == "html":
        from pt2interp.graphview import graph_data, page_from_data

        data = graph_data(args.file, model=args.model)
        output.write_text(page_from_data(data), encoding="utf-8")
        ops = data["program"]["op_count"]
        size = output.stat().st_size
        print(
            f"wrote {printable(str(output))} ({ops} ops, {len(data['modules'])} modules, "
            f"{human_bytes(size)}): open it in a browser"
        )
        return 0
    from pt2interp.graphview import module_tree_svg, svg_to_png

    picture = module_tree_svg(args.file, model=args.model, depth=args.depth)
    if fmt == "svg":
        output.write_text(picture, encoding="utf-8")
    else:
        svg_to_png(picture, output)
    print(f"wrote {printable(str(output))}")
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default where it has one worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and (action.option_strings or action.nargs in ("?", "*"))
        ):
            text += " (default: %(default)s)"
        return text


_FILE_HELP = "the .pt2 archive"
_MODEL_HELP = "which model of a multi-model archive (default: the only one, or 'model')"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pt2interp",
        description="Load, run and inspect PyTorch .pt2 archives.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks for errors (accepted anywhere on the line)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, fn) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)
        c.set_defaults(fn=fn)
        return c

    command("demo", "run the bundled example archive and check it against its reference", cmd_demo)

    r = command("run", "run a .pt2 and print its outputs", cmd_run)
    r.add_argument("file", help=_FILE_HELP)
    src = r.add_mutually_exclusive_group()
    src.add_argument(
        "--inputs",
        metavar="FILE",
        help="inputs from .npz, .safetensors or .pt (a dict), keyed by the names `pt2interp info` "
        "prints (x, scale, xs.0) or by position (in_0, in_1, ...); keyword inputs too "
        "(default: the sample inputs the archive stores)",
    )
    src.add_argument(
        "--random",
        action="store_true",
        help="random values for every input, keyword ones included, of the recorded dtypes "
        "and example sizes",
    )
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    r.add_argument("--model", default=None, help=_MODEL_HELP)
    r.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="also write the outputs to this .safetensors file, named as `info` names them "
        "(out, out.0, out.sum)",
    )

    i = command("info", "describe a .pt2 without running it (torch not needed)", cmd_info)
    i.add_argument("file", help=_FILE_HELP)
    i.add_argument("--model", default=None, help=_MODEL_HELP)
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.add_argument(
        "--check-ops",
        action="store_true",
        help="import torch and list the ops it lacks (otherwise checked only if torch is loaded)",
    )

    w = command(
        "weights", "write a .pt2's weights to safetensors or npz (torch not needed)", cmd_weights
    )
    w.add_argument("file", help=_FILE_HELP)
    w.add_argument("--output", "-o", metavar="FILE", help="the .safetensors file to write")
    w.add_argument("--numpy", metavar="NPZ", help="also (or only) write the arrays to this .npz")
    w.add_argument("--model", default=None, help=_MODEL_HELP)
    w.add_argument("--no-buffers", action="store_true", help="parameters only")
    w.add_argument(
        "--constants", action="store_true", help="also tensor constants and non-persistent buffers"
    )

    sv = command(
        "serve",
        "serve .pt2 archives over HTTP (Open Inference Protocol v2); needs "
        "pip install 'pt2interp[serve]'",
        cmd_serve,
    )
    sv.add_argument(
        "files",
        nargs="+",
        metavar="[NAME=]FILE",
        help="archives to serve, each named NAME or after its file; a directory serves the .pt2 "
        "files in it (NAME=DIR: exactly one)",
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    sv.add_argument("--port", type=int, default=8080, help="port to listen on")
    sv.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the Open Inference Protocol over gRPC on this port (same models, "
        "batches and stats; --max-body-bytes bounds its messages)",
    )
    sv.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    sv.add_argument(
        "--batch-size", type=int, default=1, help="most rows per model run (1: no batching)"
    )
    sv.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=0.0,
        help="how long a request may wait for others to share its run",
    )
    sv.add_argument(
        "--max-body-bytes", type=int, default=16 * 1024 * 1024, help="larger requests get 413"
    )
    sv.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds a request body may take to arrive (then 408)",
    )
    sv.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        help="seconds a request may wait for its answer (then 504, and it is withdrawn)",
    )
    sv.add_argument(
        "--max-inflight-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="request bodies one model's unanswered requests may hold (then 503, Retry-After)",
    )
    sv.add_argument(
        "--max-queued-rows",
        type=int,
        default=65_536,
        help="rows one model's unanswered requests may hold (then 429, Retry-After)",
    )
    sv.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        help="on SIGTERM, seconds for requests under way to finish before they are cut off",
    )
    sv.add_argument(
        "--access-log", action="store_true", help="log every request (uvicorn's access log)"
    )
    sv.add_argument(
        "--threads",
        type=_threads_arg,
        default="auto",
        help="torch threads per model run: a number, or auto (the CPUs other processes leave free, "
        "less one for the server, re-read every 2 s)",
    )
    sv.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="with --device cuda: run the models as CUDA graphs, captured at start-up for each "
        "run size (1, 2, 4, ... up to --batch-size rows; runs padded up to the next)",
    )
    sv.add_argument(
        "--ray",
        action="store_true",
        help="serve from Ray Serve replicas behind Ray's HTTP proxy; needs "
        "pip install 'pt2interp[ray]'",
    )
    sv.add_argument(
        "--replicas", type=int, default=None, help="with --ray: how many replicas (default 1)"
    )
    sv.add_argument(
        "--ray-address",
        default=None,
        help="with --ray: the Ray cluster to join (auto: the one `ray start` began here; "
        "default: start a local one)",
    )
    sv.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level",
    )

    gr = command(
        "graph",
        "draw a .pt2: an interactive HTML view of its graph, or a picture of its module tree "
        "(torch not needed)",
        cmd_graph,
    )
    gr.add_argument("file", help=_FILE_HELP)
    gr.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="where to write (default: the archive's name with the format's suffix, here)",
    )
    gr.add_argument(
        "--format",
        choices=_GRAPH_FORMATS,
        default=None,
        help="html: the interactive page (one self-contained file); svg or png: a static "
        "picture of the module tree, png drawn by a headless Chromium (default: from the "
        "output's suffix, else html)",
    )
    gr.add_argument("--model", default=None, help=_MODEL_HELP)
    gr.add_argument(
        "--depth",
        type=int,
        default=None,
        help="svg/png: how many levels of the module tree to draw (default: all)",
    )

    cg = command("codegen", "write a .pt2 back as readable nn.Module source", cmd_codegen)
    cg.add_argument("file", help=_FILE_HELP)
    cg.add_argument(
        "--output", "-o", metavar="FILE", help="the .py file to write (default: standard output)"
    )
    cg.add_argument("--class-name", default="Model", help="name of the root class")
    cg.add_argument(
        "--no-comments",
        action="store_true",
        help="leave out the original source lines kept as comments",
    )
    cg.add_argument(
        "--weights",
        metavar="SAFETENSORS",
        help="also write the weights here, for the generated load_safetensors(path)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug anywhere on the line (`pt2interp run x.pt2 --debug`), not only before the command
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    # A last resort for text the terminal's encoding lacks (a name in a script cp1252 has no
    # letters for, piped on Windows): an escape, not a UnicodeEncodeError.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return args.fn(args)
    except Pt2Error as exc:
        if args.debug:
            raise
        return _error(" ".join(str(exc).splitlines()))
    except ModuleNotFoundError as exc:  # an optional dependency the subcommand needs
        root = (exc.name or "").split(".")[0]
        if (
            args.debug
            or root not in _INSTALL_HINTS
            and root not in ("safetensors", "numpy", "jinja2", "rich")
        ):
            raise
        hint = _INSTALL_HINTS.get(root, f"needs {root}: pip install {root}")
        return _error(f"`pt2interp {args.command}` {hint}")
    except BrokenPipeError:  # `pt2interp run x.pt2 | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a file to read or write: no such file, no permission, disk full
        if args.debug:
            raise
        return _error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    # one line, whatever the archive put in the names the message quotes
    print(f"pt2interp: error: {shown(message, _MAX_ERROR_LINE)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
