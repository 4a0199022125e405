"""The GGUF -> Hugging Face folder cache for vLLM: built atomically, verified, reused, rebuilt when damaged.
(The real conversion runs in the engine test with vLLM's CPU build; here it is a stand-in that writes files.)"""
import json

import pytest

from der_pipeline.experts import hf_export


def fake_convert(calls):
    def convert(gguf, dest, fingerprint):
        calls.append(dest)
        (dest / "model.safetensors").write_bytes(b"w" * 100)
        (dest / "config.json").write_text("{}")
        (dest / hf_export.MANIFEST).write_text(json.dumps({"gguf": fingerprint, "weights_bytes": 100}))
    return convert


def test_folder_is_built_once_reused_and_rebuilt_when_damaged(tmp_path, monkeypatch, repo_params):
    monkeypatch.setenv("DER_PIPELINE_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(hf_export, "_convert", fake_convert(calls))
    expert = repo_params.expert("smollm2-135m")
    first = hf_export.hf_folder(expert)
    assert first.is_dir() and len(calls) == 1
    assert calls[0] != first and not calls[0].exists()  # built beside it, then renamed into place
    assert hf_export.hf_folder(expert) == first and len(calls) == 1  # reused
    (first / "model.safetensors").write_bytes(b"short")  # damaged: the size no longer matches the manifest
    assert hf_export.hf_folder(expert) == first and len(calls) == 2
    manifest = json.loads((first / hf_export.MANIFEST).read_text())
    (first / hf_export.MANIFEST).write_text(json.dumps({**manifest, "gguf": "sha256:other"}))  # another GGUF
    hf_export.hf_folder(expert)
    assert len(calls) == 3
    assert not list(first.parent.glob(".*.tmp"))


def test_a_failed_conversion_leaves_no_folder(tmp_path, monkeypatch, repo_params):
    monkeypatch.setenv("DER_PIPELINE_CACHE", str(tmp_path))

    def boom(gguf, dest, fingerprint):
        (dest / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(hf_export, "_convert", boom)
    expert = repo_params.expert("smollm2-135m")
    with pytest.raises(RuntimeError, match="killed mid-conversion"):  # the converter's own error, unchanged
        hf_export.hf_folder(expert)
    hf_root = tmp_path / "hf"
    assert list(hf_root.iterdir()) == []
