"""A specialist for real: LoRA fine-tuning of the packaged smollm2-135m on a few SST-2 training sentences,
llama.cpp's own adapter converter, and llama.cpp generating with the adapter applied (a tiny recipe: two
steps of four examples, at a learning rate high enough for the adapter to move the answer's probabilities);
a run killed after its first checkpoint resumes from it and makes the same adapter as the one uninterrupted
run of the module (trained once: training is most of these tests' time)."""
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, SHARED_DATA, run_cli, wait_until

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

# training is most of these tests' time: the module fixture's run of finetune, then a killed run resumed
pytestmark = pytest.mark.timeout(1800)  # the tier (slow) is set by the folder: tests/conftest.py


def write_params(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str(SHARED_DATA), data=str(tmp_path / "data"))
    raw["data"]["datasets"] = {"sst2": {"sample": 1}}
    raw["specialists"] = {"sst2": {"expert": "smollm2-135m", "train_examples": 8, "rank": 4, "lora_alpha": 8,
                                   "learning_rate": 0.01, "batch_size": 4, "seed": 0}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cached_training(p):
    """The model cache's trained PEFT adapter of ``p``'s SST-2 recipe, and its checkpoint."""
    trained = trained_dir(recipe_of(p, "sst2", training_rows(p, "sst2")))
    return trained, trained.with_name(trained.name + ".checkpoint.pt")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One `der-pipeline finetune` of the tiny recipe from scratch (nothing cached), uninterrupted: its folder,
    params file, printed summary, training log and adapter bytes."""
    folder = tmp_path_factory.mktemp("specialist")
    params = write_params(folder)
    p = load_params(params)
    trained, checkpoint = cached_training(p)
    shutil.rmtree(trained, ignore_errors=True)  # train for real, not from an earlier run's cache
    checkpoint.unlink(missing_ok=True)
    log = json.loads(run_cli(["finetune", "--params", str(params), "--no-progress"], cwd=folder).stdout)
    assert not checkpoint.exists()  # two steps, no checkpoint (they are 5 minutes apart)
    adapter = adapter_path(p, "sst2")
    return folder, params, log, json.loads((adapter.parent / "train_log.json").read_text()), adapter.read_bytes()


def test_finetune_writes_an_adapter_that_llamacpp_applies_and_keeps_it_while_the_recipe_is_unchanged(uninterrupted):
    tmp_path, params, first, _, _ = uninterrupted
    p = load_params(params)
    adapter = adapter_path(p, "sst2")
    assert first["steps"] == 2 and first["examples"] == 8 and first["resumed_at_step"] == 0
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


def test_a_finetune_killed_after_its_checkpoint_resumes_from_it_and_makes_the_same_adapter(uninterrupted, tmp_path):
    _, _, _, whole, reference = uninterrupted
    params = write_params(tmp_path)  # a fresh data folder: no adapter written yet
    p = load_params(params)
    trained, checkpoint = cached_training(p)
    adapter = adapter_path(p, "sst2")
    shutil.rmtree(trained, ignore_errors=True)  # so the same recipe trains again, here
    checkpoint.unlink(missing_ok=True)
    # the same recipe in another process, a checkpoint after every step, killed once the first is written
    code = ("import der_pipeline.specialists.finetune as f; from der_pipeline.config import load_params; "
            f"f.CHECKPOINT_SECONDS = 0; f.finetune(load_params({str(params)!r}), 'sst2', progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: checkpoint.exists() or proc.poll() is not None, 600, "finetune writing its first checkpoint",
                   interval=0.02)
    except TimeoutError:
        proc.kill()
        raise
    assert checkpoint.exists(), f"finetune exited ({proc.returncode}) before its first checkpoint: {proc.stderr.read()}"
    proc.kill()
    proc.wait()
    assert not trained.exists() and not adapter.exists()

    resumed = finetune(p, "sst2", progress=False)
    assert resumed["resumed_at_step"] == 1 and resumed["steps"] == 2
    assert resumed["loss"] == whole["loss"]
    assert adapter.read_bytes() == reference and not checkpoint.exists()
