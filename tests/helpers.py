"""Small tools shared by tests: bitwise tensor comparison, zip surgery, a loopback server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zipfile
from pathlib import Path


def export_or_skip(module, args, **kwargs):
    """``torch.export.export``; where the installed torch is older than the one the zoo was
    written with and cannot export the model (control flow older releases do not trace),
    the test skips saying so. With the zoo's own torch a failure is a failure."""
    import pytest
    import torch
    from fixture_cases import case, installed_torch_version, release

    try:
        return torch.export.export(module, args, **kwargs)
    except Exception as exc:
        leave_functorch_levels()
        zoo_version = case("zoo", "mlp").torch_version
        if release(installed_torch_version()) >= release(zoo_version):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        pytest.skip(f"torch {torch.__version__} cannot export it ({type(exc).__name__}: {first})")


def leave_functorch_levels() -> None:
    """Leave the vmap/jvp levels a failed export left this thread in (torch 2.5 exporting
    ``torch.func.jvp`` fails inside the level and never leaves it, breaking every later test)."""
    import torch

    functorch = torch._C._functorch
    leave = {
        functorch.TransformType.Vmap: functorch._vmap_decrement_nesting,
        functorch.TransformType.Jvp: functorch._jvp_decrement_nesting,
        functorch.TransformType.Grad: functorch._grad_decrement_nesting,
        functorch.TransformType.Functionalize: functorch._func_decrement_nesting,
    }
    for _ in range(64):
        if functorch.maybe_current_level() is None:
            break
        leave[functorch.peek_interpreter_stack().key()]()
    try:  # and the forward-AD dual level (one per process; 0 is the only one torch hands out)
        torch._C._exit_dual_level(level=0)
    except RuntimeError:
        pass  # none was entered
    torch._C._set_fwd_grad_enabled(True)


def save_or_skip(ep, path: Path) -> Path:
    """``torch.export.save``; where the installed torch is older than the zoo's and cannot
    serialize the program (functorch calls before 2.11), the test skips saying so."""
    import pytest
    import torch
    from fixture_cases import case, installed_torch_version, release

    try:
        torch.export.save(ep, path)
    except Exception as exc:
        if release(installed_torch_version()) >= release(case("zoo", "mlp").torch_version):
            raise
        pytest.skip(
            f"torch {torch.__version__} cannot save it ({type(exc).__name__}: {str(exc)[:200]})"
        )
    return path


def assert_bitwise_equal(got, want, name: str = "") -> None:
    """Same dtype, shape, strides, storage offset and bits (NaNs included)."""
    import torch

    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.stride() == want.stride(), f"{name}: strides {got.stride()} != {want.stride()}"
    assert got.storage_offset() == want.storage_offset(), f"{name}: storage offset differs"
    if got.numel() == 0:
        return
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.int64}[
        got.element_size()
    ]
    g, w = got.detach().contiguous().reshape(-1), want.detach().contiguous().reshape(-1)
    if got.dtype == torch.bool:
        assert torch.equal(g, w), f"{name}: values differ"
        return
    if got.is_complex():
        g, w = torch.view_as_real(g).reshape(-1), torch.view_as_real(w).reshape(-1)
        bits = {4: torch.int32, 8: torch.int64}[g.element_size()]
    assert torch.equal(g.view(bits), w.view(bits)), f"{name}: bits differ"


def rewrite_zip(
    src: Path,
    dst: Path,
    replace: dict[str, bytes | None] | None = None,
    add: dict[str, bytes] | None = None,
    compress: bool = False,
) -> Path:
    """Copy a zip, replacing (bytes), dropping (None) or adding members by name."""
    replace = replace or {}
    with (
        zipfile.ZipFile(src) as zin,
        zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zout,
    ):
        for info in zin.infolist():
            if info.filename in replace:
                data = replace[info.filename]
                if data is None:
                    continue
            else:
                data = zin.read(info.filename)
            zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def member_named(path: Path, suffix: str | tuple[str, ...]) -> str:
    with zipfile.ZipFile(path) as z:
        for n in z.namelist():
            if n.endswith(suffix):
                return n
    raise LookupError(suffix)


def program_member(path: Path) -> str:
    """The archive member holding the (first) program's JSON, in either layout: torch 2.8 and
    later write ``<archive>/models/model.json``, 2.5 to 2.7 ``serialized_exported_program.json``."""
    return member_named(path, ("models/model.json", "serialized_exported_program.json"))


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on 127.0.0.1:<free port> in a daemon thread; yields the URL."""
    import uvicorn

    # IPPROTO_TCP, not 0: asyncio only turns Nagle off (TCP_NODELAY) for sockets that say so,
    # and with Nagle on every keep-alive request waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def record_member_reads(monkeypatch) -> list[str]:
    """Record every archive member read (``Archive.read`` and ``Archive.buffer``) from now on;
    the list returned grows as they are read."""
    from pt2interp.archive import Archive

    touched: list[str] = []
    real_read, real_buffer = Archive.read, Archive.buffer

    def read(self, relative, **kw):
        touched.append(relative)
        return real_read(self, relative, **kw)

    def buffer(self, relative):
        touched.append(relative)
        return real_buffer(self, relative)

    monkeypatch.setattr(Archive, "read", read)
    monkeypatch.setattr(Archive, "buffer", buffer)
    return touched


def weight_members(touched: list[str]) -> list[str]:
    """The members among ``touched`` that hold weight bytes (not the small configs)."""
    return [
        m
        for m in touched
        if (m.startswith("data/") and not m.endswith("_config.json")) or m.endswith(".pt")
    ]


REPO = Path(__file__).resolve().parent.parent


def run_benchmark(module: str, *args: str, timeout: float, **env: str):
    """Run ``python -m benchmarks.<module> *args`` from the repository root, as its docs say
    to; fail with its output if it exits non-zero. Returns the completed process."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, **env) if env else None,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done
