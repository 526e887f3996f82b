"""The review file of a pseudo-labelled dataset (``DATASET/review.json``).

``{"version": 1, "decisions": {"<sample name>": {"decision": "accept" | "reject" | "flip", ...}}}``.
``flip`` means "accepted with the other teacher's mask" (the label tool has already written that
mask as the sample's mask when the decision is recorded); a flip also names the ``teacher``
whose mask was used. Every decision carries the UTC ``time`` it was made.

This module is the only code that reads or writes the format: ``rtseg review`` records decisions
through :func:`record_decision`, ``rtseg train`` keeps samples through :func:`accepted_names`.
Writes are atomic (temp file in the same folder, fsync, rename, fsync of the folder), so a crash
or a concurrent reader never sees half a file.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from .errors import DataError
from .fileio import write_text_atomic

FORMAT_VERSION = 1
DECISIONS = ("accept", "reject", "flip")
ACCEPTING = ("accept", "flip")

PathLike = Union[str, os.PathLike]


def empty_review() -> dict:
    return {"version": FORMAT_VERSION, "decisions": {}}


def read_review(path: PathLike) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: unreadable review file ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("decisions", {}), dict):
        raise DataError(f"{p}: review file has no 'decisions' mapping")
    data.setdefault("decisions", {})
    return data


def read_review_or_empty(path: PathLike) -> dict:
    """:func:`read_review`, or an empty review when the file does not exist yet."""
    return read_review(path) if Path(path).exists() else empty_review()


def accepted_names(path: PathLike) -> set[str]:
    """Names of the samples a person accepted (``accept`` or ``flip``)."""
    decisions = read_review(path).get("decisions", {})
    return {name for name, d in decisions.items() if isinstance(d, dict) and d.get("decision") in ACCEPTING}


def decision_of(review: dict, name: str) -> Optional[dict]:
    """The decision record of ``name`` in a review dict, or None if undecided."""
    d = review.get("decisions", {}).get(name)
    return d if isinstance(d, dict) and d.get("decision") in DECISIONS else None


def write_review(path: PathLike, review: dict) -> None:
    """Write the whole review atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    if not isinstance(review, dict) or not isinstance(review.get("decisions"), dict):
        raise DataError(f"{path}: refusing to write a review without a 'decisions' mapping")
    text = json.dumps({**review, "version": FORMAT_VERSION}, indent=1, sort_keys=True) + "\n"
    write_text_atomic(path, text)


def record_decision(path: PathLike, name: str, decision: str, **extra: Any) -> dict:
    """Set the decision for sample ``name`` and write the review file at once (atomically).

    ``extra`` (JSON values, e.g. ``teacher="sinet"`` for a flip) is stored beside the decision.
    Returns the new decision record. This is a read-modify-write of the file: callers on several
    threads (the review server) hold one lock around it.
    """
    if decision not in DECISIONS:
        raise DataError(f"decision {decision!r} for {name!r}: expected one of {', '.join(DECISIONS)}")
    record = {"decision": decision, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    review = read_review_or_empty(path)
    review["decisions"][name] = record
    write_review(path, review)
    return record


def clear_decision(path: PathLike, name: str) -> None:
    """Forget the decision for ``name`` (the sample is undecided again)."""
    review = read_review_or_empty(path)
    if review["decisions"].pop(name, None) is not None:
        write_review(path, review)


