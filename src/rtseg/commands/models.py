"""``rtseg models``: list model names with a one-line description."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..models import MODELS, list_models

    for name in list_models():
        print(f"{name:<22} {MODELS[name].description}")
    return 0
