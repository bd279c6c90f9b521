"""Large synthetic ``.pt2`` archives, valid and runnable, for testing graph views at scale.

    python -m benchmarks.big_graph big.pt2 --nodes 50000          # nested modules
    python -m benchmarks.big_graph flat.pt2 --nodes 50000 --flat   # every node at the root
    python benchmarks/big_graph.py big.pt2 --nodes 50000           # the same, as a script

    from benchmarks.big_graph import write_big_archive             # from the repository root
    info = write_big_archive("big.pt2", nodes=50_000)

The archive is the zoo's ``mlp.pt2`` (``fc1`` Linear 16 -> 32, ReLU, ``fc2`` Linear 32 -> 8,
input ``x`` FP32 ``[4, 16]``) with its program's graph replaced: ``fc1`` and ``fc2`` stay, and
between them run ``nodes - 2`` elementwise aten ops on the ``[4, 32]`` hidden tensor, in *units*
of three::

    a = act(h)                  # aten.relu and aten.tanh, in turn per unit
    s = aten.add.Tensor(h, a)   # the residual
    h = aten.mul.Tensor(s, 0.5) # keeps the values bounded however long the chain

(the last unit may be cut short to make exactly ``nodes`` nodes). Weights, sample inputs and
every other member are copied from the source untouched; the program keeps its signature, so
the archive runs on the same input as the source and gives ``reference(x, state, nodes)``.

Each node carries what ``torch.export`` writes for a nested model (spellings copied from torch
2.13's own output): an ``nn_module_stack`` placing the unit at
``stages.{i}.blocks.{j}.layers.{k}`` (``levels`` container levels, default 3, each of
``ceil(units ** (1 / levels))`` children) with ``act`` (``torch.nn.modules.activation.ReLU``
...) and ``mix`` (``__main__.Mix``) below it, a ``stack_trace`` through every level, a
``torch_fn``; every output has its ``tensor_values`` entry, and ``module_call_graph`` lists each
module once. With ``flat=True`` every node's stack holds only the root frame: the worst case for
a view that groups nodes by module.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "fixtures" / "zoo" / "mlp.pt2"

UNIT_OPS = ("act", "add", "mul")  # the nodes of one unit, in order
ACTS = (  # (aten op, module class, torch_fn), one per unit in turn
    ("relu", "torch.nn.modules.activation.ReLU", "builtin_function_or_method.relu"),
    ("tanh", "torch.nn.modules.activation.Tanh", "builtin_function_or_method.tanh"),
)
LEVELS = (("stages", "Stage"), ("blocks", "Block"), ("layers", "Layer"), ("sublayers", "Sub"))
ROOT_CLASS = "__main__.BigModel"
MIX_CLASS = "__main__.Mix"


@dataclass(frozen=True)
class BigArchive:
    """What :func:`write_big_archive` wrote."""

    path: Path
    nodes: int  # graph nodes, ``fc1`` and ``fc2`` included
    units: int  # act/add/mul units (the last may be short)
    modules: int  # distinct module paths below the root in the nn_module_stack frames
    depth: int  # most frames below the root on any node (0 when flat)
    fanout: int  # children per container module (0 when flat)
    program_bytes: int  # size of the program JSON member
    flat: bool


def unit_path(unit: int, levels: int, fanout: int) -> list[tuple[str, str]]:
    """``[(fqn, class), ...]`` of the containers holding ``unit``, outermost first."""
    digits = []
    for _ in range(levels):
        unit, d = divmod(unit, fanout)
        digits.append(d)
    if unit:
        raise ValueError(f"fan-out {fanout} over {levels} levels is too small for this unit")
    frames, fqn = [], ""
    for (attr, cls), d in zip(LEVELS[:levels], reversed(digits)):
        fqn = f"{fqn}.{attr}.{d}" if fqn else f"{attr}.{d}"
        frames.append((fqn, f"__main__.{cls}"))
    return frames


def chain_ops(nodes: int) -> list[tuple[int, str]]:
    """``[(unit, op), ...]`` for the ``nodes - 2`` chain nodes; op is an aten name."""
    out = []
    for i in range(nodes - 2):
        unit, step = divmod(i, len(UNIT_OPS))
        op = ACTS[unit % len(ACTS)][0] if step == 0 else UNIT_OPS[step]
        out.append((unit, op))
    return out


def reference(x, state: dict, nodes: int):
    """The archive's computation in plain torch (``state``: ``fc1.weight`` ... of the source)."""
    import torch
    import torch.nn.functional as F

    h = last = F.linear(x, state["fc1.weight"], state["fc1.bias"])
    a = s = None
    for _unit, op in chain_ops(nodes):
        if op == "add":
            s = last = torch.add(h, a)
        elif op == "mul":
            h = last = torch.mul(s, 0.5)
        else:
            a = last = getattr(torch, op)(h)
    return F.linear(last, state["fc2.weight"], state["fc2.bias"])


def _program_member(zf: zipfile.ZipFile) -> str:
    names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+/models/[^/]+\.json", n)]
    if len(names) != 1:
        raise ValueError(f"{zf.filename}: want one <top>/models/<name>.json member, got {names}")
    return names[0]


def _tensor_arg(name: str) -> dict:
    return {"as_tensor": {"name": name}}


def _input(name: str, arg: dict) -> dict:
    return {"name": name, "arg": arg, "kind": 1}


def _frame(fqn: str, cls: str) -> str:
    return f"L__self__{fqn},{fqn},{cls}" if fqn else f"L__self__,,{cls}"


def _trace(lines: list[tuple[int, str]]) -> str:
    return "\n  ".join(
        f'File "big_model.py", line {n}, in forward\n    {code}' for n, code in lines
    )


def _build_graph(doc: dict, nodes: int, *, flat: bool, levels: int) -> dict:
    gm = doc["graph_module"]
    graph = gm["graph"]
    src_nodes = graph["nodes"]
    first, last = src_nodes[0], src_nodes[-1]
    hidden = first["outputs"][0]["as_tensor"]["name"]
    feeds_last = src_nodes[-2]["outputs"][0]["as_tensor"]["name"]
    values = graph["tensor_values"]
    if values[hidden]["sizes"] != values[feeds_last]["sizes"]:
        raise ValueError("the source's first node must give the shape its last node takes")
    hidden_meta = values[hidden]
    for n in src_nodes[1:-1]:  # the source's middle nodes go, and their values
        for o in n["outputs"]:
            values.pop(o["as_tensor"]["name"], None)

    units = math.ceil((nodes - 2) / len(UNIT_OPS))
    fanout = 0 if flat else max(2, math.ceil(units ** (1 / levels) - 1e-9))
    while not flat and fanout**levels < units:
        fanout += 1
    root = _frame("", ROOT_CLASS)

    def stack(frames: list[tuple[str, str]]) -> str:
        return ";".join([root] + [_frame(f, c) for f, c in frames])

    def meta(frames, trace, torch_fn) -> dict:
        return {
            "stack_trace": trace,
            "nn_module_stack": stack(frames),
            "torch_fn": torch_fn,
        }

    def bookend(node: dict, fqn: str, cls: str, line: int, code: str) -> dict:
        node = copy.deepcopy(node)
        frames = [] if flat else [(fqn, cls)]
        trace = _trace([(line, code), (134, "return F.linear(input, self.weight, self.bias)")])
        node["metadata"] = meta(frames, trace, node["metadata"].get("torch_fn", ""))
        return node

    out_nodes = [bookend(first, "fc1", "torch.nn.modules.linear.Linear", 60, "h = self.fc1(x)")]
    module_paths: dict[str, None] = {} if flat else {"fc1": None}
    counts: dict[str, int] = {}

    def fresh(stem: str) -> str:
        k = counts.get(stem, 0)
        counts[stem] = k + 1
        return stem if k == 0 else f"{stem}_{k}"

    h = hidden
    a = s = None
    depth = 0
    for unit, op in chain_ops(nodes):
        containers = [] if flat else unit_path(unit, levels, fanout)
        act_name, act_cls, act_fn = ACTS[unit % len(ACTS)]
        trace_lines = [(62, "h = stage(h)")]
        trace_lines += [(30 + 4 * i, f"h = {attr}(h)") for i, (attr, _) in enumerate(LEVELS[1:])][
            : len(containers) - 1
        ]
        if op == act_name:
            leaf = (f"{containers[-1][0]}.act", act_cls) if containers else None
            trace_lines += [(20, "return self.mix(h, self.act(h))"), (143, f"return F.{op}(h)")]
            fn = act_fn
            inputs = [_input("self", _tensor_arg(h))]
        else:
            leaf = (f"{containers[-1][0]}.mix", MIX_CLASS) if containers else None
            trace_lines += [(20, "return self.mix(h, self.act(h))"), (12, "return (h + a) * 0.5")]
            fn = f"{op};method_descriptor.{op}"
            if op == "add":
                inputs = [_input("self", _tensor_arg(h)), _input("other", _tensor_arg(a))]
            else:
                inputs = [_input("self", _tensor_arg(s)), _input("other", {"as_float": 0.5})]
        if flat:  # the whole chain written out in the root's forward
            code = {"add": "s = h + a", "mul": "h = s * 0.5"}.get(op, f"a = torch.{op}(h)")
            trace_lines = [(62 + UNIT_OPS.index(op if op in UNIT_OPS else "act"), code)]
        frames = containers + ([leaf] if leaf else [])
        for fqn, _ in frames:
            module_paths[fqn] = None
        depth = max(depth, len(frames))
        name = fresh(op)
        out_nodes.append(
            {
                "target": f"torch.ops.aten.{op}.{'Tensor' if op in ('add', 'mul') else 'default'}",
                "inputs": inputs,
                "outputs": [_tensor_arg(name)],
                "metadata": meta(frames, _trace(trace_lines), fn),
                "is_hop_single_tensor_return": None,
                "name": name,
            }
        )
        values[name] = hidden_meta
        if op == "add":
            s = name
        elif op == "mul":
            h = name
        else:
            a = name
    chain_out = out_nodes[-1]["outputs"][0]["as_tensor"]["name"]

    end = bookend(last, "fc2", "torch.nn.modules.linear.Linear", 66, "return self.fc2(h)")
    for inp in end["inputs"]:
        if inp["arg"] == _tensor_arg(feeds_last):
            inp["arg"] = _tensor_arg(chain_out)
    out_nodes.append(end)
    if not flat:
        module_paths["fc2"] = None
    graph["nodes"] = out_nodes

    # module_call_graph: the root with its signature, then every module once in the order the
    # forward meets it, the ModuleList containers ("stages", "stages.0.blocks") included, as
    # torch writes it
    root_entry = next(e for e in gm["module_call_graph"] if e["fqn"] == "")
    listed: dict[str, None] = {}
    for fqn in module_paths:
        parts = fqn.split(".")
        for i in range(1, len(parts) + 1):
            listed[".".join(parts[:i])] = None
    gm["module_call_graph"] = [root_entry] + [{"fqn": f, "signature": None} for f in listed]
    return {
        "units": units,
        "modules": len(module_paths),
        "depth": depth,
        "fanout": fanout,
    }


def write_big_archive(
    path: str | Path,
    nodes: int = 50_000,
    *,
    flat: bool = False,
    levels: int = 3,
    source: str | Path = SOURCE,
) -> BigArchive:
    """Write a ``nodes``-node archive to ``path`` (see the module's doc); returns its figures."""
    if nodes < 3:
        raise ValueError("nodes must be at least 3 (fc1, one chain op, fc2)")
    if not 1 <= levels <= len(LEVELS):
        raise ValueError(f"levels must be 1 to {len(LEVELS)}")
    path = Path(path)
    with zipfile.ZipFile(source) as zin:
        member = _program_member(zin)
        doc = json.loads(zin.read(member))
        figures = _build_graph(doc, nodes, flat=flat, levels=levels)
        program = json.dumps(doc).encode()
        old_top = member.split("/", 1)[0]
        new_top = re.sub(r"\W", "_", path.stem) or "archive"
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = program if info.filename == member else zin.read(info.filename)
                name = new_top + info.filename[len(old_top) :]
                zout.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        tmp.replace(path)
    return BigArchive(path=path, nodes=nodes, program_bytes=len(program), flat=flat, **figures)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", type=Path, help="the .pt2 to write")
    ap.add_argument("--nodes", type=int, default=50_000, help="graph nodes (default 50000)")
    ap.add_argument("--flat", action="store_true", help="every node in the root module")
    ap.add_argument("--levels", type=int, default=3, help="container module levels (1 to 4)")
    ap.add_argument("--source", type=Path, default=SOURCE, help="archive to copy (zoo mlp)")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    info = write_big_archive(
        args.output, args.nodes, flat=args.flat, levels=args.levels, source=args.source
    )
    took = time.perf_counter() - t
    size = info.path.stat().st_size / 1e6
    shape = "flat" if info.flat else f"depth {info.depth}, fan-out {info.fanout}"
    print(
        f"{info.path}: {info.nodes} nodes, {info.modules} modules ({shape}), "
        f"{size:.1f} MB ({info.program_bytes / 1e6:.1f} MB program JSON), {took:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
