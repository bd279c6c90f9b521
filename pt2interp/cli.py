"""The ``pt2interp`` command line.

Errors from an archive print as one line and exit with status 1 (``--debug`` shows the
traceback). Subcommands that only read a program never import torch.

Names, versions, targets and error messages are file content. Whatever a subcommand prints of
them goes through :func:`shown` (and, in rich output, is plain :class:`rich.text.Text`, never
markup): no file can style, move or retitle the terminal, or make printing fail.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pt2interp.errors import Pt2Error
from pt2interp.printable import printable

_MAX_SHOWN = 300            # characters of one name in a table or output line
_MAX_ERROR_LINE = 2000      # characters of an error message


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


def _example_path() -> Path:
    from importlib.resources import files

    return Path(str(files("pt2interp.examples") / "tiny_mlp.pt2"))


def cmd_demo(args) -> int:
    """Load the bundled example, run it on its stored inputs and compare with torch itself
    (bit for bit, in this process) and with the outputs stored beside it."""
    import numpy as np
    import torch

    import pt2interp

    path = _example_path()
    prog = pt2interp.read_program(path)
    print(f"archive   {path.name}: layout {prog.layout}, schema {'.'.join(map(str, prog.schema_version))}, "
          f"written by torch {prog.torch_version}")
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
        print(f"torch     torch.export.load(...).module() here: "
              f"{'equal, bit for bit' if same else 'DIFFERENT: ' + _max_diff(out, torch_out)}")
    # computed when the example was made, maybe on another CPU: equal to float32 rounding
    stored = torch.from_numpy(ref["out"])
    close = torch.allclose(out, stored, rtol=1e-5, atol=1e-6)
    ok = ok and close
    print(f"stored    the example's reference output: "
          f"{'equal, bit for bit' if torch.equal(out, stored) else 'equal within 1e-5' if close else 'DIFFERENT: ' + _max_diff(out, stored)}")
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
    import torch

    import pt2interp

    prog = pt2interp.load(args.file, device=args.device, model=args.model)
    call_args, call_kwargs = _inputs_for(prog, args)
    out = prog(*call_args, **call_kwargs)
    for key, value in _flatten("out", out):
        # keys are the file's (output dict keys); values may be strings it holds
        if isinstance(value, torch.Tensor):
            print(f"{shown(key)}: tensor {list(value.shape)} "
                  f"{str(value.dtype).replace('torch.', '')} {value.device} {_preview(value)}")
        else:
            print(f"{shown(key)}: {type(value).__name__} {shown(_value_text(value))}")
    if args.output:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in _flatten("out", out) if isinstance(v, torch.Tensor)}
        save_file(tensors, args.output)
        print(f"wrote {len(tensors)} tensors to {args.output}")
    fb = prog.fallback_ops()
    if fb:
        print(f"ops run through the generic torch.ops fallback: {shown(', '.join(fb), _MAX_ERROR_LINE)}",
              file=sys.stderr)
    return 0


def _value_text(value) -> str:
    # repr() of an int stops at 4300 digits; sym-int outputs are the file's arithmetic
    if isinstance(value, int) and value.bit_length() > 4096:
        return f"<an integer of {value.bit_length()} bits>"
    return repr(value)


def _inputs_for(prog, args):
    import torch

    if args.inputs:
        tensors = _read_tensor_file(args.inputs)
        ordered = [tensors[k] for k in sorted(tensors, key=_input_order)]
        return tuple(ordered), {}
    if args.random:
        return _random_inputs(prog), {}
    sample = prog.program.example_inputs()
    if sample is None:
        raise Pt2Error(f"{args.file}: the archive stores no sample inputs; pass --inputs FILE or --random")
    a, kw = sample
    return tuple(x.to(prog.device) if isinstance(x, torch.Tensor) else x for x in a), kw


def _input_order(key: str):
    tail = key.rsplit("_", 1)[-1]
    return (0, int(tail)) if tail.isdigit() else (1, key)


def _read_tensor_file(path: str) -> dict:
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    if path.endswith(".npz"):
        import numpy as np

        with np.load(path, allow_pickle=False) as npz:
            return {k: torch.from_numpy(npz[k].copy()) for k in npz.files if k.startswith("in")}
    raise Pt2Error(f"{path}: inputs must be a .npz or .safetensors file")


# A recorded shape is a claim made by the file: random inputs beyond this are refused.
_MAX_RANDOM_ELEMENTS = 1 << 28


def _random_inputs(prog) -> tuple:
    import torch

    from pt2interp.weights import torch_dtype

    model = prog.program.model
    out = []
    for spec in model.signature.inputs_of("user_input"):
        if spec.arg.kind != "tensor":
            raise Pt2Error(f"--random cannot make a value for non-tensor input {spec.arg}")
        name = spec.arg.value.name
        meta = model.graph.tensor_values.get(name)
        if meta is None:
            raise Pt2Error(f"--random: the archive records no shape for input {name!r}")
        shape = [s if isinstance(s, int) else (s.hint if type(s.hint) is int else 2) for s in meta.sizes]
        if not _small_shape(shape):
            raise Pt2Error(f"--random: input {name!r} would have more than {_MAX_RANDOM_ELEMENTS:,} elements "
                           f"(or a negative size) in its recorded shape; pass --inputs with real data instead")
        dtype = torch_dtype(meta.dtype, where=f"--random: input {name!r}: ")
        try:
            if dtype.is_floating_point or dtype.is_complex:
                out.append(torch.randn(shape, dtype=dtype))
            elif dtype == torch.bool:
                out.append(torch.rand(shape) > 0.5)
            else:
                out.append(torch.randint(0, 2, shape, dtype=dtype))
        except (RuntimeError, TypeError) as exc:  # a dtype torch makes no random values of
            raise Pt2Error(f"--random: cannot make input {name!r} of {dtype}: {exc}") from None
    return tuple(out)


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


def _flatten(prefix, value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}", v)
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _flatten(f"{prefix}.{i}", v)
    else:
        yield prefix, value


def _preview(t, n: int = 4) -> str:
    flat = t.detach().reshape(-1)[:n].float().tolist()
    return "[" + ", ".join(f"{v:.4g}" for v in flat) + (", ...]" if t.numel() > n else "]")


def cmd_info(args) -> int:
    """Describe an archive: rich tables for people, ``--json`` for programs. Never imports torch
    (unless ``--check-ops`` asks whether this torch has every op)."""
    import pt2interp

    schema = pt2interp.read_schema(args.file, model=args.model, check_ops=True if args.check_ops else None)
    if args.json:
        print(json_printable(schema.to_json()))
        return 0
    _print_schema(schema)
    return 0


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
    console.print(Text.assemble(
        (printable(schema.source), "bold"), f": {arch.kind} layout",
        f" (top folder {shown(repr(arch.top))})" if arch.top else "",
        f", {arch.members} members" + (f", {_human_bytes(arch.file_bytes)}" if arch.file_bytes else "")))
    console.print(Text(f"schema {'.'.join(map(str, schema.schema_version))}, written by torch "
                       f"{shown(schema.torch_version or 'unknown')}, IR {shown(schema.dialect)}, "
                       f"model {shown(repr(schema.model))}"))
    by_dtype = ", ".join(f"{shown(k)} {_human_bytes(v)}" for k, v in t.bytes_by_dtype.items()) or "none"
    console.print(Text(f"{t.parameter_count:,} parameters ({_human_bytes(t.parameter_bytes)}), {t.buffer_count} "
                       f"buffers ({_human_bytes(t.buffer_bytes)}), {len(schema.constants)} constants; "
                       f"bytes by dtype: {by_dtype}"))
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
            io_table.add_row(direction, *_cells(v.name, kind, tensor.dtype if tensor else "", shape))
        io_table.add_section()
    console.print(io_table)

    weights = schema.weights()
    if weights:
        w_table = Table(title="Parameters, buffers and constants by module", box=box.SIMPLE_HEAD,
                        title_justify="left")
        for col, justify in (("module", "left"), ("class", "left"), ("name", "left"), ("kind", "left"),
                             ("shape", "left"), ("dtype", "left"), ("bytes", "right")):
            w_table.add_column(col, justify=justify)
        classes = {m.fqn: m.class_name for m in schema.module_tree.walk()}
        order = {m.fqn: i for i, m in enumerate(schema.module_tree.walk())}
        last = None
        for w in sorted(weights, key=lambda w: order.get(w.module, len(order))):  # stable: keeps file order
            first = w.module != last
            kind = w.kind + (" (not persistent)" if w.persistent is False else "")
            kind += f" = {w.tied_to}" if w.tied_to else ""
            w_table.add_row(*_cells(w.module or "(root)" if first else "",
                                    (classes.get(w.module) or "") if first else "",
                                    w.name.rpartition(".")[2], kind,
                                    w.tensor.shape_str if w.tensor else (w.class_fqn or ""),
                                    w.tensor.dtype if w.tensor else "",
                                    f"{w.nbytes:,}" if w.nbytes is not None else ""))
            last = w.module
        console.print(w_table)

    ops = Table(title="Op histogram", box=box.SIMPLE_HEAD, title_justify="left")
    ops.add_column("target")
    ops.add_column("count", justify="right")
    for name in schema.subgraph_ops:
        ops.add_column(Text(f"in {shown(name)}"), justify="right")
    for target, count in schema.op_histogram.items():
        ops.add_row(*_cells(target.removeprefix("torch.ops.")), str(count),
                    *(str(sub.get(target, "")) for sub in schema.subgraph_ops.values()))
    console.print(ops)

    def label(m) -> Text:
        return Text.assemble(shown(m.name or "(root)"), (f" {shown(m.class_name)}" if m.class_name else "", "cyan"),
                             f"  {m.parameter_count:,} params" if m.parameter_count else "")

    def add(node, branch) -> None:
        for child in node.children:
            add(child, branch.add(label(child)))

    tree = Tree(label(schema.module_tree))
    add(schema.module_tree, tree)
    console.print("Module tree")
    console.print(tree)

    for where, why in schema.unreadable.items():
        console.print(Text.assemble(("not read", "yellow"), f" (not needed to describe the program): "
                                                            f"{shown(where)}: {shown(why, _MAX_ERROR_LINE)}"))
    if schema.missing_ops is None:
        console.print("ops this torch lacks: not checked (torch is not imported; --check-ops imports it)")
    elif schema.missing_ops:
        console.print(Text.assemble(("ops this torch lacks", "red"), f": {shown(', '.join(schema.missing_ops))}"))
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
        saved = save_safetensors(args.file, args.output, model=args.model,
                                 include_buffers=not args.no_buffers, include_constants=args.constants)
        tied = f", {len(saved.aliases)} tied name(s) recorded as aliases" if saved.aliases else ""
        print(f"wrote {len(saved.tensors)} tensors{tied} to {saved.path} ({_human_bytes(saved.nbytes)})")
    if args.numpy:
        import json

        import numpy as np

        weights = pt2interp.extract_weights(args.file, backend="numpy", model=args.model,
                                            include_buffers=not args.no_buffers, include_constants=args.constants)
        # npz members are plain .npy files; the torch dtype names travel as one JSON string
        np.savez(args.numpy, **weights, __torch_dtypes__=np.array(json.dumps(weights.dtypes)))
        raw = f" ({len(weights.raw_bits)} as raw bits, see __torch_dtypes__)" if weights.raw_bits else ""
        print(f"wrote {len(weights)} arrays{raw} to {args.numpy}")
    return 0


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_serve(args) -> int:
    """Serve one or more archives over HTTP (Open Inference Protocol v2, /metrics, status page)."""
    import uvicorn

    from pt2interp.serve import Server
    from pt2interp.serve.http import create_app

    servers = []
    try:
        for spec in args.files:
            # NAME=PATH names a model; otherwise the file's stem does
            name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
            servers.append(Server(path, name=name or None, device=args.device, batch_size=args.batch_size,
                                  batch_timeout_ms=args.batch_timeout_ms, request_timeout_s=args.request_timeout))
        app = create_app(servers, max_body_bytes=args.max_body_bytes)
        for s in servers:
            note = f", {s.info()['batching_note']}" if s.info()["batching_note"] else ""
            print(shown(f"model {s.name!r}: {s.path} on {s.device}, batch size {s.batch_size}{note}"))
        print(f"serving on http://{args.host}:{args.port}/  (status page at /, metrics at /metrics)")
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    except ValueError as exc:
        raise Pt2Error(str(exc)) from None
    finally:
        for s in servers:
            s.shutdown(timeout=5.0)
    return 0


def cmd_codegen(args) -> int:
    """Write a .pt2 back as readable nn.Module source (and, with --weights, its weights)."""
    from pt2interp.codegen import to_python

    source = to_python(args.file, class_name=args.class_name, comments=not args.no_comments,
                       weights=args.weights)
    if args.output:
        Path(args.output).write_text(source, encoding="utf-8")
        extra = f" and {args.weights}" if args.weights else ""
        print(f"wrote {args.output}{extra} (class {args.class_name!r}; load weights with from_pt2(path))")
    else:
        sys.stdout.write(source)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pt2interp", description="Load, run and inspect PyTorch .pt2 archives.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the bundled example archive and check it against its reference")
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("run", help="run a .pt2 and print its outputs")
    r.add_argument("file")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--inputs", help="inputs as .npz (in_0, in_1, ...) or .safetensors")
    src.add_argument("--random", action="store_true", help="random inputs of the recorded shapes")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    r.add_argument("--model", default=None, help="which model of a multi-model archive")
    r.add_argument("--output", "-o", help="write outputs to this .safetensors file")
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("info", help="describe a .pt2 without running it (torch not needed)")
    i.add_argument("file")
    i.add_argument("--model", default=None)
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.add_argument("--check-ops", action="store_true",
                   help="import torch and list the ops it lacks (otherwise checked only if torch is loaded)")
    i.set_defaults(fn=cmd_info)

    w = sub.add_parser("weights", help="write a .pt2's weights to safetensors or npz (torch not needed)")
    w.add_argument("file")
    w.add_argument("--output", "-o", help="the .safetensors file to write")
    w.add_argument("--numpy", metavar="NPZ", help="also (or only) write the arrays to this .npz")
    w.add_argument("--model", default=None)
    w.add_argument("--no-buffers", action="store_true", help="parameters only")
    w.add_argument("--constants", action="store_true",
                   help="also tensor constants and non-persistent buffers")
    w.set_defaults(fn=cmd_weights)
    sv = sub.add_parser("serve", help="serve .pt2 archives over HTTP (Open Inference Protocol v2)")
    sv.add_argument("files", nargs="+", metavar="[NAME=]FILE", help="archives to serve, named after their files")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    sv.add_argument("--batch-size", type=int, default=1, help="most rows per model run (1: no batching)")
    sv.add_argument("--batch-timeout-ms", type=float, default=0.0,
                    help="how long a request may wait for others to share its run")
    sv.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="larger requests get 413")
    sv.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a request gets 504")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sv.set_defaults(fn=cmd_serve)
    cg = sub.add_parser("codegen", help="write a .pt2 back as readable nn.Module source")
    cg.add_argument("file")
    cg.add_argument("--output", "-o", help="the .py file to write (default: standard output)")
    cg.add_argument("--class-name", default="Model", help="name of the root class (default: Model)")
    cg.add_argument("--no-comments", action="store_true",
                    help="leave out the original source lines kept as comments")
    cg.add_argument("--weights", metavar="SAFETENSORS",
                    help="also write the weights here, for the generated load_safetensors(path)")
    cg.set_defaults(fn=cmd_codegen)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        # one line, whatever the archive put in the names the message quotes
        message = shown(" ".join(str(exc).splitlines()), _MAX_ERROR_LINE)
        print(f"pt2interp: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
