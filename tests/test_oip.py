"""The Open Inference Protocol codec (``pt2interp.serve.oip``) on its own: strict JSON requests,
Triton's binary tensor data extension, outputs in the requested order and non-finite floats
in a form strict JSON parsers read. Checked against torch tensors built in the same process.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fixture_cases import case
from hypothesis import given, settings
from hypothesis import strategies as st

import pt2interp
from pt2interp.serve.batching import DTYPE_OF_OIP, OIP_DATATYPES, BatchLayout
from pt2interp.serve.oip import RequestError, decode_request, encode_response

MLP = BatchLayout.from_program(pt2interp.read_program(case("zoo", "dynamic_batch_mlp").path).model)
MULTI_IO = BatchLayout.from_program(pt2interp.read_program(case("zoo", "multi_io").path).model)


def _strict_loads(body: bytes):
    """json.loads that refuses NaN and Infinity, as JSON (RFC 8259) and most parsers do."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(body, parse_constant=refuse)


def _x(rows=2, **overrides) -> dict:
    entry = {"name": "x", "shape": [rows, 16], "datatype": "FP32", "data": [0.5] * (rows * 16)}
    return entry | overrides


def _decode(payload, layout=MLP, binary: bytes = b""):
    header = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
    return decode_request(header + binary, layout, header_length=len(header) if binary else None)


def _refused(payload, words, layout=MLP, binary=b""):
    with pytest.raises(RequestError) as err:
        _decode(payload, layout, binary)
    assert err.value.status == 400 and words in str(err.value), str(err.value)


# -- strict JSON -----------------------------------------------------------------------------------
def test_nested_data_must_follow_the_shape_exactly():
    x = torch.randn(3, 16)
    nested = _decode({"inputs": [_x(3, data=x.tolist())]})
    flat = _decode({"inputs": [_x(3, data=x.reshape(-1).tolist())]})
    assert torch.equal(nested.args[0], x) and torch.equal(flat.args[0], x)
    ragged = [[0.0] * 47, [0.0]]  # 48 values, as a probe sent for shape [3, 16]
    _refused(
        {"inputs": [_x(3, data=ragged)]}, "at depth 0 a list of 3 was expected, found 2 entries"
    )
    _refused(
        {"inputs": [_x(3, data=[[0.0] * 16, [0.0] * 16, [0.0] * 15 + [[0.0]]])]},
        "deeper than shape",
    )
    _refused({"inputs": [_x(3, data=[[0.0] * 16, [0.0] * 16, 1.0])]}, "found a number")
    _refused({"inputs": [_x(3, data=[0.0] * 47)]}, "holds 48 values but data has 47")


def test_request_id_must_be_a_string_and_is_echoed():
    assert _decode({"id": "req-7", "inputs": [_x()]}).id == "req-7"
    for bad in (7, ["a"], {"a": 1}, True):
        _refused({"id": bad, "inputs": [_x()]}, '"id" must be a string')
    deep = "[" * 1000 + "]" * 1000
    _refused(b'{"id": ' + deep.encode() + b', "inputs": []}', "nested too deeply")
    _refused(
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
        + deep.encode()
        + b"}]}",
        "nested too deeply",
    )


def test_fields_and_parameters_are_checked():
    _refused({"inputs": [_x() | {"content": [1]}]}, "unknown fields ['content']")
    _refused({"inputs": [_x()], "parameters": [1]}, '"parameters" must be an object')
    _refused(
        {"inputs": [_x()], "parameters": {"binary_data_output": "yes"}}, "must be true or false"
    )
    _refused(
        {"inputs": [_x()], "outputs": [{"name": "out", "parameters": {"classification": 3}}]},
        "unsupported parameters ['classification']",
    )
    _refused({"inputs": [_x()], "outputs": [{"name": "out"}, {"name": "out"}]}, "requested twice")
    _refused({"inputs": [_x(shape=[2.0, 16])]}, "non-negative integers")
    _refused({"inputs": [_x(shape=[True, 16])]}, "non-negative integers")


def test_a_huge_name_is_not_echoed_back():
    name = "m" * 100_000
    with pytest.raises(RequestError) as err:
        _decode({"inputs": [_x(name=name)]})
    assert len(str(err.value)) < 500 and "(100000 characters)" in str(err.value)


def test_outputs_come_back_in_the_requested_order():
    (a, b, mask), kw = case("zoo", "multi_io").inputs()
    out = pt2interp.load(case("zoo", "multi_io").path)(a, b, mask, **kw)
    inputs = [
        {
            "name": n,
            "shape": list(t.shape),
            "datatype": OIP_DATATYPES[str(t.dtype).split(".")[1]],
            "data": t.reshape(-1).tolist(),
        }
        for n, t in (("a", a), ("b", b), ("mask", mask), ("scale", kw["scale"]))
    ]
    wanted = ["out.cat", "out.pair.1", "out.sum"]
    request = _decode({"inputs": inputs, "outputs": [{"name": n} for n in wanted]}, MULTI_IO)
    body, headers = encode_response(out, MULTI_IO, request, "multi_io")
    answer = _strict_loads(body)
    assert [o["name"] for o in answer["outputs"]] == wanted and headers[
        "content-type"
    ] == "application/json"
    by_name = {o["name"]: o for o in answer["outputs"]}
    assert torch.allclose(torch.tensor(by_name["out.cat"]["data"]).reshape(5, 7), out["cat"])
    assert torch.equal(torch.tensor(by_name["out.pair.1"]["data"]), out["pair"][1])
    everything = _decode({"inputs": inputs}, MULTI_IO)
    names = [
        o["name"]
        for o in _strict_loads(encode_response(out, MULTI_IO, everything, "m")[0])["outputs"]
    ]
    assert names == [s.name for s in MULTI_IO.outputs]


def test_non_finite_floats_travel_as_strings_both_ways():
    x = torch.tensor([[1.5, math.nan, math.inf, -math.inf] * 4])
    as_text = {math.inf: "Infinity", -math.inf: "-Infinity"}
    data = ["NaN" if math.isnan(v) else as_text.get(v, v) for v in x[0].tolist()]
    request = _decode({"inputs": [_x(1, data=data)]})
    assert torch.equal(request.args[0].isnan(), x.isnan()) and torch.equal(
        request.args[0].nan_to_num(), x.nan_to_num()
    )
    _refused({"inputs": [_x(1, data=["nan"] * 16)]}, "the only strings")
    out = torch.tensor([[0.25, math.nan, math.inf, -math.inf, 1.0, 2.0, 3.0, 4.0]])
    answer = _strict_loads(encode_response(out, MLP, request, "mlp")[0])  # strict: no bare NaN
    data = answer["outputs"][0]["data"]
    assert data[:4] == [0.25, "NaN", "Infinity", "-Infinity"]
    # numpy reads them back as the floats they were (tritonclient's as_numpy does this)
    assert np.array_equal(np.array(data, dtype=np.float32), out.numpy()[0], equal_nan=True)


# -- binary tensor data ----------------------------------------------------------------------------
def test_binary_inputs_and_outputs_round_trip():
    x = torch.randn(3, 16)
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [3, 16],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 192},
            }
        ],
        "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
    }
    request = _decode(header, binary=x.numpy().tobytes())
    assert torch.equal(request.args[0], x)
    out = torch.randn(3, 8)
    out[0, 0] = math.nan
    body, headers = encode_response(out, MLP, request, "mlp")
    size = int(headers["inference-header-content-length"])
    answer = _strict_loads(body[:size])
    assert (
        answer["outputs"][0]["parameters"] == {"binary_data_size": 96}
        and "data" not in answer["outputs"][0]
    )
    got = torch.frombuffer(bytearray(body[size:]), dtype=torch.float32).reshape(3, 8)
    assert torch.equal(got.isnan(), out.isnan()) and torch.equal(got.nan_to_num(), out.nan_to_num())
    # the request-wide switch, and an output that opts out of it
    request = _decode(
        header | {"parameters": {"binary_data_output": True}, "outputs": None},
        binary=x.numpy().tobytes(),
    )
    assert "inference-header-content-length" in encode_response(out, MLP, request, "mlp")[1]
    request = _decode(
        header
        | {
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "out", "parameters": {"binary_data": False}}],
        },
        binary=x.numpy().tobytes(),
    )
    body, headers = encode_response(out[1:], MLP, request, "mlp")
    assert (
        "inference-header-content-length" not in headers
        and _strict_loads(body)["outputs"][0]["data"]
    )


def test_binary_sizes_are_checked_before_any_byte_is_read():
    x = torch.randn(2, 16).numpy().tobytes()

    def header(size, **extra):
        return {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
                | extra
            ]
        }

    _refused(header(100), "binary_data_size 100 is not 128", binary=x)
    _refused(header(128), "runs past the end of the body", binary=x[:100])
    _refused(header(128), "4 bytes of binary data after", binary=x + b"\0" * 4)
    _refused(header(128, data=[0.0] * 32), 'both "data" and parameters.binary_data_size', binary=x)
    _refused(header("128"), "binary_data_size '128' is not 128", binary=x)
    with pytest.raises(RequestError, match="does not fit a body"):
        decode_request(b"{}", MLP, header_length=3)
    # binary data sent without the header: the JSON parser stops at the bytes, and says why
    raw = json.dumps(header(128)).encode() + x
    with pytest.raises(RequestError, match="needs the Inference-Header-Content-Length header"):
        decode_request(raw, MLP)


_DTYPES = [d for d in OIP_DATATYPES if d not in ("uint16", "uint32", "uint64")] + ["uint8"]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(set(_DTYPES))),
    st.lists(st.integers(0, 4), min_size=0, max_size=3),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_any_tensor_survives_json_and_binary(dtype_name, shape, binary, rnd):
    """Whatever the datatype and shape, a tensor sent as JSON or binary arrives as itself."""
    from pt2interp.serve.batching import InputSlot
    from pt2interp.signature import CallSignature, InputLeaf

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(rnd.randint(0, 2**31))
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=gen).to(dtype)
    elif dtype == torch.bool:
        t = torch.randint(0, 2, shape, generator=gen).bool()
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(
            max(info.min, -1000), min(info.max, 1000), shape, generator=gen, dtype=torch.int64
        ).to(dtype)
    datatype = OIP_DATATYPES[dtype_name]
    assert DTYPE_OF_OIP[datatype] == dtype_name

    class _Meta:
        dtype = dtype_name
        sizes = shape

    slot = InputSlot("x", "tensor", meta=_Meta())
    layout = BatchLayout(CallSignature([InputLeaf("x", "tensor", _Meta())], []), [slot], [])
    entry = {"name": "x", "shape": shape, "datatype": datatype}
    if binary:
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header = json.dumps(
            {"inputs": [entry | {"parameters": {"binary_data_size": len(raw)}}]}
        ).encode()
        got = decode_request(header + raw, layout, header_length=len(header)).args[0]
    else:
        data = (
            t.float().reshape(-1).tolist()
            if dtype in (torch.float16, torch.bfloat16)
            else t.reshape(-1).tolist()
        )
        got = decode_request(
            json.dumps({"inputs": [entry | {"data": data}]}).encode(), layout
        ).args[0]
    assert got.dtype == dtype and list(got.shape) == shape and torch.equal(got, t)
