"""pi0.5 and SmolVLA from LeRobot 0.4 policy folders, against what LeRobot 0.4.4's PI05Policy and SmolVLAPolicy
computed (../shared/golden/pi05, ../shared/golden/smolvla): every stage, steered and not; and pi0.5 from openpi's own
PyTorch folder against openpi's PI0Pytorch with its pi05_libero transforms (tests/golden_sets/openpi_pi05).

SmolVLA is compared with ``expected_intended_posids/``: the vision tower's patch positions as intended, not as
transformers 4.55.1 - 4.57 shift them (the set's README)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from golden import (
    checkpoint,
    denoise_steered,
    expected,
    golden_concept,
    golden_dir,
    golden_noise,
    lerobot_observation,
    max_abs,
)

from vla_steering.dictionaries import Concept, DictionaryError, InterventionDictionary
from vla_steering.policies import Observation, make_policy, steer
from vla_steering.policies.checkpoint import CheckpointError
from vla_steering.policies.lerobot_processing import ProcessorError, read_pipeline
from vla_steering.policies.pi0 import Pi0Policy
from vla_steering.policies.pi05 import Pi05Policy
from vla_steering.policies.smolvla import SmolVLAPolicy

pytestmark = pytest.mark.golden
TOLERANCE = 1e-4  # the golden READMEs' bound for fp32; float noise is ~1e-7


@dataclass(frozen=True)
class Family:
    name: str
    policy_class: type
    option: str  # the loader option naming the local tokenizer / backbone folder
    local_folder: str  # that folder inside the golden set
    stacks: tuple[str, str]  # (VLM stack, expert stack) as the native model names them
    outputs: str  # the expected folder the native model must match
    state_padded: bool  # whether the set stores the padded state the model receives

    def load(self, **options):
        return make_policy(self.name, str(checkpoint(self.name)),
                           **{self.option: str(golden_dir(self.name) / self.local_folder), **options})

    def expected(self, name: str) -> np.ndarray:
        return expected(self.name, name, self.outputs)


FAMILIES = {
    "pi05": Family("pi05", Pi05Policy, "tokenizer", "paligemma_tokenizer_standin",
                   ("vlm.language_model.layers", "expert.layers"), "expected", False),
    "smolvla": Family("smolvla", SmolVLAPolicy, "vlm", "smolvlm2_standin",
                      ("vlm.text_model.layers", "expert.layers"), "expected_intended_posids", True),
}
_LOADED: dict[str, object] = {}


@pytest.fixture(params=sorted(FAMILIES), scope="module")
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def policy(family):
    if family.name not in _LOADED:
        _LOADED.clear()  # one full-size SigLIP at a time
        _LOADED[family.name] = family.load()
    return _LOADED[family.name]


def family_concept(family: Family, name: str) -> InterventionDictionary:
    return golden_concept(family.name, name, family.stacks)


def test_the_preprocessor_pipeline_and_images_match_lerobot(family, policy):
    inputs = policy.model_inputs(lerobot_observation(family.name))
    names = ["lang_tokens", "lang_attention_mask", "state_normalized", "image_masks"]
    for name in names + (["state_padded"] if family.state_padded else []):
        np.testing.assert_allclose(inputs[name].numpy().astype(np.float64), expected(family.name, name), atol=1e-6,
                                   err_msg=name)
    assert max_abs(inputs["images"], expected(family.name, "images_model_input")) < 1e-6


def test_every_denoising_step_and_the_chunk_match_lerobot(family, policy):
    final, velocities = policy.denoise(policy.model_inputs(lerobot_observation(family.name)),
                                       golden_noise(family.name))
    assert max_abs(velocities[0], family.expected("first_step_velocity")) < TOLERANCE
    assert max_abs(torch.stack(velocities), family.expected("all_step_velocities")) < TOLERANCE
    assert max_abs(final[:, :, :7], family.expected("actions_normalized")) < TOLERANCE
    assert max_abs(policy.unnormalize(final[:, :, :7]), family.expected("actions")) < TOLERANCE


def test_the_policy_path_returns_the_unnormalised_chunk(family, policy, monkeypatch):
    monkeypatch.setattr(policy, "initial_noise", lambda: golden_noise(family.name))
    actions = policy.predict(lerobot_observation(family.name))
    assert actions.shape == (50, 7)
    assert max_abs(actions, family.expected("actions")[0]) < TOLERANCE


@pytest.mark.parametrize("name", ["vlm", "expert"])
def test_steered_runs_match_lerobot_with_the_same_neurons_clamped(family, policy, name):
    final, velocities = denoise_steered(policy, lerobot_observation(family.name), golden_noise(family.name),
                                        family_concept(family, name))
    assert max_abs(velocities[0], family.expected(f"steered_{name}_first_step_velocity")) < TOLERANCE
    assert max_abs(final[:, :, :7], family.expected(f"steered_{name}_actions_normalized")) < TOLERANCE
    assert max_abs(policy.unnormalize(final[:, :, :7]), family.expected(f"steered_{name}_actions")) < TOLERANCE
    effect = max_abs(family.expected(f"steered_{name}_actions"), family.expected("actions"))
    assert max_abs(policy.unnormalize(final[:, :, :7]), family.expected("actions")) > effect / 2  # it acted


def test_strength_zero_is_bit_identical_to_unsteered(family, policy):
    neurons = family_concept(family, "expert").concepts["expert"].neurons
    dictionary = InterventionDictionary({"push": Concept("push", neurons, strength=0.0, stack=family.stacks[1])})
    plain = policy.predict(lerobot_observation(family.name))
    steered = steer(policy, dictionary)
    try:
        chunk = steered.act(lerobot_observation(family.name))
        steered.engine.set_strength("push", 8.0)
        moved = steered.act(lerobot_observation(family.name))
    finally:
        steered.engine.remove()
    space = policy.action_space
    np.testing.assert_array_equal(chunk.actions, np.clip(plain, space.low, space.high))
    assert max_abs(moved.actions, chunk.actions) > 1e-3  # the same concept at strength 8 acts


def test_a_concept_on_the_last_vlm_layer_is_refused_with_the_reason(family, policy):
    stack = dict(policy.model.named_modules())[family.stacks[0]]
    dictionary = InterventionDictionary({"late": Concept("late", ((len(stack) - 1, 3),), stack=family.stacks[0])})
    with pytest.raises(DictionaryError, match="cannot act: the action expert reads only"):
        steer(policy, dictionary)


def test_the_noise_is_seeded_and_the_images_matter(family, policy):
    first = policy.predict(lerobot_observation(family.name))
    np.testing.assert_array_equal(first, policy.predict(lerobot_observation(family.name)))
    black = lerobot_observation(family.name, image=np.zeros((256, 256, 3), np.uint8))
    # fails if the vision tower were bypassed (pi0.5's random-weight prefix moves its actions by ~1e-3 only)
    assert max_abs(first, policy.predict(black)) > 1e-4
    other_seed = family.policy_class(policy.model, policy.config, policy.preprocessor, policy.postprocessor,
                                     seed=1, resize=policy.resize)
    other_seed.resolution = policy.resolution
    assert max_abs(first, other_seed.predict(lerobot_observation(family.name))) > 1e-3


def test_a_processor_step_this_backend_does_not_know_is_an_error_naming_it(family, tmp_path):
    source = golden_dir(family.name)
    spec = json.loads((source / "policy_preprocessor.json").read_text())
    spec["steps"].insert(2, {"registry_name": "my_lab_augmentation", "config": {}})
    (tmp_path / "policy_preprocessor.json").write_text(json.dumps(spec))
    with pytest.raises(ProcessorError, match="'my_lab_augmentation' is not supported"):
        read_pipeline(tmp_path, "policy_preprocessor.json", source / family.local_folder)


def _folder_copy(family: Family, tmp_path, drop: str | None = None):
    """The golden folder's small files, and its weights linked (or rewritten without tensor ``drop``)."""
    source = checkpoint(family.name)
    for item in source.iterdir():
        if item.name == "model.safetensors" and drop is None:
            (tmp_path / item.name).symlink_to(item)
        elif item.is_dir():
            shutil.copytree(item, tmp_path / item.name)
        elif item.name != "model.safetensors":
            shutil.copy(item, tmp_path / item.name)
    if drop is not None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(source / "model.safetensors")
        del tensors[drop]
        save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def test_a_smolvla_folder_missing_a_tensor_is_refused_naming_it(tmp_path):
    family = FAMILIES["smolvla"]
    name = "model.vlm_with_expert.lm_expert.layers.1.self_attn.k_proj.weight"
    folder = _folder_copy(family, tmp_path, drop=name)
    with pytest.raises(CheckpointError, match=r"1 missing: expert\.layers\.1\.self_attn\.k_proj\.weight"):
        SmolVLAPolicy.from_pretrained(folder, vlm=golden_dir("smolvla") / "smolvlm2_standin")


def test_smolvlas_backbone_comes_from_the_local_cache_by_name_and_is_never_downloaded(tmp_path, monkeypatch):
    from huggingface_hub import constants

    config = json.loads((golden_dir("smolvla") / "config.json").read_text())
    repo = "models--" + config["vlm_model_name"].replace("/", "--")
    snapshot = tmp_path / "hub" / repo / "snapshots" / ("0" * 40)
    shutil.copytree(golden_dir("smolvla") / "smolvlm2_standin", snapshot)
    (tmp_path / "hub" / repo / "refs").mkdir()
    (tmp_path / "hub" / repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = SmolVLAPolicy.from_pretrained(checkpoint("smolvla"))
    assert cached.predict(lerobot_observation("smolvla")).shape == (50, 7)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="is never downloaded here; pass the path .* as vlm"):
        SmolVLAPolicy.from_pretrained(checkpoint("smolvla"))


def test_a_folder_of_another_policy_type_is_refused_naming_it():
    with pytest.raises(ValueError, match="describes a 'smolvla' policy, not 'pi05'"):
        Pi05Policy.from_pretrained(checkpoint("smolvla"))
    with pytest.raises(ValueError, match="is an openpi pi0 folder; load it as policy 'pi0'"):
        Pi05Policy.from_pretrained(checkpoint("openpi_pi0"))
    with pytest.raises(ValueError, match="is an openpi pi05 folder; load it as policy 'pi05'"):
        Pi0Policy.from_pretrained(checkpoint(OPENPI))


# ---------------------------------------------------------------- openpi's own PyTorch pi0.5 layout
OPENPI = "openpi_pi05"


@pytest.fixture(scope="module")
def openpi():
    _LOADED.clear()
    return make_policy("pi05", str(checkpoint(OPENPI)),
                       tokenizer=str(golden_dir("pi05") / "paligemma_tokenizer_standin"))


def openpi_observation():
    """The pi0.5 set's inputs under the camera names a LIBERO bridge uses (matched to openpi's slots in order)."""
    observation = lerobot_observation("pi05")
    return Observation({"agentview": observation.images["image"], "wrist": observation.images["wrist_image"]},
                       observation.state, observation.instruction)


def openpi_noise() -> torch.Tensor:
    return golden_noise("pi05")[:, : json.loads((golden_dir(OPENPI) / "config.json").read_text())["action_horizon"]]


def test_an_openpi_pi05_folder_gets_openpis_pi05_libero_inputs(openpi):
    inputs = openpi.model_inputs(openpi_observation())
    for name in ("lang_tokens", "lang_attention_mask", "state_normalized", "state_padded", "image_masks"):
        np.testing.assert_allclose(inputs[name].numpy().astype(np.float64), expected(OPENPI, name), atol=1e-6,
                                   err_msg=name)
    model_images = expected(OPENPI, "images_uint8").astype(np.float32) / 255.0 * 2.0 - 1.0
    assert max_abs(inputs["images"], model_images) == 0.0  # PIL's resize with padding, bit for bit


@pytest.mark.parametrize("name", [None, "vlm", "expert"])
def test_an_openpi_pi05_folder_matches_openpis_pi05(openpi, name):
    dictionary = None if name is None else golden_concept(OPENPI, name, FAMILIES["pi05"].stacks)
    final, velocities = denoise_steered(openpi, openpi_observation(), openpi_noise(), dictionary)
    prefix = "" if name is None else f"steered_{name}_"
    assert max_abs(velocities[0], expected(OPENPI, f"{prefix}first_step_velocity")) < TOLERANCE
    assert max_abs(final[:, :, :7], expected(OPENPI, f"{prefix}actions_normalized")) < TOLERANCE
    assert max_abs(openpi.unnormalize(final[:, :, :7]), expected(OPENPI, f"{prefix}actions")) < TOLERANCE
    if name is None:
        assert max_abs(torch.stack(velocities), expected(OPENPI, "all_step_velocities")) < TOLERANCE
    else:
        assert max_abs(final[:, :, :7], expected(OPENPI, "actions_normalized")) > 1e-4  # the steering acted
