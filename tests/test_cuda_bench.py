"""``python -m benchmarks.cuda --smoke``: tiny ResNet-18 and GPT exported, run by ``ep.module()``
and pt2interp (and, on CUDA, pt2interp with CUDA graphs), their outputs compared, a serving
row; the full run is for a GPU (see ``benchmarks/NOTES.md``)."""

import json
import re
import sys

import pytest
from helpers import REPO, run_benchmark

sys.path.insert(0, str(REPO))  # benchmarks.cuda, imported by a test
MODEL_KEYS = ["resnet18-fp32", "resnet18-bf16", "gpt-fp32", "gpt-bf16"]


def run_smoke(tmp_path, device: str, timeout: int) -> tuple[str, dict]:
    report = tmp_path / "figures.json"
    done = run_benchmark(
        "cuda",
        "--device",
        device,
        "--smoke",
        "--no-compile",
        "--cache",
        str(tmp_path / "cache"),
        "--json",
        str(report),
        timeout=timeout,
    )
    figures = json.loads(report.read_text())
    assert [r["key"] for r in figures["cases"]] == MODEL_KEYS, done.stdout
    # one table row per model, in the order of the cases
    rows = re.findall(r"^\| (ResNet-18|GPT) \(smoke: ", done.stdout, re.MULTILINE)
    assert rows == ["ResNet-18", "ResNet-18", "GPT", "GPT"], done.stdout
    for row in figures["cases"]:
        assert "errors" not in row, row["errors"]
        assert row["ep_ms"] > 0 and row["eager_ms"] > 0, row
        assert row["eager_outputs_ok"] is True, row
        assert row["eager_max_abs_diff"] <= row["tolerance"], row
        assert row["compile_na"] == "--no-compile"
    serve = figures["serve"]
    assert "errors" not in serve, serve["errors"]
    assert serve["bs1_rps"] > 0 and serve["bs16_rps"] > 0 and serve["bs16_batching"] is True
    assert re.search(r"^- PASS: .*outputs within tolerance", done.stdout, re.MULTILINE)
    return done.stdout, figures


@pytest.mark.slow
def test_smoke_on_cpu(tmp_path):
    out, figures = run_smoke(tmp_path, "cpu", timeout=180)
    for row in figures["cases"]:
        assert row["graphs_na"] == "needs CUDA"
        assert "eager_peak_mib" not in row  # no GPU memory figures on CPU
    assert "| n/a: needs CUDA |" in out


@pytest.mark.cuda
def test_smoke_on_cuda(tmp_path):
    out, figures = run_smoke(tmp_path, "cuda", timeout=300)
    from benchmarks.cuda import graphs_api_missing

    has_graphs = graphs_api_missing() is None
    for row in figures["cases"]:
        assert row["ep_peak_mib"] > 0 and row["eager_peak_mib"] > 0
        if not has_graphs:
            assert row["graphs_na"] == "pt2interp.load() has no cuda_graphs option"
            continue
        assert row["graphs_ms"] > 0 and row["graphs_outputs_ok"] is True, row
        assert row["graphs_outputs_fresh"] is True, row
        assert row["capture_plan"]["verdict"] in ("whole", "segments", "eager"), row
        assert row["graphs_load_to_first_output_s"] > 0 and row["graphs_peak_mib"] > 0


def test_resnet18_is_torchvisions():
    """The hand-written ResNet-18 has torchvision's parameter count and module names."""
    from benchmarks.cuda import resnet18

    model = resnet18()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    names = dict(model.named_children())
    assert list(names) == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]
    state = model.state_dict()
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer4.1.bn2.running_var"].shape == (512,)
    assert state["fc.weight"].shape == (1000, 512)
    assert "layer1.0.downsample.0.weight" not in state


def test_resnet18_matches_torchvision_where_installed():
    """Where torchvision is there (the GPU machines have it), the same state-dict names and
    shapes as ``torchvision.models.resnet18()``."""
    models = pytest.importorskip("torchvision.models")
    from benchmarks.cuda import resnet18

    ours = {k: tuple(v.shape) for k, v in resnet18().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in models.resnet18(weights=None).state_dict().items()}
    assert ours == theirs
