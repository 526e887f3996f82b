"""The review file of a pseudo-labelled dataset (``DATASET/review.json``).

``{"version": 1, "decisions": {"<sample name>": {"decision": "accept" | "reject" | "flip", ...}}}``.
``flip`` means "accepted with the other teacher's mask" (the label tool has already written that
mask as the sample's mask when the decision is recorded).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from .errors import DataError

ACCEPTING = ("accept", "flip")


def read_review(path: Union[str, Path]) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: unreadable review file ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("decisions", {}), dict):
        raise DataError(f"{p}: review file has no 'decisions' mapping")
    return data


def accepted_names(path: Union[str, Path]) -> set[str]:
    """Names of the samples a person accepted (``accept`` or ``flip``)."""
    decisions = read_review(path).get("decisions", {})
    return {name for name, d in decisions.items() if isinstance(d, dict) and d.get("decision") in ACCEPTING}
