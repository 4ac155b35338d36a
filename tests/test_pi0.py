"""pi0 from a LeRobot 0.4 policy folder and from an openpi PyTorch folder, against what LeRobot's
PI0Policy (../shared/golden/pi0) and openpi's PI0Pytorch with its pi0_libero transforms
(tests/golden_sets/openpi_pi0) computed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from golden import checkpoint, denoise_steered, expected, golden_concept, golden_dir, lerobot_observation, max_abs
from golden import golden_noise as noise_of
from ros_harness import SOURCE_PATH

from vla_steering.dictionaries import Concept, DictionaryError, InterventionDictionary
from vla_steering.policies import Observation, make_policy, steer
from vla_steering.policies.checkpoint import CheckpointError
from vla_steering.policies.pi0 import EXPERT_STACK, VLM_STACK, Pi0Policy

pytestmark = pytest.mark.golden
FAMILY = "pi0"
TOLERANCE = 1e-4  # the golden README's bound for fp32; float noise is ~1e-6


def golden_observation(**replace) -> Observation:
    return lerobot_observation(FAMILY, **replace)


def golden_noise() -> torch.Tensor:
    return noise_of(FAMILY)


@pytest.fixture(scope="module")
def pi0():
    folder = checkpoint(FAMILY)
    return make_policy(FAMILY, str(folder), tokenizer=str(folder / "paligemma_tokenizer_standin"))


def test_the_preprocessor_pipeline_and_images_match_lerobot(pi0):
    inputs = pi0.model_inputs(golden_observation())
    for name in ("lang_tokens", "lang_attention_mask", "state_normalized", "state_padded", "image_masks"):
        np.testing.assert_allclose(inputs[name].numpy().astype(np.float64), expected(FAMILY, name), atol=1e-6,
                                   err_msg=name)
    assert max_abs(inputs["images"], expected(FAMILY, "images_model_input")) < 1e-6


def test_every_denoising_step_and_the_chunk_match_lerobot(pi0):
    final, velocities = pi0.denoise(pi0.model_inputs(golden_observation()), golden_noise())
    assert max_abs(velocities[0], expected(FAMILY, "first_step_velocity")) < TOLERANCE
    assert max_abs(torch.stack(velocities), expected(FAMILY, "all_step_velocities")) < TOLERANCE
    assert max_abs(final, expected(FAMILY, "final_x_padded")) < TOLERANCE
    assert max_abs(pi0.unnormalize(final[:, :, :7]), expected(FAMILY, "actions")) < TOLERANCE


def test_the_policy_path_returns_the_unnormalised_chunk(pi0, monkeypatch):
    monkeypatch.setattr(pi0, "initial_noise", golden_noise)
    actions = pi0.predict(golden_observation())
    assert actions.shape == (50, 7)
    assert max_abs(actions, expected(FAMILY, "actions")[0]) < TOLERANCE


@pytest.mark.parametrize("name", ["vlm", "expert"])
def test_steered_runs_match_lerobot_with_the_same_neurons_clamped(pi0, name):
    dictionary = golden_concept(FAMILY, name, (VLM_STACK, EXPERT_STACK))
    final, velocities = denoise_steered(pi0, golden_observation(), golden_noise(), dictionary)
    assert max_abs(velocities[0], expected(FAMILY, f"steered_{name}_first_step_velocity")) < TOLERANCE
    assert max_abs(final[:, :, :7], expected(FAMILY, f"steered_{name}_actions_normalized")) < TOLERANCE
    assert max_abs(pi0.unnormalize(final[:, :, :7]), expected(FAMILY, f"steered_{name}_actions")) < TOLERANCE
    assert max_abs(final[:, :, :7], expected(FAMILY, "actions_normalized")) > 0.05  # the steering acted


def test_a_concept_on_the_last_vlm_layer_is_refused_with_the_reason(pi0):
    last = len(pi0.model.model.vlm.language_model.layers) - 1
    dictionary = InterventionDictionary({"late": Concept("late", ((last, 3),), stack=VLM_STACK)})
    with pytest.raises(DictionaryError, match="cannot act: the action expert reads only"):
        steer(pi0, dictionary)
    steer(pi0, InterventionDictionary({"early": Concept("early", ((last - 1, 3),))})).engine.remove()  # primary=VLM


def test_the_noise_is_seeded_and_the_images_matter(pi0):
    first = pi0.predict(golden_observation())
    np.testing.assert_array_equal(first, pi0.predict(golden_observation()))
    black = golden_observation(image=np.zeros((256, 256, 3), np.uint8))
    assert max_abs(first, pi0.predict(black)) > 1e-3  # fails if the vision tower were bypassed
    other_seed = Pi0Policy(pi0.model, pi0.config, pi0.preprocessor, pi0.postprocessor, seed=1)
    assert max_abs(first, other_seed.predict(golden_observation())) > 1e-3


def test_a_folder_with_other_tensor_names_is_refused_not_initialised(tmp_path):
    from safetensors.torch import save_file

    source = checkpoint(FAMILY)
    for name in ("config.json", "policy_preprocessor.json", "policy_postprocessor.json"):
        (tmp_path / name).write_text((source / name).read_text())
    # LeRobot <= 0.3 kept the language model under paligemma.language_model.model
    save_file({"model.paligemma_with_expert.paligemma.language_model.model.layers.0.mlp.down_proj.weight":
               torch.zeros(64, 128)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no Gemma layers"):
        Pi0Policy.from_pretrained(tmp_path)


def test_the_tokenizer_comes_from_the_local_cache_by_name_and_is_never_downloaded(tmp_path):
    snapshot = tmp_path / "hub" / "models--google--paligemma-3b-pt-224" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for item in (golden_dir(FAMILY) / "paligemma_tokenizer_standin").iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (tmp_path / "hub" / "models--google--paligemma-3b-pt-224" / "refs").mkdir()
    (tmp_path / "hub" / "models--google--paligemma-3b-pt-224" / "refs" / "main").write_text("0" * 40)
    code = ("from vla_steering.policies.lerobot_processing import load_tokenizer; "
            "print(load_tokenizer('google/paligemma-3b-pt-224')('pick up')['input_ids'])")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", PYTHONPATH=SOURCE_PATH)
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0 and found.stdout.strip().startswith("[1,"), found.stderr[-2000:]
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    absent = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert absent.returncode != 0 and "is never downloaded here" in absent.stderr


# ---------------------------------------------------------------- openpi's own PyTorch layout
OPENPI = "openpi_pi0"


@pytest.fixture(scope="module")
def openpi():
    return make_policy(FAMILY, str(checkpoint(OPENPI)),
                       tokenizer=str(golden_dir(FAMILY) / "paligemma_tokenizer_standin"))


def openpi_observation() -> Observation:
    """The pi0 set's inputs under the camera names a LIBERO bridge uses (matched to openpi's slots in order)."""
    observation = golden_observation()
    return Observation({"agentview": observation.images["image"], "wrist": observation.images["wrist_image"]},
                       observation.state, observation.instruction)


def test_an_openpi_folder_gets_openpis_inputs(openpi):
    inputs = openpi.model_inputs(openpi_observation())
    for name in ("lang_tokens", "lang_attention_mask", "state_normalized", "state_padded", "image_masks"):
        np.testing.assert_allclose(inputs[name].numpy().astype(np.float64), expected(OPENPI, name), atol=1e-6,
                                   err_msg=name)
    model_images = expected(OPENPI, "images_uint8").astype(np.float32) / 255.0 * 2.0 - 1.0
    assert max_abs(inputs["images"], model_images) == 0.0  # PIL's resize with padding, bit for bit


@pytest.mark.parametrize("name", [None, "vlm", "expert"])
def test_an_openpi_folder_matches_openpis_pi0(openpi, name):
    dictionary = None if name is None else golden_concept(OPENPI, name, (VLM_STACK, EXPERT_STACK))
    final, velocities = denoise_steered(openpi, openpi_observation(), golden_noise(), dictionary)
    prefix = "" if name is None else f"steered_{name}_"
    assert max_abs(velocities[0], expected(OPENPI, f"{prefix}first_step_velocity")) < TOLERANCE
    assert max_abs(final[:, :, :7], expected(OPENPI, f"{prefix}actions_normalized")) < TOLERANCE
    assert max_abs(openpi.unnormalize(final[:, :, :7]), expected(OPENPI, f"{prefix}actions")) < TOLERANCE
    if name is None:
        assert max_abs(torch.stack(velocities), expected(OPENPI, "all_step_velocities")) < TOLERANCE


def test_an_openpi_folder_with_several_assets_needs_asset_id(tmp_path):
    source = checkpoint(OPENPI)
    (tmp_path / "model.safetensors").symlink_to(source / "model.safetensors")
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    for asset in ("physical-intelligence/libero", "mine/libero_spatial"):
        (tmp_path / "assets" / asset).mkdir(parents=True)
        (tmp_path / "assets" / asset / "norm_stats.json").write_text(
            (source / "assets/physical-intelligence/libero/norm_stats.json").read_text())
    with pytest.raises(FileNotFoundError, match="exactly one is needed"):
        Pi0Policy.from_pretrained(tmp_path, tokenizer=str(golden_dir(FAMILY) / "paligemma_tokenizer_standin"))
    with pytest.raises(ValueError, match="'nope' is not among"):
        Pi0Policy.from_pretrained(tmp_path, asset_id="nope")
