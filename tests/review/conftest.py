"""A small labelled dataset (real photos, the real label pipeline, two stand-in teachers) and a
running review server on a free loopback port."""
from __future__ import annotations

import shutil
import threading

import pytest

from rtseg.labeling.faces import make_face_detector
from rtseg.labeling.pipeline import LabelOptions, label_dataset
from tests.labeling.inputs import EllipseTeacher, make_inputs


@pytest.fixture(scope="session")
def labelled_template(tmp_path_factory):
    """Labelled once per session; tests get a fresh copy (they write decisions and masks)."""
    inputs = make_inputs(tmp_path_factory.mktemp("review_inputs"))
    out = tmp_path_factory.mktemp("review_template") / "ds"
    report = label_dataset([inputs["astronaut"], inputs["mirror"], inputs["noface"], inputs["video"]], out,
                           [EllipseTeacher("wide", 0.95), EllipseTeacher("narrow", 0.55)],
                           make_face_detector("lbp"), LabelOptions(every_seconds=0.5), progress=False)
    assert report.items == 4
    return out


@pytest.fixture
def dataset(labelled_template, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(labelled_template, dst)
    return dst


@pytest.fixture
def server(dataset):
    from rtseg.review.server import make_server

    srv = make_server(dataset, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
