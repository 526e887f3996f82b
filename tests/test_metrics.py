import json
import math

import numpy as np
import pytest
import torch

from rtseg.metrics import ConfusionMatrix

# 2 x 4 image, 3 classes + ignore
TARGET = np.array([[0, 0, 1, 1],
                   [0, 2, 255, 1]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 0, 0]])
# counted pixels (7): (t,p) = (0,0) (0,1) (1,1) (1,1) (0,0) (2,2) (1,0)
# class 0: TP 2, FP 1 (t1->p0), FN 1 (t0->p1) -> IoU 2/4
# class 1: TP 2, FP 1, FN 1                   -> IoU 2/4
# class 2: TP 1                               -> IoU 1
# pixel accuracy 5/7


def test_hand_computed_ious_numpy_and_torch():
    for pred, target in [(PRED, TARGET), (torch.from_numpy(PRED), torch.from_numpy(TARGET))]:
        cm = ConfusionMatrix(3)
        cm.update(pred, target)
        assert cm.mat.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 1]]
        assert np.allclose(cm.iou(), [0.5, 0.5, 1.0])
        assert cm.miou() == pytest.approx(2 / 3)
        assert cm.pixel_accuracy() == pytest.approx(5 / 7)
        assert np.allclose(cm.class_accuracy(), [2 / 3, 2 / 3, 1.0])
        assert cm.total == 7


def test_ignore_index_is_skipped_whatever_the_prediction():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(PRED, TARGET)
    other = PRED.copy()
    other[1, 2] = 2  # the prediction at the ignored pixel changes
    b.update(other, TARGET)
    assert torch.equal(a.mat, b.mat)
    c = ConfusionMatrix(3, ignore_index=0)
    c.update(PRED, np.where(TARGET == 255, 1, TARGET))
    assert c.total == 5


def test_absent_class_is_nan_and_left_out_of_miou():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    iou = cm.iou()
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(2 / 3)
    # a class only predicted (never in the target) has IoU 0, not NaN
    cm2 = ConfusionMatrix(4)
    cm2.update(np.array([[3, 0]]), np.array([[0, 0]]))
    assert cm2.iou()[3] == 0.0 and math.isnan(cm2.iou()[1])
    empty = ConfusionMatrix(2)
    assert math.isnan(empty.miou()) and math.isnan(empty.pixel_accuracy())


def test_scores_are_argmaxed_and_batches_accumulate():
    scores = torch.nn.functional.one_hot(torch.from_numpy(PRED), 3).permute(2, 0, 1)[None].float()
    cm = ConfusionMatrix(3)
    cm.update(scores, torch.from_numpy(TARGET)[None])
    cm.update(PRED[None], TARGET[None])
    assert cm.mat.tolist() == [[4, 2, 0], [2, 4, 0], [0, 0, 2]]
    assert np.allclose(cm.iou(), [0.5, 0.5, 1.0])


def test_merge_equals_joint_update_and_all_reduce_without_distributed():
    rng = np.random.default_rng(0)
    p, t = rng.integers(0, 5, (2, 8, 8)), rng.integers(0, 5, (2, 8, 8))
    joint = ConfusionMatrix(5).update(p, t)
    a = ConfusionMatrix(5).update(p[:1], t[:1])
    b = ConfusionMatrix(5).update(p[1:], t[1:])
    assert torch.equal(a.merge(b).mat, joint.mat)
    before = joint.mat.clone()
    assert torch.equal(joint.all_reduce().mat, before)  # not initialised: no-op
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(4))


def test_bad_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"target labels \[7\]"):
        cm.update(np.zeros((1, 2)), np.array([[7, 0]]))
    with pytest.raises(ValueError, match=r"predicted labels \[5\]"):
        cm.update(np.array([[5, 0]]), np.zeros((1, 2)))


def test_table_and_dict_name_every_class():
    cm = ConfusionMatrix(4).update(PRED, TARGET)
    names = ["road", "sidewalk", "building", "traffic sign"]
    table = cm.table(names)
    for n in names:
        assert n in table
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    assert "50.00" in lines["road"] and "100.00" in lines["building"] and "n/a" in lines["traffic sign"]
    assert "66.67" in lines["mIoU"]
    assert "class_0" in cm.table()
    d = cm.to_dict(names)
    json.dumps(d, allow_nan=False)  # strictly valid JSON: no NaN
    assert d["iou"]["traffic sign"] is None
    assert d["iou"]["road"] == pytest.approx(0.5)
    assert d["miou"] == pytest.approx(2 / 3) and d["num_pixels"] == 7
    with pytest.raises(ValueError, match="3 class names"):
        cm.table(names[:3])


def _all_reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(3)
        cm.update(PRED[rank:rank + 1], TARGET[rank:rank + 1])  # each rank sees one row
        cm.all_reduce()
        np.save(f"{out_dir}/rank{rank}.npy", cm.mat.numpy())
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_ranks(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or "fork" not in mp.get_all_start_methods():
        pytest.skip("torch.distributed or the fork start method not available")
    # fork: the workers reuse the imported torch instead of paying a fresh import each
    mp.start_processes(_all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    full = ConfusionMatrix(3).update(PRED, TARGET).mat.numpy()
    for rank in range(2):
        assert np.array_equal(np.load(tmp_path / f"rank{rank}.npy"), full)
