"""Policy checkpoints (router/checkpoint.py): data only, refused by name when foreign or corrupt."""

import pytest
import torch


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    """A pickle whose loading runs a shell command (the classic __reduce__ trick) is refused by the one
    checkpoint loader, and the command never runs."""
    import pickle

    from der_pipeline.router.checkpoint import CheckpointError, load_policy

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "boolq" / "seed-1" / "policy.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "evil": Evil()}, path)  # torch.save pickles the object as it is
    with pytest.raises(CheckpointError, match=r"policy\.pt: not a readable policy checkpoint.*der-pipeline train "
                                               r"-d boolq --to-models"):
        load_policy(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"evil": Evil()}))  # a plain pickle, not torch's zip format
    with pytest.raises(CheckpointError):
        load_policy(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_a_corrupt_or_foreign_file_names_itself_and_how_to_retrain(tmp_path, content):

    from der_pipeline.router.checkpoint import CheckpointError, load_policy

    path = tmp_path / "sst2" / "seed-2" / "policy.pt"
    path.parent.mkdir(parents=True)
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)  # a real torch file, but not a policy checkpoint
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"seed-2/policy\.pt: .*der-pipeline train -d sst2 --to-models"):
        load_policy(path)


def test_every_committed_checkpoint_loads_as_data_only():
    from conftest import REPO

    from der_pipeline.router.checkpoint import load_policy

    paths = sorted(REPO.glob("models/*/seed-*/policy.pt"))
    assert len(paths) >= 30
    for path in paths:
        agent, ckpt = load_policy(path)
        assert ckpt["experts"] and ckpt["n_actions"] >= len(ckpt["experts"])
