"""Bring a model folder saved before model cards were checksummed (format 1) to format 2.

Only ``format_version`` and ``card_sha256`` of model.json change; the card must pass the schema
and its ``sha256`` must match model.safetensors, which is never touched.

Usage:
    python scripts/reseal_model_card.py weights/default
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoeclass.checkpoint import CheckpointError, reseal_card  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="model folders holding model.json and model.safetensors")
    status = 0
    for folder in parser.parse_args().folders:
        try:
            print(f"resealed {reseal_card(folder)}")
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
