"""The landmark model shipped inside the package: it loads from weights only, its card says what
a user needs, and on the validation faces named in its card it gives the NME the card states."""

from __future__ import annotations

import pytest
import torch

from wherewhat.data.faces import load_pts_folder
from wherewhat.landmarking import LandmarkPredictor
from wherewhat.landmarking.detectors import PROFILE_KIND
from wherewhat.landmarking.photo_bench import truth_box_nme
from wherewhat.landmarking.shipped import shipped_card, shipped_weights


def test_shipped_model_is_small_weights_only_and_carded():
    weights = shipped_weights()
    assert sum(p.stat().st_size for p in weights.parent.iterdir()) <= 12 * 2**20
    payload = torch.load(weights, map_location="cpu", weights_only=True)  # no pickled code
    assert payload["state_dict"]
    card = shipped_card()
    assert "300-W" in card["trained_on"] and card["shipped_by"].startswith("python benchmarks/")
    assert {"opencv_haar", PROFILE_KIND} <= set(card["calibrations"])
    assert 0 < card["photos"]["nme_truth_boxes"] < 0.1 and len(card["check_faces"]) >= 3


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_shipped_model_gives_its_card_nme_on_the_card_faces(shared_data, backend):
    folder = shared_data / "faces68"
    card = shipped_card()
    wanted = {face["pts"]: face["nme"] for face in card["check_faces"]}
    records = {
        r.image_path.with_suffix(".pts").relative_to(folder).as_posix(): r
        for r in load_pts_folder(folder, 68)
    }
    predictor = LandmarkPredictor.shipped(detector=None, backend=backend)
    for pts, stated in wanted.items():
        measured = truth_box_nme(predictor, records[pts])
        assert abs(100 * (measured - stated)) < 0.1, (pts, measured, stated)
