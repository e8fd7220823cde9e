"""The XSeg network: shapes, config validation and the checkpoint round trip (with its damage checks)."""

from __future__ import annotations

import json

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.xseg import (UNTRAINED_FILE, XsegConfig, XsegUntrainedError, build_xseg, is_trained, load_xseg, save_xseg,
                        write_untrained_marker)

TINY = XsegConfig(resolution=64, dims=8)


def test_network_maps_crops_to_probabilities_of_the_same_size():
    torch.manual_seed(0)
    model = build_xseg(TINY).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        masks, logits = model(images), model.logits(images)
    assert masks.shape == (3, 1, 64, 64) and logits.shape == (3, 1, 64, 64)
    assert 0 <= masks.min() and masks.max() <= 1
    assert torch.allclose(masks, torch.sigmoid(logits))
    with torch.no_grad():  # group norm: a face's mask does not depend on the batch it is in
        assert torch.allclose(model(images[:1]), masks[:1], atol=1e-6)
    assert TINY.channels == [8, 16, 32, 64, 64]


@pytest.mark.parametrize("changes, message", [({"resolution": 100}, "multiple of 32"), ({"dims": 6}, "multiple of 4"),
                                              ({"face_type": "wide"}, "face_type"), ({"depth": 0}, "positive")])
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        XsegConfig(**{**TINY.to_dict(), **changes})
    with pytest.raises(ValueError, match="unknown xseg config key"):
        XsegConfig.from_dict({**TINY.to_dict(), "archi": "df"})


def test_checkpoint_round_trip_rebuilds_the_network_from_the_file(tmp_path):
    torch.manual_seed(1)
    model = build_xseg(XsegConfig(resolution=64, dims=8, face_type="full"))
    save_xseg(tmp_path, model, {"iterations": 5, "iou": 0.9})
    loaded = load_xseg(tmp_path)
    assert loaded.config == model.config and loaded.state == {"network": "xseg", "iterations": 5, "iou": 0.9}
    assert not loaded.model.training and is_trained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_checkpoint(tmp_path)  # not a swap model: refused with the file named

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="model.safetensors has"):
        load_xseg(tmp_path)


def test_untrained_marker_replaces_the_network_and_is_refused_with_its_reason(tmp_path):
    save_xseg(tmp_path, build_xseg(TINY), {})
    write_untrained_marker(tmp_path, "no labels in data/src/xseg_labels", {"labels": 0})
    assert sorted(path.name for path in tmp_path.iterdir()) == [UNTRAINED_FILE]
    assert json.loads((tmp_path / UNTRAINED_FILE).read_text())["labels"] == 0
    assert not is_trained(tmp_path)
    with pytest.raises(XsegUntrainedError, match="no labels in data/src/xseg_labels"):
        load_xseg(tmp_path)
    save_xseg(tmp_path, build_xseg(TINY), {})
    assert is_trained(tmp_path) and not (tmp_path / UNTRAINED_FILE).exists()
