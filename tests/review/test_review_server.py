"""`rtseg review` server: decisions POSTed over HTTP land atomically in review.json; flip
rewrites the sample's mask from the other teacher's mask."""
from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from rtseg import cli, review_state
from rtseg.data.datasets import open_dataset
from rtseg.data.io import read_mask
from rtseg.errors import DataError, RtsegError
from rtseg.labeling.layout import DatasetLayout, read_queue
from rtseg.review.server import make_server


def _get(server, path):
    with urllib.request.urlopen(server.url + path, timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def _post(server, body, content_type="application/json", path="api/decision"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _review(dataset):
    return json.loads((dataset / "review.json").read_text())


def test_page_and_state(server, dataset):
    status, ctype, body = _get(server, "")
    assert status == 200 and ctype.startswith("text/html") and b'id="counter"' in body
    for name in ("review.js", "review.css"):
        assert _get(server, f"static/{name}")[0] == 200
    status, _, body = _get(server, "api/state")
    state = json.loads(body)
    queue = read_queue(dataset)
    assert [it["name"] for it in state["items"]] == [it["name"] for it in queue["items"]]
    assert state["counts"] == {"total": 4, "accept": 0, "reject": 0, "flip": 0, "left": 4}
    item = state["items"][0]
    assert item["teachers"] == ["wide", "narrow"] and item["decision"] is None
    assert "image" not in item and "mask" not in item  # file paths stay on the server
    status, ctype, img = _get(server, f"api/file?name={item['name']}&kind=image")
    assert status == 200 and ctype == "image/jpeg" and img[:2] == b"\xff\xd8"
    status, ctype, png = _get(server, f"api/file?name={item['name']}&kind=teacher&teacher=narrow")
    assert status == 200 and ctype == "image/png" and png[:4] == b"\x89PNG"


def test_decisions_are_written_at_once(server, dataset):
    names = [it["name"] for it in read_queue(dataset)["items"]]
    assert not (dataset / "review.json").exists()
    status, res = _post(server, {"name": names[0], "decision": "accept"})
    assert status == 200 and res["item"]["decision"]["decision"] == "accept"
    assert res["counts"]["left"] == 3 and res["counts"]["accept"] == 1
    assert _review(dataset)["decisions"][names[0]]["decision"] == "accept"
    status, res = _post(server, {"name": names[1], "decision": "reject"})
    assert status == 200 and _review(dataset)["decisions"][names[1]]["decision"] == "reject"
    # the trainer's view: only accepted samples are used
    assert review_state.accepted_names(dataset / "review.json") == {names[0]}
    kept = [s.name for split in ("train", "val") for s in _open_or_empty(dataset, split)]
    assert kept == [names[0]]
    # undo
    status, res = _post(server, {"name": names[0], "decision": "clear"})
    assert status == 200 and res["item"]["decision"] is None and names[0] not in _review(dataset)["decisions"]
    # no temp files left behind
    assert not [p for p in os.listdir(dataset) if p.endswith(".tmp")]


def _open_or_empty(dataset, split):
    try:
        return open_dataset(f"eg1800:{dataset}", split).samples
    except DataError:
        return []


def test_flip_rewrites_the_mask_from_the_other_teacher(server, dataset):
    layout = DatasetLayout(dataset)
    item = read_queue(dataset)["items"][0]
    name, gt = item["name"], layout.resolve(item["mask"])
    consensus = read_mask(gt)
    wide = read_mask(layout.resolve(item["teacher_masks"]["wide"]))
    narrow = read_mask(layout.resolve(item["teacher_masks"]["narrow"]))
    assert not np.array_equal(wide, narrow)

    status, res = _post(server, {"name": name, "decision": "flip"})
    assert status == 200 and res["item"]["decision"]["teacher"] == "wide"
    assert np.array_equal(read_mask(gt), wide)
    assert _review(dataset)["decisions"][name] == {**_review(dataset)["decisions"][name], "decision": "flip",
                                                   "teacher": "wide"}
    status, res = _post(server, {"name": name, "decision": "flip"})  # cycles to the next teacher
    assert res["item"]["decision"]["teacher"] == "narrow" and np.array_equal(read_mask(gt), narrow)
    assert _get(server, f"api/file?name={name}&kind=mask")[2] == gt.read_bytes()
    status, res = _post(server, {"name": name, "decision": "flip", "teacher": "wide"})
    assert np.array_equal(read_mask(gt), wide)
    # accepting after a flip goes back to the consensus mask
    status, res = _post(server, {"name": name, "decision": "accept"})
    assert status == 200 and np.array_equal(read_mask(gt), consensus)
    assert name in review_state.accepted_names(dataset / "review.json")


def test_bad_requests_are_refused_with_a_reason(server, dataset):
    name = read_queue(dataset)["items"][0]["name"]
    assert _post(server, {"name": "nope", "decision": "accept"})[0] == 404
    status, res = _post(server, {"name": name, "decision": "maybe"})
    assert status == 400 and "unknown decision" in res["error"]
    assert _post(server, {"name": name, "decision": "flip", "teacher": "ghost"})[0] == 400
    assert _post(server, {"name": name, "decision": "accept"}, content_type="text/plain")[0] == 415
    assert _post(server, b"[1, 2]")[0] == 400
    assert _post(server, b"{not json")[0] == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(server, "api/file?name=../../etc/passwd&kind=image")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(server, "static/..%2f..%2fserver.py")
    assert e.value.code == 404
    # a request naming a non-loopback Host (DNS rebinding) is refused
    req = urllib.request.Request(server.url + "api/state", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403
    assert not (dataset / "review.json").exists()


def test_concurrent_decisions_all_land(server, dataset):
    names = [it["name"] for it in read_queue(dataset)["items"]]
    results = []

    def send(n, d):
        results.append(_post(server, {"name": n, "decision": d})[0])

    threads = [threading.Thread(target=send, args=(n, d)) for n, d in zip(names, ["accept", "reject", "flip", "accept"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4
    decisions = _review(dataset)["decisions"]
    assert {n: d["decision"] for n, d in decisions.items()} == dict(zip(names, ["accept", "reject", "flip", "accept"]))


def test_write_review_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "review.json"
    review_state.record_decision(path, "a", "accept")
    before = path.read_text()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(DataError, match="No space left"):
        review_state.record_decision(path, "b", "reject")
    assert path.read_text() == before  # the old file is intact
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    monkeypatch.undo()
    with pytest.raises(DataError, match="decision 'maybe'"):
        review_state.record_decision(path, "b", "maybe")


def test_server_refuses_non_loopback_and_missing_queue(tmp_path, dataset, capsys):
    with pytest.raises(RtsegError, match="not a loopback address"):
        make_server(dataset, "0.0.0.0", 0)
    assert cli.main(["review", str(tmp_path / "nowhere")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert cli.main(["review", str(tmp_path)]) == 2
    assert "queue.json: not found" in capsys.readouterr().err
