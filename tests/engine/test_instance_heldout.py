"""CenterMask-Lite learns the synthetic shapes well enough to generalise: trained for a few
minutes from scratch on the train split of :func:`rtseg.data.synthetic.make_synthetic_coco`, it
reaches a stated box and mask AP on the *held-out* val split (the recipe and the same run from the
command line are in the README, section "Instance segmentation").

The recipe (:data:`DATA`, :data:`MODEL`, :data:`RECIPE`): 600 images of 96x96 (480 train, 120
held out), two classes (circle, triangle) with 1-4 occluding shapes on noise/gradient/stripe
backgrounds; CenterMask-Lite's graph with a 64-channel FPN and small mask heads; 840 Adam steps
(lr 1e-3, 50 warm-up steps, poly decay) of batch 8 with flips, evaluated at the training size.

Measured on 2 threads (idle 2-core machine): held-out box AP 0.307, mask AP 0.297 (AP50 0.55 /
0.49) in ~4.5 minutes (258 s data + training, 9 s evaluation). The same run on shuffled targets
(each training image given the next image's annotations: a broken target assignment) gives box AP
0.002, mask AP 0.001. The bar is box AP and mask AP > 0.20: a third below the measured values,
a hundred times above the shuffled ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import rtseg
from rtseg.config import TrainConfig
from rtseg.data.synthetic import make_synthetic_coco
from rtseg.engine.instance import evaluate_instances, open_coco
from rtseg.engine.trainer import train

#: ``python -m rtseg.data.synthetic OUT --num-images ... --size ... --classes ...`` arguments.
DATA = dict(num_images=600, size=(96, 96), seed=0, classes=("circle", "triangle"), val_fraction=0.2)
#: A CenterMask-Lite (V-19-slim-dw-eSE, trained BatchNorm) with a narrower FPN and heads, tested at
#: the training size.
MODEL = {"fpn_channels": 64, "mask_conv_dim": 64, "maskiou_conv_dim": 32, "backbone_norm": "BN",
         "min_size_test": 96, "max_size_test": 192, "post_nms_topk_train": 20, "post_nms_topk_test": 20,
         "mask_batch_size_per_image": 32}
#: ``rtseg train`` options (flip augmentation on, poly schedule, Adam).
RECIPE = dict(epochs=14, batch_size=8, lr=1e-3, warmup_steps=50, weight_decay=0.0, size=(96, 96), augment=True, seed=0)


def heldout_run(tmp_path: Path, shuffle: bool = False) -> dict:
    """Generate the set, train on its train split, evaluate on its val split. ``shuffle`` trains
    on the annotations of the *next* training image instead (a broken target assignment)."""
    syn = make_synthetic_coco(tmp_path / "shapes", **DATA)
    train_json = syn.train_json
    if shuffle:
        data = json.loads(train_json.read_text())
        ids = [im["id"] for im in data["images"]]
        nxt = {i: ids[(k + 1) % len(ids)] for k, i in enumerate(ids)}
        data["annotations"] = [{**a, "image_id": nxt[a["image_id"]]} for a in data["annotations"]]
        train_json = tmp_path / "shuffled.json"
        train_json.write_text(json.dumps(data))
    train(TrainConfig(model="centermask_lite", data=f"coco:{syn.images_dir},{train_json}", out=str(tmp_path / "run"),
                      progress=False, log_every=0, model_kwargs=dict(MODEL), **RECIPE))
    model = rtseg.load_model("centermask_lite", tmp_path / "run" / "model.pt")
    return evaluate_instances(model, open_coco(f"coco:{syn.root}", "val"), progress=False)


@pytest.mark.slow
def test_heldout_ap_of_the_synthetic_recipe(tmp_path):
    m = heldout_run(tmp_path)
    assert m["images"] == 120
    assert m["box_ap"] > 0.20 and m["mask_ap"] > 0.20, m["table"]
