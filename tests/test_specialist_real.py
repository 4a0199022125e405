"""A specialist for real: LoRA fine-tuning of the packaged smollm2-135m on a few SST-2 training sentences,
llama.cpp's own adapter converter, and llama.cpp generating with the adapter applied (a tiny recipe: two
steps of eight examples, at a learning rate high enough for the adapter to move the answer's probabilities);
a run killed after its first checkpoint resumes from it and makes the same adapter."""
import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, SHARED_DATA, run_cli

from der_pipeline.artifacts import adapter_path, dataset_params, load_prepared
from der_pipeline.config import load_params
from der_pipeline.experts.backends import LlamaCppBackend
from der_pipeline.experts.keys import render_prompt
from der_pipeline.specialists.finetune import (
    finetune,
    recipe_of,
    trained_dir,
    training_rows,
)

pytestmark = pytest.mark.slow


def write_params(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str(SHARED_DATA), data=str(tmp_path / "data"))
    raw["data"]["datasets"] = {"sst2": {"sample": 1}}
    raw["specialists"] = {"sst2": {"expert": "smollm2-135m", "train_examples": 16, "rank": 4, "lora_alpha": 8,
                                   "learning_rate": 0.01, "batch_size": 8, "seed": 0}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_finetune_writes_an_adapter_that_llamacpp_applies_and_keeps_it_while_the_recipe_is_unchanged(tmp_path):
    params = write_params(tmp_path)
    p = load_params(params)
    trained = trained_dir(recipe_of(p, "sst2", training_rows(p, "sst2")))
    shutil.rmtree(trained, ignore_errors=True)  # train for real, not from an earlier run's cache
    first = json.loads(run_cli(["finetune", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout)
    adapter = adapter_path(p, "sst2")
    assert first["steps"] == 2 and first["examples"] == 16 and first["resumed_at_step"] == 0
    assert adapter.read_bytes()[:4] == b"GGUF"
    log = json.loads((adapter.parent / "train_log.json").read_text())
    assert log["recipe"]["settings"]["rank"] == 4 and len(log["loss"]) == 2
    assert json.loads((adapter.parent.parent / "specialists.json").read_text()) == {
        "sst2": {"expert": "smollm2-135m", "adapter": "sst2/smollm2-135m.lora.gguf"}}
    before = adapter.read_bytes()
    again = finetune(p, "sst2", progress=False)  # in-process: no second interpreter start
    assert again["kept"] is True and adapter.read_bytes() == before

    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    q = dataset_params(p, "sst2")
    specialist, base = q.experts[0], p.experts[0]
    query = load_prepared(p, "sst2").to_pylist()[0]
    backend = LlamaCppBackend(p.generation)
    try:
        with_lora = next(backend.generate(specialist, [render_prompt(q, specialist, query)]))
        without = next(backend.generate(base, [render_prompt(p, base, query)]))
    finally:
        backend.close()
    assert with_lora.text.strip() and with_lora.confidence is not None
    assert (with_lora.text != without.text
            or abs(with_lora.confidence.mean_logprob - without.confidence.mean_logprob) > 1e-3)


def test_finetune_names_a_dataset_without_a_specialist(tmp_path):
    params = write_params(tmp_path)
    proc = run_cli(["finetune", "--params", str(params), "-d", "boolq"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "no specialist declared" in proc.stderr and "Traceback" not in proc.stderr


def test_a_finetune_killed_after_its_checkpoint_resumes_from_it_and_makes_the_same_adapter(tmp_path):
    params = write_params(tmp_path)
    p = load_params(params)
    trained = trained_dir(recipe_of(p, "sst2", training_rows(p, "sst2")))
    checkpoint = trained.with_name(trained.name + ".checkpoint.pt")
    shutil.rmtree(trained, ignore_errors=True)
    checkpoint.unlink(missing_ok=True)
    whole = finetune(p, "sst2", progress=False)  # uninterrupted: two steps, no checkpoint (5 minutes apart)
    adapter = adapter_path(p, "sst2")
    assert whole["resumed_at_step"] == 0 and not checkpoint.exists()
    reference = adapter.read_bytes()

    shutil.rmtree(trained)
    adapter.unlink()
    # the same recipe in another process, a checkpoint after every step, killed once the first is written
    code = ("import der_pipeline.specialists.finetune as f; from der_pipeline.config import load_params; "
            f"f.CHECKPOINT_SECONDS = 0; f.finetune(load_params({str(params)!r}), 'sst2', progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not trained.exists() and not adapter.exists()

    resumed = finetune(p, "sst2", progress=False)
    assert resumed["resumed_at_step"] == 1 and resumed["steps"] == 2
    assert resumed["loss"] == whole["loss"]
    assert adapter.read_bytes() == reference and not checkpoint.exists()
