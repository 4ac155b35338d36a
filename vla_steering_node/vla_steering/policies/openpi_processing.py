"""openpi's own PyTorch pi0 / pi0.5 folders without openpi: their config, statistics and input/output transforms.

openpi's ``examples/convert_jax_model_to_pytorch.py`` writes ``model.safetensors``, a small
``config.json`` (``action_dim``, ``action_horizon``, the Gemma variants, ``precision``) and copies
``assets/<asset id>/norm_stats.json``. The folder does not say pi0 or pi0.5; its tensors do
(pi0.5 has ``time_mlp_in``, pi0 ``state_proj``). Which robot transforms apply is not in the folder
either (it is the openpi training config's choice); these backends drive LIBERO-style
end-effector actions, so they apply the ``pi0_libero`` / ``pi05_libero`` transforms, as openpi's
policy server does for those configs:

* cameras: ``base_0_rgb`` and ``left_wrist_0_rgb`` from the first two cameras, a black, masked
  ``right_wrist_0_rgb``; images resized with padding by PIL (``openpi_client.image_tools``) to 224;
* pi0: the state normalised as ``(x - mean) / (std + 1e-6)`` and zero-padded to ``action_dim``;
  pi0.5: quantile normalisation ``2 (x - q01) / (q99 - q01 + 1e-6) - 1``; ``pi05_libero`` keeps the
  state out of the prompt (``discrete_state_input=False``), so the state does not reach the model;
* the prompt as ``PaligemmaTokenizer.tokenize``: ``[BOS] + encode(cleaned text) + encode("\\n")``,
  zero-padded (mask False) or truncated to 48 tokens (pi0) or 200 (pi0.5);
* the actions' first 7 dimensions, un-normalised as ``x * (std + 1e-6) + mean`` (pi0) or
  ``(x + 1) / 2 * (q99 - q01 + 1e-6) + q01`` (pi0.5).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from vla_steering.policies.lerobot_processing import Batch, Pipeline, load_tokenizer

PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"
EPS = 1e-6
LIBERO_ACTION_DIM = 7
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
MAX_TOKENS = {"pi0": 48, "pi05": 200}  # openpi's max_token_len


def is_openpi_folder(folder: Path) -> bool:
    config = folder / "config.json"
    return config.exists() and "action_horizon" in json.loads(config.read_text())


def openpi_family(tensor_names: Iterable[str]) -> str:
    """``pi05`` or ``pi0``: which model an openpi folder's tensors are."""
    return "pi05" if "time_mlp_in.weight" in set(tensor_names) else "pi0"


def read_openpi_folder(folder: Path, asset_id: str | None = None,
                       family: str = "pi0") -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(the policy config in LeRobot's shape, the norm stats) of an openpi PyTorch pi0 / pi0.5 folder."""
    config = json.loads((folder / "config.json").read_text())
    assets = sorted(p.parent for p in (folder / "assets").glob("**/norm_stats.json"))
    names = [str(p.relative_to(folder / "assets")) for p in assets]
    if asset_id is None:
        if len(assets) != 1:
            raise FileNotFoundError(f"{folder}/assets holds norm_stats.json for {names or 'no asset'}; "
                                    "exactly one is needed (or choose one with asset_id)")
        chosen = assets[0]
    elif asset_id in names:
        chosen = folder / "assets" / asset_id
    else:
        raise ValueError(f"asset_id {asset_id!r} is not among {names}")
    raw = json.loads((chosen / "norm_stats.json").read_text())["norm_stats"]
    stats = {key: {s: np.asarray(v, np.float32) for s, v in values.items() if v is not None}
             for key, values in raw.items()}
    if "state" not in stats or "actions" not in stats:
        raise ValueError(f"{chosen}/norm_stats.json needs statistics for state and actions, has {sorted(stats)}")
    needed = ("q01", "q99") if family == "pi05" else ("mean", "std")
    absent = [f"{key}.{s}" for key in ("state", "actions") for s in needed if s not in stats[key]]
    if absent:
        raise ValueError(f"{chosen}/norm_stats.json lacks {absent}, which {family}'s normalisation needs")
    state_dim = len(stats["state"]["mean"])
    visual = {"type": "VISUAL", "shape": [3, 224, 224]}
    policy = {
        "type": family,
        "input_features": {**{f"observation.images.{c}": visual for c in CAMERAS},
                           "observation.state": {"type": "STATE", "shape": [state_dim]}},
        "output_features": {"action": {"type": "ACTION", "shape": [LIBERO_ACTION_DIM]}},
        "chunk_size": int(config["action_horizon"]), "n_action_steps": int(config["action_horizon"]),
        "max_state_dim": int(config["action_dim"]), "max_action_dim": int(config["action_dim"]),
        "num_inference_steps": 10, "image_resolution": [224, 224],
    }
    return policy, stats


def openpi_pipelines(stats: Mapping[str, Mapping[str, np.ndarray]], tokenizer_path: str | Path | None = None,
                     family: str = "pi0") -> tuple[Pipeline, Pipeline]:
    """(pre, post) pipelines that do what openpi's ``{family}_libero`` transforms do, on this project's batch keys."""
    tokenizer = load_tokenizer(PALIGEMMA_TOKENIZER, tokenizer_path)
    max_tokens = MAX_TOKENS[family]
    state, action = ({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in stats[key].items()}
                     for key in ("state", "actions"))
    if family == "pi05":  # quantiles
        def normalize(x, s):
            n = x.shape[-1]
            return 2.0 * (x - s["q01"][:n]) / (s["q99"][:n] - s["q01"][:n] + EPS) - 1.0

        def unnormalize(x, s):
            n = x.shape[-1]
            return (x + 1.0) / 2.0 * (s["q99"][:n] - s["q01"][:n] + EPS) + s["q01"][:n]
    else:  # z-score
        def normalize(x, s):
            n = x.shape[-1]
            return (x - s["mean"][:n]) / (s["std"][:n] + EPS)

        def unnormalize(x, s):
            n = x.shape[-1]
            return x * (s["std"][:n] + EPS) + s["mean"][:n]

    def tokenize(batch: Batch) -> Batch:
        cleaned = batch["task"].strip().replace("_", " ").replace("\n", " ")
        ids = [tokenizer.bos_token_id] + tokenizer(cleaned, add_special_tokens=False)["input_ids"] + \
            tokenizer("\n", add_special_tokens=False)["input_ids"]
        ids = ids[:max_tokens]
        mask = [True] * len(ids) + [False] * (max_tokens - len(ids))
        return {**batch, "observation.language.tokens": torch.tensor([ids + [0] * (max_tokens - len(ids))]),
                "observation.language.attention_mask": torch.tensor([mask])}

    def normalize_state(batch: Batch) -> Batch:
        return {**batch, "observation.state": normalize(batch["observation.state"].float(), state)[None]}

    def images_to_batch(batch: Batch) -> Batch:
        return {k: (v[None] if k.startswith("observation.images.") and v.ndim == 3 else v) for k, v in batch.items()}

    def unnormalize_actions(batch: Batch) -> Batch:
        return {**batch, "action": unnormalize(batch["action"].float(), action)}

    name = f"openpi {family}_libero"
    pre = Pipeline(f"{name} inputs", [("tokenize_prompt", tokenize), ("normalize", normalize_state),
                                       ("batch", images_to_batch)])
    post = Pipeline(f"{name} outputs", [("unnormalize", unnormalize_actions)])
    return pre, post


def resize_with_pad_pil(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] (from uint8) -> (1, 3, height, width): openpi_client's PIL resize_with_pad."""
    from PIL import Image

    if images.shape[-2:] == (height, width):
        return images
    array = (images[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(array)
    ratio = max(image.width / width, image.height / height)
    new_w, new_h = int(image.width / ratio), int(image.height / ratio)
    resized = image.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (max(0, (width - new_w) // 2), max(0, (height - new_h) // 2)))
    return torch.from_numpy(np.asarray(canvas, np.float32) / 255.0).permute(2, 0, 1)[None]
