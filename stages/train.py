"""DVC entry for the `train` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["train", "--to-models", *sys.argv[1:]])
