"""``rtseg label``: pseudo-label portrait images and videos with a face detector and teachers."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_VIDEOS",
                   help="image and video files, or folders searched for them")
    p.add_argument("--out", required=True, metavar="DATASET_DIR",
                   help="dataset folder to write (EG1800 layout + queue.json); re-running resumes")
    p.add_argument("--teacher", action="append", default=[], metavar="MODEL:WEIGHTS",
                   help="a teacher: an rtseg model with weights (e.g. sinet:SINet.pth), or 'mediapipe' "
                        "(MediaPipe selfie segmenter, if installed); repeat for several")
    p.add_argument("--face-detector", default="auto", metavar="NAME[:MODEL]",
                   help="auto (default), mediapipe, haar or lbp (scikit-image)")
    p.add_argument("--every-seconds", type=float, default=1.0, help="videos: one frame per this many seconds")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of source files put in val.txt (split by file, not by frame)")
    p.add_argument("--dedup-threshold", type=float, default=3.0,
                   help="videos: drop a frame whose 32x32 grey thumbnail differs from the last kept "
                        "frame's by less than this mean absolute value (0..255)")
    p.add_argument("--max-side", type=int, default=800, help="shrink images to at most this longer side (0: keep)")
    p.add_argument("--skip-bad", action="store_true", help="warn about unreadable inputs and go on")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..errors import RtsegError
    from ..labeling.faces import make_face_detector
    from ..labeling.pipeline import LabelOptions, label_dataset
    from ..labeling.teachers import parse_teacher

    if not args.teacher:
        raise RtsegError("no teacher: give at least one --teacher MODEL:WEIGHTS (e.g. sinet:SINet.pth) "
                         "or --teacher mediapipe")
    options = LabelOptions(every_seconds=args.every_seconds, val_fraction=args.val_fraction,
                           dedup_threshold=args.dedup_threshold, max_side=args.max_side or None,
                           skip_bad=args.skip_bad)
    options.check()
    teachers = [parse_teacher(spec) for spec in args.teacher]
    detector = make_face_detector(args.face_detector)
    report = label_dataset(args.inputs, args.out, teachers, detector, options, teacher_specs=args.teacher,
                           progress=False if args.no_progress else None)
    print(f"labelled {report.labelled} new, {report.already_done} already done; dropped {report.no_face} "
          f"without a face and {report.duplicates} near-duplicate frames"
          + (f"; skipped {len(report.bad_inputs)} unreadable inputs" if report.bad_inputs else ""))
    print(f"{report.items} items to review in {report.queue_path} (face detector: {detector.name})")
    return 0
