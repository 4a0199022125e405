"""The experts' own confidence from a real packaged model, and the resumable scoring pass of the `confidence`
stage on a real tree."""
import hashlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, wait_until
from test_generate_real import write_params

from der_pipeline.artifacts import confidence_dir, load_confidence
from der_pipeline.config import load_params
from der_pipeline.experts.backends import make_backend
from der_pipeline.experts.prompts import build_prompt
from der_pipeline.generate.tree import read_tree
from der_pipeline.io import write_table
from der_pipeline.schemas import CONFIDENCE_FIELDS, TREE

# the tier (slow) is set by the folder: tests/conftest.py

OBVIOUS = ("Is the Eiffel Tower in Paris?",
           "Eiffel Tower: The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.")
AMBIGUOUS = ("Is the number of grains of sand on Mars even?", "Mars: Mars is the fourth planet from the Sun.")


def test_an_obvious_yes_has_a_yes_mass_above_half_and_a_wider_margin_than_an_ambiguous_question(repo_params):
    backend = make_backend(repo_params.generation)
    expert = repo_params.expert("qwen2.5-coder-1.5b")
    try:
        outs = [next(backend.generate(expert, [build_prompt(True, q, c, "yes_no", 12)]))
                for q, c in (OBVIOUS, AMBIGUOUS)]
        rescored = [next(backend.score(expert, [build_prompt(True, q, c, "yes_no", 12)], [o.text]))
                    for (q, c), o in zip((OBVIOUS, AMBIGUOUS), outs)]
    finally:
        backend.close()
    sure, unsure = outs[0].confidence, outs[1].confidence
    assert sure.yes_prob > 0.5
    assert abs(sure.yes_prob - 0.5) > abs(unsure.yes_prob - 0.5)
    assert sure.answer_tokens == outs[0].completion_tokens or sure.answer_tokens >= 1
    assert -20 < sure.min_logprob <= sure.mean_logprob <= 0 and 0 < sure.first_prob <= 1
    # scoring a stored answer afterwards (prompt evaluation only) gives what generation recorded
    for recorded, again in zip((sure, unsure), rescored):
        assert again.yes_prob == pytest.approx(recorded.yes_prob, abs=1e-4)
        assert again.mean_logprob == pytest.approx(recorded.mean_logprob, abs=1e-3)


def digest(folder):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("shard-*.parquet"))}


@pytest.mark.timeout(1200)  # a real tree generated, a pass killed (up to 300 s in) and a second pass
def test_the_scoring_pass_resumes_after_a_kill_and_leaves_the_tree_untouched(tmp_path):
    params = write_params(tmp_path, n=3, chunk=3)
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    run_cli(["generate", "--params", str(params), "--no-progress"], cwd=tmp_path)
    p = load_params(params)
    tree_folder = tmp_path / "data" / "tree" / "boolq"
    for shard in tree_folder.glob("shard-*.parquet"):  # a tree made before confidences were recorded
        t = pq.read_table(shard)
        for f in CONFIDENCE_FIELDS:
            t = t.set_column(t.schema.get_field_index(f.name), f, pa.nulls(t.num_rows, f.type))
        write_table(t, shard, TREE)
    before = digest(tree_folder)
    answers = {(r["qid"], r["path"]): r["answer"] for r in read_tree(p, "boolq").nodes.to_pylist()}
    proc = subprocess.Popen([sys.executable, "-m", "der_pipeline.cli", "confidence", "--params", str(params),
                             "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_folder = confidence_dir(p, "boolq")
    try:
        wait_until(lambda: proc.poll() is not None or list(out_folder.glob("shard-*.parquet")), 300,
                   "the confidence pass writing its first shard")
    except TimeoutError:
        proc.kill()
        raise
    assert proc.poll() is None, "the pass finished before it could be killed"
    proc.kill()
    proc.wait()
    partial = len(load_confidence(p, "boolq", read_tree(p, "boolq").nodes))
    assert 0 < partial < 3 * 2
    out = run_cli(["confidence", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout
    assert f'"already_stored": {partial}' in out and f'"scored": {3 * 2 - partial}' in out
    conf = load_confidence(p, "boolq", read_tree(p, "boolq").nodes)
    assert set(conf) == {(q, path) for q, path in answers if ">" not in path}  # every hop-1 node, once
    assert all(r["answer_tokens"] is not None for r in conf.values())
    assert digest(tree_folder) == before  # the tree's files, text included, are untouched
    assert {(r["qid"], r["path"]): r["answer"] for r in read_tree(p, "boolq").nodes.to_pylist()} == answers
