"""DVC entry for the `finetune` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["finetune", "--no-progress", *sys.argv[1:]])
