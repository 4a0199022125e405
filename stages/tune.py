"""DVC entry for the `tune` stage: a thin call into der_pipeline (the logic lives there)."""
import sys

from der_pipeline.cli import app

if __name__ == "__main__":
    app(["tune", *sys.argv[1:]])
