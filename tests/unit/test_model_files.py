"""The model files' checks (experts/models.py): SHA-256 in chunks, the fingerprint memo, and a packaged model
verified by size and SHA-256 against its pinned values, a damaged cached copy removed and one inside a package
kept; small temporary files stand in for the models (no real model is read)."""
import hashlib
import json
import re

import pytest

from der_pipeline.experts import models
from der_pipeline.experts.models import (
    ModelNotFoundError,
    PackagedModel,
    file_fingerprint,
    resolve_model_path,
    sha256_file,
)

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2's test vector
GOOD = b"GGUF" + bytes(range(60))  # the stand-in model: 64 bytes
GOOD_SHA256 = hashlib.sha256(GOOD).hexdigest()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DER_PIPELINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def test_sha256_in_chunks_is_the_files_hash(tmp_path):
    f = tmp_path / "abc"
    f.write_bytes(b"abc")
    assert sha256_file(f) == sha256_file(f, chunk=1) == ABC_SHA256
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_the_fingerprint_is_hashed_once_per_path_size_and_mtime(tmp_path, cache, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc")
    assert file_fingerprint(f) == ABC_SHA256
    memo = json.loads((cache / "fingerprints.json").read_text())
    st = f.stat()
    assert memo == {f"{f.resolve()}|3|{int(st.st_mtime)}": ABC_SHA256}
    monkeypatch.setattr(models, "sha256_file", lambda path: pytest.fail("hashed again"))
    assert file_fingerprint(f) == ABC_SHA256  # from the memo
    f.write_bytes(b"abcd")  # another size: hashed afresh
    monkeypatch.undo()
    monkeypatch.setenv("DER_PIPELINE_CACHE", str(cache.parent))
    assert file_fingerprint(f) == hashlib.sha256(b"abcd").hexdigest()
    assert len(json.loads((cache / "fingerprints.json").read_text())) == 2


def packaged(monkeypatch, sha256=GOOD_SHA256, size=len(GOOD), where=None, content=GOOD) -> list:
    """A 'package:stand-in' model whose locate writes ``content`` into the cache (or into ``where``, a package's
    own folder); returns the list of paths it was asked for."""
    asked = []

    def locate(out):
        asked.append(out)
        target = out if where is None else where / out.name
        if not target.exists():
            target.write_bytes(content)
        return target

    monkeypatch.setitem(models.PACKAGED, "stand-in", PackagedModel("stand-in-pkg", "stand-in.gguf", locate,
                                                                   sha256=sha256, size=size))
    return asked


def test_a_cached_model_with_its_pinned_size_and_hash_is_used(cache, monkeypatch):
    asked = packaged(monkeypatch)
    path = resolve_model_path("package:stand-in")
    assert path == cache / "stand-in.gguf" == asked[0] and path.read_bytes() == GOOD


def test_a_cached_model_of_the_wrong_size_is_removed_before_any_hashing(cache, monkeypatch):
    packaged(monkeypatch, content=GOOD + b"x")
    monkeypatch.setattr(models, "file_fingerprint", lambda path: pytest.fail("hashed a file of the wrong size"))
    with pytest.raises(ModelNotFoundError, match=re.escape("cached stand-in.gguf had the wrong size and was removed; "
                                                           "rerun to rebuild it")):
        resolve_model_path("package:stand-in")
    assert not (cache / "stand-in.gguf").exists()


def test_a_cached_model_of_the_right_size_but_another_hash_is_removed(cache, monkeypatch):
    packaged(monkeypatch, content=GOOD[:-1] + b"\xff")  # same size, one byte changed
    with pytest.raises(ModelNotFoundError, match="cached stand-in.gguf failed its SHA-256 check and was removed"):
        resolve_model_path("package:stand-in")
    assert not (cache / "stand-in.gguf").exists()


def test_without_a_pinned_size_only_the_hash_decides(cache, monkeypatch):
    packaged(monkeypatch, size=None)
    assert resolve_model_path("package:stand-in").read_bytes() == GOOD
    (cache / "stand-in.gguf").write_bytes(GOOD + b"x")
    with pytest.raises(ModelNotFoundError, match="failed its SHA-256 check"):
        resolve_model_path("package:stand-in")


def test_a_bad_model_inside_its_package_is_kept_and_the_package_named(tmp_path, cache, monkeypatch):
    package_dir = tmp_path / "site-packages" / "stand_in"
    package_dir.mkdir(parents=True)
    packaged(monkeypatch, where=package_dir, content=GOOD + b"x")
    with pytest.raises(ModelNotFoundError, match=re.escape("stand-in.gguf had the wrong size; reinstall the package: "
                                                           "pip install --force-reinstall stand-in-pkg")):
        resolve_model_path("package:stand-in")
    assert (package_dir / "stand-in.gguf").read_bytes() == GOOD + b"x"  # not ours to delete


def test_every_packaged_model_pins_a_full_sha256():
    for name, spec in models.PACKAGED.items():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), name
        assert spec.size is None or spec.size > 0, name
