"""The ``pt2interp`` command line.

Errors from an archive print as one line and exit with status 1 (``--debug`` shows the
traceback). Subcommands that only read a program never import torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pt2interp.errors import Pt2Error


def _example_path() -> Path:
    from importlib.resources import files

    return Path(str(files("pt2interp.examples") / "tiny_mlp.pt2"))


def cmd_demo(args) -> int:
    """Load the bundled example, run it on its stored inputs and compare with the reference."""
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
    want = torch.from_numpy(ref["out"])
    same = torch.equal(out, want)
    print(f"run       input {list(x.shape)} {x.dtype} -> output {list(out.shape)} {out.dtype}")
    print(f"output    {_preview(out)}")
    print(f"reference {'equal, bit for bit' if same else 'DIFFERENT: max abs diff ' + str((out - want).abs().max().item())}")
    return 0 if same else 1


def cmd_run(args) -> int:
    import torch

    import pt2interp

    prog = pt2interp.load(args.file, device=args.device, model=args.model)
    call_args, call_kwargs = _inputs_for(prog, args)
    out = prog(*call_args, **call_kwargs)
    from pt2interp.treespec import TreeSpec  # noqa: F401  (structure printing below)

    for key, value in _flatten("out", out):
        if isinstance(value, torch.Tensor):
            print(f"{key}: tensor {list(value.shape)} {str(value.dtype).replace('torch.', '')} "
                  f"{value.device} {_preview(value)}")
        else:
            print(f"{key}: {type(value).__name__} {value!r}")
    if args.output:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in _flatten("out", out) if isinstance(v, torch.Tensor)}
        save_file(tensors, args.output)
        print(f"wrote {len(tensors)} tensors to {args.output}")
    fb = prog.fallback_ops()
    if fb:
        print(f"ops run through the generic torch.ops fallback: {', '.join(fb)}", file=sys.stderr)
    return 0


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


def _random_inputs(prog) -> tuple:
    import torch

    from pt2interp.weights import torch_dtype

    model = prog.program.model
    out = []
    for spec in model.signature.inputs_of("user_input"):
        if spec.arg.kind != "tensor":
            raise Pt2Error(f"--random cannot make a value for non-tensor input {spec.arg}")
        meta = model.graph.tensor_values[spec.arg.value.name]
        shape = [s if isinstance(s, int) else (s.hint if isinstance(s.hint, int) else 2) for s in meta.sizes]
        dtype = torch_dtype(meta.dtype)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, dtype=dtype))
        elif dtype == torch.bool:
            out.append(torch.rand(shape) > 0.5)
        else:
            out.append(torch.randint(0, 2, shape, dtype=dtype))
    return tuple(out)


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
    import pt2interp

    prog = pt2interp.read_program(args.file, model=args.model)
    sig = prog.signature
    print(f"{prog.source}: layout {prog.layout}, schema {'.'.join(map(str, prog.schema_version))}, "
          f"torch {prog.torch_version or 'unknown'}, IR {prog.model.dialect}")
    for s in sig.inputs_of("user_input"):
        meta = prog.graph.tensor_values.get(s.arg.value.name) if s.arg.kind == "tensor" else None
        shape = "[" + ", ".join(map(str, meta.sizes)) + "]" if meta else ""
        print(f"  input  {s.arg.value.name if hasattr(s.arg.value, 'name') else s.arg.kind} {meta.dtype if meta else ''}{shape}")
    print(f"  {len(sig.inputs_of('parameter'))} parameters, {len(sig.inputs_of('buffer'))} buffers, "
          f"{len(prog.graph.nodes)} nodes")
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
    i.set_defaults(fn=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except Pt2Error as exc:
        if args.debug:
            raise
        print(f"pt2interp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
