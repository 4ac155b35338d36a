"""OpenVLA from its published folder layout, against what OpenVLA's own code computed (../shared/golden/openvla)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from golden import checkpoint, expected, golden_dir, max_abs

from vla_steering.dictionaries import Concept, InterventionDictionary
from vla_steering.policies import Observation, make_policy, steer
from vla_steering.policies.checkpoint import CheckpointError
from vla_steering.policies.openvla import OpenVLAPolicy, center_crop

pytestmark = pytest.mark.golden
FAMILY = "openvla"


def golden_observation(image: np.ndarray | None = None) -> Observation:
    from PIL import Image

    inputs = golden_dir(FAMILY) / "inputs"
    if image is None:
        image = np.asarray(Image.open(inputs / "image.png").convert("RGB"))
    return Observation({"agentview": image}, np.zeros(8, np.float32), (inputs / "instruction.txt").read_text())


def golden_concept() -> InterventionDictionary:
    spec = json.loads((golden_dir(FAMILY) / "steering.json").read_text())
    neurons = tuple((spec["layer_index"], n) for n in spec["neurons"])
    return InterventionDictionary({"golden": Concept("golden", neurons, mode="clamp", strength=spec["value"])})


@pytest.fixture(scope="module")
def fp32():
    return make_policy(FAMILY, str(checkpoint(FAMILY)), dtype="float32")


def test_preprocessing_reproduces_the_upstream_processor(fp32):
    pixel_values, input_ids = fp32.model_inputs(golden_observation())
    assert max_abs(pixel_values, expected(FAMILY, "pixel_values")) < 1e-6
    np.testing.assert_array_equal(input_ids.numpy(), expected(FAMILY, "input_ids"))


def test_float32_decode_matches_upstream_tokens_logits_and_actions(fp32):
    tokens, logits = fp32.decode(*fp32.model_inputs(golden_observation()))
    np.testing.assert_array_equal(tokens, expected(FAMILY, "generated_token_ids", "expected_fp32"))
    assert max_abs(logits, expected(FAMILY, "step_logits", "expected_fp32")) < 1e-4  # every cached step
    assert max_abs(logits, expected(FAMILY, "step_logits")) < 0.3  # and the bf16 reference
    np.testing.assert_allclose(fp32.actions_from_tokens(tokens), expected(FAMILY, "actions", "expected_fp32"),
                               atol=1e-9)


def test_steered_decode_matches_upstream_with_the_same_neurons_clamped(fp32):
    steered = steer(fp32, golden_concept())
    try:
        with steered.engine.applied():
            tokens, logits = fp32.decode(*fp32.model_inputs(golden_observation()))
        np.testing.assert_array_equal(tokens, expected(FAMILY, "steered_generated_token_ids", "expected_fp32"))
        assert max_abs(logits, expected(FAMILY, "steered_step_logits", "expected_fp32")) < 1e-4
        np.testing.assert_allclose(fp32.actions_from_tokens(tokens),
                                   expected(FAMILY, "steered_actions", "expected_fp32"), atol=1e-9)
        # through the policy's own path: LIBERO's gripper convention on top of the same actions
        chunk = steered.act(golden_observation())
        np.testing.assert_allclose(chunk.actions[0, :6], expected(FAMILY, "steered_actions")[:6], atol=1e-6)
        assert chunk.steering.strengths == {"golden": 8.0}
    finally:
        steered.engine.remove()


def test_the_image_reaches_the_model(fp32):
    """Fails if the vision towers were bypassed: only the image changes, and so do the actions."""
    image = golden_observation().images["agentview"]
    actions = [fp32.predict(golden_observation(x)) for x in (image, np.zeros_like(image), 255 - image)]
    assert not np.array_equal(actions[0], actions[1]) and not np.array_equal(actions[0], actions[2])


def test_bfloat16_as_published_matches_upstream():
    policy = make_policy(FAMILY, str(checkpoint(FAMILY)))  # bfloat16 by default, as upstream runs it
    tokens, logits = policy.decode(*policy.model_inputs(golden_observation()))
    np.testing.assert_array_equal(tokens, expected(FAMILY, "generated_token_ids"))
    assert max_abs(logits, expected(FAMILY, "step_logits")) < 0.3


@pytest.fixture()
def variant(tmp_path):
    """A copy of the golden folder whose small files a test may change (shards linked, not copied)."""
    source = checkpoint(FAMILY)
    for item in source.iterdir():
        if item.suffix == ".safetensors":
            (tmp_path / item.name).symlink_to(item)
        elif item.is_file():
            shutil.copy(item, tmp_path / item.name)
    return tmp_path


def test_several_datasets_need_unnorm_key_and_dataset_statistics_json_wins(variant):
    stats = json.loads((variant / "dataset_statistics.json").read_text())
    other = json.loads(json.dumps(stats["libero_spatial_no_noops"]))
    other["action"]["q99"] = [2.0] * 7
    stats["bridge_orig"] = other
    (variant / "dataset_statistics.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"choose unnorm_key among \['bridge_orig', 'libero_spatial_no_noops'\]"):
        OpenVLAPolicy.from_pretrained(variant, dtype="float32")
    with pytest.raises(ValueError, match="'nope' is not in"):
        OpenVLAPolicy.from_pretrained(variant, unnorm_key="nope", dtype="float32")
    policy = OpenVLAPolicy.from_pretrained(variant, unnorm_key="bridge_orig", dtype="float32")
    assert policy.action_stats["q99"] == [2.0] * 7  # config.json's norm_stats has one key; the file wins


def test_a_missing_shard_and_a_foreign_folder_are_refused(variant):
    (variant / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors"):
        OpenVLAPolicy.from_pretrained(variant, dtype="float32")
    config = json.loads((variant / "config.json").read_text())
    config["timm_model_ids"][0] = "vit_base_patch16_224"
    (variant / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vit_base_patch16_224"):
        OpenVLAPolicy.from_pretrained(variant, dtype="float32")


def test_center_crop_keeps_the_central_area():
    from PIL import Image

    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :2] = 255  # a white border that a 0.9 area crop removes
    cropped = np.asarray(center_crop(Image.fromarray(image), 0.9))
    assert cropped.shape == image.shape and cropped.max() == 0
    assert np.array_equal(np.asarray(center_crop(Image.fromarray(image), 1.0)), image)
