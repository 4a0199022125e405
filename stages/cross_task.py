"""DVC entry for the `cross_task` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["cross-task", *sys.argv[1:]])
