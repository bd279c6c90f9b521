import pytest
import torch
from fixture_cases import all_cases, cuda_float32_as_computed_on

# The fixtures' reference outputs were computed single-threaded; some CPU kernels (oneDNN
# convolutions, RNNs) split work differently with more threads and change the last bits.
torch.set_num_threads(1)

CASES = all_cases()


def pytest_report_header(config):
    return (
        f"torch {torch.__version__}; {len(CASES)} fixture archives; "
        f"cuda={'yes' if torch.cuda.is_available() else 'no'}"
    )


# Every CUDA test carries the ``cuda`` mark (``pytest -m cuda`` selects them all); they skip
# where CUDA is not available.
requires_cuda = pytest.mark.cuda


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cuda_float32_as_on_a_cpu(request):
    """CUDA tests compare with CPU runs or references computed on a CPU: their float32 matmuls
    and convolutions run in full float32, not TF32 (which cuDNN uses by default)."""
    if "cuda" not in request.keywords or not torch.cuda.is_available():
        yield
        return
    with cuda_float32_as_computed_on("cpu"):
        yield


@pytest.fixture
def serve():
    """``serve(path, **kw)`` starts a uniquely named ``pt2interp.serve.Server``, shut down after
    the test."""
    import uuid

    from pt2interp.serve import Server

    started = []

    def start(path, **kw):
        kw.setdefault("name", f"t-{uuid.uuid4().hex[:8]}")
        server = Server(path, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown(drain=False, timeout=2.0)


@pytest.fixture(scope="module", params=["plain", "fast"])
def handoff(request):
    """Runs a module's tests under each hand-off implementation (``PT2INTERP_HANDOFF``, read when
    a server is made, and inherited by servers in subprocesses); the serving tests use it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PT2INTERP_HANDOFF", request.param)
        yield request.param
