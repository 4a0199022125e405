"""DVC entry for the `evaluate` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["evaluate", *sys.argv[1:]])
