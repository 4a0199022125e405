"""DVC entry for the `prepare` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["prepare", *sys.argv[1:]])
