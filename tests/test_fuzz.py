"""Hypothesis fuzzing: mutated real archives either load correctly or raise a ``Pt2Error``.

Every test takes a real fixture archive, mutates it, and runs everything a user can run on it:
``pt2interp.read_schema`` (when present), ``read_program(...).state_dict()``, and
``pt2interp.load(...)(*inputs)`` with the fixture's real inputs. An outcome is either success
or an instance of :class:`pt2interp.Pt2Error`; anything else (``KeyError``, ``TypeError``,
``RecursionError``, a ``RuntimeError`` from torch, ``MemoryError``, a hang) fails the test.

Three families of mutation, each on five archives (new layout: zoo ``mlp``, ``cond``,
``dynamic_batch_mlp_core``; legacy: torch 2.5.1 ``mlp``, torch 2.7.1 ``counter_core``):

* ``bytes``: flip, insert, delete and truncate bytes of the zip file itself;
* ``program``: decode the program JSON and replace values at random paths with random JSON
  (huge and negative ints, hostile target strings, lists, objects, null, 100k-deep nesting,
  subtrees spliced from elsewhere in the document), delete keys, duplicate, drop and reorder
  list elements, rename keys;
* ``weights``: the same on ``model_weights_config.json`` (path names, sizes, strides, offsets,
  dtypes) for the new layout; for the legacy layout, byte mutations of the pickle inside
  ``serialized_state_dict.pt`` (also fed to :func:`pt2interp.torch_pickle.load_torch_save`).

Bounds per case: ``CASE_SECONDS`` of wall time (a ``SIGALRM`` watchdog raises
:class:`CaseTimeout`, a ``BaseException`` nothing in pt2interp can swallow, and the elapsed time
is checked after the call) and an address-space limit (``RLIMIT_AS``, ``CASE_HEADROOM`` bytes
above what the process holds when the test starts), so an allocation the archive provokes
beyond that fails as a ``MemoryError`` / torch ``RuntimeError`` the test reports.

CI runs a small, derandomized number of examples (``PT2INTERP_FUZZ_EXAMPLES``, default 50 per
test: 15 tests, well under 90 s on two cores). The long run, with fresh random examples and a
summary of outcomes by error type written to a JSON file::

    PT2INTERP_FUZZ_EXAMPLES=2000 PT2INTERP_FUZZ_REPORT=fuzz.json \\
        python -m pytest tests/test_fuzz.py -p no:cacheprovider -q

That run (30,000 cases, 10,000 per family, 9 minutes on two cores) ended with no failure: every
outcome a success or a ``FormatError``, ``SchemaError``, ``WeightError``, ``GraphError``,
``UnsupportedOpError``, ``InputMismatchError`` or ``ExecutionError``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import itertools
import json
import os
import resource
import shutil
import signal
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fixture_cases import case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pt2interp
from pt2interp.torch_pickle import load_torch_save

CASE_SECONDS = 5.0
CASE_HEADROOM = 3 << 30  # bytes of address space a case may add to what the process holds

_EXAMPLES_ENV = os.environ.get("PT2INTERP_FUZZ_EXAMPLES")
EXAMPLES = int(_EXAMPLES_ENV) if _EXAMPLES_ENV else 50
REPORT = os.environ.get("PT2INTERP_FUZZ_REPORT")

settings.register_profile(
    "pt2interp-fuzz-ci",
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.register_profile(
    "pt2interp-fuzz-long", parent=settings.get_profile("pt2interp-fuzz-ci"), derandomize=False
)
PROFILE = settings.get_profile("pt2interp-fuzz-long" if _EXAMPLES_ENV else "pt2interp-fuzz-ci")


# -- the archives --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    id: str
    data: bytes
    program_member: str
    weights_member: str  # model_weights_config.json, or the legacy pickled state dict
    args: tuple
    kwargs: dict

    @property
    def legacy(self) -> bool:
        return self.program_member.endswith("serialized_exported_program.json")


def _fixture(folder: str, name: str, ir: str) -> Fixture:
    c = case(folder, name, ir)
    data = c.path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
    program = next(
        n for n in names if n.endswith(("models/model.json", "serialized_exported_program.json"))
    )
    weights = next(
        n for n in names if n.endswith(("model_weights_config.json", "serialized_state_dict.pt"))
    )
    args, kwargs = c.inputs()
    return Fixture(c.id, data, program, weights, args, kwargs)


FIXTURE_KEYS = [
    ("zoo", "mlp", "training"),
    ("zoo", "cond", "training"),
    ("zoo", "dynamic_batch_mlp", "core"),
    ("torch-2.5.1", "mlp", "training"),
    ("torch-2.7.1", "counter", "core"),
]
FIXTURES = {f"{a}/{b}{'_core' if c == 'core' else ''}": k for k in FIXTURE_KEYS for a, b, c in [k]}
_LOADED: dict[str, Fixture] = {}


def fixture(key: str) -> Fixture:
    if key not in _LOADED:
        _LOADED[key] = _fixture(*FIXTURES[key])
    return _LOADED[key]


# -- outcomes ------------------------------------------------------------------------------------


class CaseTimeout(BaseException):  # a BaseException so that no `except Exception` eats it
    """A case ran past ``CASE_SECONDS``."""


OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
EXAMPLE_COUNTS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report():
    start = time.time()
    yield
    shutil.rmtree(_SCRATCH, ignore_errors=True)
    if REPORT:
        summary = {
            "examples_per_test": dict(EXAMPLE_COUNTS),
            "outcomes": {k: dict(v.most_common()) for k, v in sorted(OUTCOMES.items())},
            "seconds": round(time.time() - start, 1),
            "max_examples": EXAMPLES,
        }
        Path(REPORT).write_text(json.dumps(summary, indent=2))


@contextlib.contextmanager
def _bounded():
    """The per-case watchdog: SIGALRM after CASE_SECONDS, and an address-space limit."""

    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran past {CASE_SECONDS} s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + CASE_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS + 1)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


_SCRATCH = Path(tempfile.mkdtemp(prefix="pt2interp-fuzz-"))
_COUNTER = itertools.count()


def _write(data: bytes) -> Path:
    # A fresh name each time: tensors of earlier cases may still map an earlier file, and
    # truncating a mapped file would turn their pages into SIGBUS.
    path = _SCRATCH / f"case{next(_COUNTER)}.pt2"
    path.write_bytes(data)
    return path


def _attempt(label: str, fn, outcomes: list[str]) -> object:
    """Run one entry point: success, or a Pt2Error (recorded); anything else propagates."""
    try:
        value = fn()
    except pt2interp.Pt2Error as exc:
        outcomes.append(f"{label}:{type(exc).__name__}")
        assert str(exc), f"{label} raised {type(exc).__name__} with an empty message"
        return None
    outcomes.append(f"{label}:ok")
    return value


def exercise(
    strategy: str, fx: Fixture, data: bytes, as_bytes: bool = False, pickled: bytes | None = None
) -> None:
    outcomes: list[str] = []
    path = None if as_bytes else _write(data)
    source = (lambda: data) if as_bytes else (lambda: path)
    args = tuple(a.clone() for a in fx.args)
    kwargs = {k: v.clone() for k, v in fx.kwargs.items()}
    t0 = time.monotonic()
    try:
        with _bounded():
            if hasattr(pt2interp, "read_schema"):
                _attempt("read_schema", lambda: pt2interp.read_schema(source()), outcomes)
            _attempt("state_dict", lambda: pt2interp.read_program(source()).state_dict(), outcomes)
            prog = _attempt("load", lambda: pt2interp.load(source()), outcomes)
            if prog is not None:
                _attempt("run", lambda: prog(*args, **kwargs), outcomes)
                _attempt("run2", lambda: prog(*args, **kwargs), outcomes)
            if pickled is not None:
                _attempt(
                    "load_torch_save", lambda: load_torch_save(pickled, source="fuzz"), outcomes
                )
    finally:
        if path is not None:
            path.unlink()
    elapsed = time.monotonic() - t0
    assert elapsed < CASE_SECONDS, f"case took {elapsed:.1f} s"
    EXAMPLE_COUNTS[f"{strategy} {fx.id}"] += 1
    OUTCOMES[strategy].update(outcomes)


# -- (a) bytes of the zip --------------------------------------------------------------------------

_byte_edit = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate", "set"]),
    st.integers(min_value=0, max_value=1 << 20),
    st.binary(min_size=1, max_size=8),
)


def mutate_bytes(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, blob in edits:
        if not b:
            break
        pos %= len(b)
        if kind == "flip":
            b[pos] ^= blob[0] or 1
        elif kind == "set":
            b[pos : pos + len(blob)] = blob
        elif kind == "insert":
            b[pos:pos] = blob
        elif kind == "delete":
            del b[pos : pos + len(blob) * 7]
        else:
            del b[pos:]
    return bytes(b)


@pytest.mark.parametrize("key", list(FIXTURES))
@settings(PROFILE)
@given(edits=st.lists(_byte_edit, min_size=1, max_size=4), as_bytes=st.booleans())
def test_fuzz_zip_bytes(key, edits, as_bytes):
    fx = fixture(key)
    exercise("bytes", fx, mutate_bytes(fx.data, edits), as_bytes)


# -- (b) the program JSON --------------------------------------------------------------------------

HOSTILE_TARGETS = [
    "os.system",
    "builtins.eval",
    "builtins.exec",
    "torch.load",
    "torch.ops.aten.__class__",
    "torch.ops.import_module.x",
    "torch.ops.aten.definitely_not_an_op.default",
    "torch.ops.load_library",
    "torch.ops.aten.add",
    "torch.ops.aten.add.__call__",
    "torch.ops.higher_order.cond.default",
    "torch.ops.higher_order.nope",
    "_operator.getitem",
    "_operator.__import__",
    "torch.ops.aten.sym_size.int",
    "torch.ops.aten.empty.memory_format",
    "torch.ops.aten.full.default",
    "torch.ops.aten.zeros.default",
    "torch.ops.aten.arange.default",
    "torch.ops.aten.view.default",
    "torch.ops.aten.expand.default",
    "torch.ops.aten.copy_.default",
    "torch.ops.aten.add_.Tensor",
    "torch.ops.aten._assert_async.msg",
    "",
    ".",
    "..",
    "torch.ops",
    "torch.ops.aten",
    "__import__('os').system('x')",
    "torch.ops.aten.from_file.default",
    "torch.ops.aten._reshape_alias.default",
    "torch.ops.inductor._reinterpret_tensor.default",
    "_operator.pow",
    "_operator.lshift",
    "_operator.mul",
    "torch.ops.higher_order.while_loop",
    "torch.ops.higher_order.map_impl",
    "torch.ops.aten.resize_.default",
    "torch.ops.aten.set_.source_Tensor_storage_offset",
    "torch.ops.aten.as_strided.default",
    # the op policy's cases (pt2interp.ops.policy)
    "torch.ops.aten._sparse_coo_tensor_unsafe.default",
    "torch.ops.aten.sparse_coo_tensor.indices_size",
    "torch.ops.aten._indices.default",
    "torch.ops.aten._ctc_loss.default",
    "torch.ops.aten._print.default",
    "torch.ops.higher_order.print",
    "torch.ops.aten.format.default",
    "torch.ops.aten._copy_from.default",
    "torch.ops.higher_order.inline_asm_elementwise",
    "_operator.mod",
    "_operator.add",
]
HOSTILE_STRINGS = HOSTILE_TARGETS + [
    "../../../etc/passwd",
    "/etc/passwd",
    "C:\\x",
    "weight_0",
    "weight_99",
    "model.pt",
    "custom_obj_0",
    "s0",
    "s77",
    "Symbol('s0')",
    "2*s0 + 1",
    "Pow(Integer(2), Integer(100000))",
    "s0**s0**s0",
    "Integer(" * 50 + "1" + ")" * 50,
    "(" * 500 + "s0" + ")" * 500,
    "x" * 20000,
    '[1, {"type": "os.system", "context": null, "children_spec": []}]',
    '[1, {"type": "builtins.tuple", "context": "null", "children_spec": 5}]',
    "\x00",
    "\ud800",
    "NaN",
    "Infinity",
    "-Infinity",
    "{0.__class__.__init__.__globals__}",
    "%1500000000d",
    "{:1500000000}",
    "\x1b[2J\x1b]0;title\x07",
]
HUGE_INTS = [
    2**62,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    -1,
    -2,
    0,
    1,
    2**31,
    10**30,
    2**1000,
    -(10**30),
]


class Deep:
    """A placeholder for a value nested ``depth`` lists (or objects) deep; see :func:`dumps`."""

    def __init__(self, depth: int, dicts: bool):
        self.depth, self.dicts = depth, dicts

    def text(self) -> str:
        if self.dicts:
            return '{"a":' * self.depth + "1" + "}" * self.depth
        return "[" * self.depth + "]" * self.depth


def _scalars(strings: list[str]):
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(HUGE_INTS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.sampled_from(HOSTILE_STRINGS),
        st.sampled_from(strings),
    )


def json_values(strings: list[str]):
    leaves = _scalars(strings)
    deep = st.builds(Deep, st.sampled_from([100, 999, 1100, 5000, 100_000]), st.booleans())
    nested = st.recursive(
        leaves,
        lambda kids: (
            st.lists(kids, max_size=4)
            | st.dictionaries(st.text(max_size=8) | st.sampled_from(strings), kids, max_size=4)
        ),
        max_leaves=8,
    )
    return st.one_of(leaves, nested, deep)


def dumps(doc) -> bytes:
    """JSON text of ``doc``, with :class:`Deep` placeholders expanded in the text (json.dumps
    itself would hit the recursion limit)."""
    deep: dict[str, Deep] = {}

    def default(o):
        if isinstance(o, Deep):
            key = f"@@deep{len(deep)}@@"
            deep[key] = o
            return key
        raise TypeError(type(o))

    text = json.dumps(doc, default=default)
    for key, d in deep.items():
        text = text.replace(json.dumps(key), d.text(), 1)
    return text.encode("utf-8", "surrogatepass")


def _paths(doc) -> list[tuple]:
    """Every path (tuple of keys and indices) below the root, iteratively."""
    out, stack = [], [((), doc)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                out.append(path + (k,))
                stack.append((path + (k,), x))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                out.append(path + (i,))
                stack.append((path + (i,), x))
    return out


def _strings(doc) -> list[str]:
    found = set()
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            found.update(k for k in v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and len(v) < 200:
            found.add(v)
    return sorted(found)


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


MUTATIONS = [
    "replace",
    "replace",
    "replace",
    "splice",
    "delete",
    "duplicate",
    "reorder",
    "rename",
    "retarget",
    "rewire",
    "number",
]
INTERESTING_INTS = st.one_of(st.sampled_from(HUGE_INTS), st.integers(min_value=-3, max_value=70))


def _typed_paths(doc, paths: list[tuple]) -> dict[str, list[tuple]]:
    """Paths of node targets, of value names (``{"name": ...}``, ``as_name``) and of ints."""
    out: dict[str, list[tuple]] = {"retarget": [], "rewire": [], "number": []}
    for path in paths:
        v = _get(doc, path)
        if path[-1] == "target" and isinstance(v, str):
            out["retarget"].append(path)
        elif path[-1] in ("name", "as_name") and isinstance(v, str):
            out["rewire"].append(path)
        elif type(v) is int:
            out["number"].append(path)
    return out


def mutate_json(data, doc, values) -> None:
    """Apply 1 to 4 random mutations to ``doc`` in place, drawing from hypothesis ``data``.

    Besides structural edits anywhere, three targeted kinds reach past the parser: a node's
    target replaced (hostile targets, other nodes' targets), a value reference pointed at another
    name in the document (undefined values, cycles, type confusion), an int replaced by an
    interesting one (sizes, strides, dims, dtypes)."""
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        paths = _paths(doc)
        if not paths:
            return
        kind = data.draw(st.sampled_from(MUTATIONS), label="kind")
        if kind in ("retarget", "rewire", "number"):
            typed = _typed_paths(doc, paths)[kind]
            if typed:
                path = typed[
                    data.draw(
                        st.integers(min_value=0, max_value=len(typed) - 1), label="typed path"
                    )
                ]
                parent, last = _get(doc, path[:-1]), path[-1]
                if kind == "number":
                    parent[last] = data.draw(INTERESTING_INTS, label="int")
                else:
                    names = sorted({_get(doc, p) for p in _typed_paths(doc, paths)[kind]})
                    pool = HOSTILE_TARGETS + names if kind == "retarget" else names + ["ghost", ""]
                    parent[last] = data.draw(st.sampled_from(pool), label="name")
                continue
        path = paths[data.draw(st.integers(min_value=0, max_value=len(paths) - 1), label="path")]
        parent, last = _get(doc, path[:-1]), path[-1]
        if kind == "replace":
            parent[last] = data.draw(values, label="value")
        elif kind == "splice":
            other = paths[
                data.draw(st.integers(min_value=0, max_value=len(paths) - 1), label="from")
            ]
            parent[last] = copy.deepcopy(_get(doc, other))
        elif kind == "delete":
            del parent[last]
        elif kind == "rename" and isinstance(parent, dict):
            new = data.draw(
                st.sampled_from(_strings(doc)[:500] or ["x"]) | st.text(max_size=8), label="key"
            )
            parent[new] = parent.pop(last)
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(last, copy.deepcopy(parent[last]))
        elif kind == "reorder" and isinstance(parent, list):
            order = data.draw(st.permutations(range(len(parent))), label="order")
            parent[:] = [parent[i] for i in order]
        else:
            parent[last] = data.draw(values, label="value")


def rewrite_member(data: bytes, member: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as zin,
        zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout,
    ):
        for info in zin.infolist():
            zout.writestr(info, content if info.filename == member else zin.read(info.filename))
    return out.getvalue()


_DOCS: dict[tuple[str, str], tuple] = {}


def _doc(fx: Fixture, member: str):
    if (fx.id, member) not in _DOCS:
        with zipfile.ZipFile(io.BytesIO(fx.data)) as z:
            doc = json.loads(z.read(member))
        _DOCS[(fx.id, member)] = (doc, _strings(doc))
    doc, strings = _DOCS[(fx.id, member)]
    return copy.deepcopy(doc), strings


@pytest.mark.parametrize("key", list(FIXTURES))
@settings(PROFILE)
@given(data=st.data())
def test_fuzz_program_json(key, data):
    fx = fixture(key)
    doc, strings = _doc(fx, fx.program_member)
    mutate_json(data, doc, json_values(strings))
    exercise("program", fx, rewrite_member(fx.data, fx.program_member, dumps(doc)))


# -- (c) weights: the payload config (new layout) or the pickled state dict (legacy) ---------------

CONFIG_VALUES_EXTRA = [0, 1, 7, 12, 22, 44, 99, -1, 2**62, 2**63, 2**40, 4096]


def config_values(strings: list[str]):
    ints = st.one_of(
        st.integers(min_value=-4, max_value=40), st.sampled_from(CONFIG_VALUES_EXTRA + HUGE_INTS)
    )
    size_like = st.one_of(
        ints.map(lambda n: {"as_int": n}), st.lists(ints.map(lambda n: {"as_int": n}), max_size=4)
    )
    return st.one_of(ints, size_like, st.sampled_from(strings), json_values(strings))


@pytest.mark.parametrize("key", list(FIXTURES))
@settings(PROFILE)
@given(data=st.data())
def test_fuzz_weights(key, data):
    fx = fixture(key)
    if fx.legacy:
        with zipfile.ZipFile(io.BytesIO(fx.data)) as z:
            payload = z.read(fx.weights_member)
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            pickle_bytes = z.read(pkl)
        edits = data.draw(st.lists(_byte_edit, min_size=1, max_size=3), label="edits")
        payload = rewrite_member(payload, pkl, mutate_bytes(pickle_bytes, edits))
        exercise(
            "weights", fx, rewrite_member(fx.data, fx.weights_member, payload), pickled=payload
        )
        return
    doc, strings = _doc(fx, fx.weights_member)
    mutate_json(data, doc, config_values(strings))
    exercise("weights", fx, rewrite_member(fx.data, fx.weights_member, dumps(doc)))


def test_mutators_change_what_they_say():
    fx = fixture("zoo/mlp")
    assert mutate_bytes(b"abc", [("truncate", 1, b"x")]) == b"a"
    assert mutate_bytes(b"abc", [("flip", 4, b"\x01")]) == b"acc"
    assert dumps({"a": Deep(3, False)}) == b'{"a": [[[]]]}'
    doc, _ = _doc(fx, fx.program_member)
    assert len(_paths(doc)) > 100
    # an unmutated round trip is a correct load, with the fixture's own output
    same = rewrite_member(fx.data, fx.program_member, dumps(doc))
    out = pt2interp.load(same)(*fx.args)
    assert torch.equal(out, pt2interp.load(fx.data)(*fx.args))
