"""Shared fixtures: tiny random decoders (exact checks), the real SmolLM2 (meaning checks), and a
fresh pip install of the project (the product as users install it)."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# the paper's dictionaries, in ../shared beside the checkout (as in CI)
REFERENCE_DICTIONARIES = Path(__file__).resolve().parents[2] / "shared" / "reference_dictionaries"


def tiny_llama(seed: int = 0, layers: int = 3, hidden: int = 32, intermediate: int = 48, vocab: int = 97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def tiny_gemma3(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=101, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                              max_position_embeddings=64, sliding_window=16)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # Gemma norms start at zero gain offset; make them non-trivial
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.5)
    return model


@pytest.fixture()
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (model, tokenizer), loaded once."""
    from vla_steering.loading import load_language_model

    return load_language_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_projection(smollm2):
    """Value-vector projection of SmolLM2's upper layers, with decoded tokens."""
    from vla_steering.projection import project_value_vectors, source_from_model, tokenizer_decoder

    model, tokenizer = smollm2
    projection = project_value_vectors(source_from_model(model, "smollm2-135m"), layers=range(18, 30),
                                       top_k=10, progress=False)
    projection.attach_tokens(tokenizer_decoder(tokenizer))
    return projection


@pytest.fixture(scope="session")
def fresh_install(tmp_path_factory) -> Path:
    """A new venv holding only this project's install (dependencies through a .pth to the project's venv)."""
    prefix = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    packages = next((prefix / "lib").glob("python3*")) / "site-packages"
    (packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    build = tmp_path_factory.mktemp("build")
    project = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(prefix / "bin" / "python"), "install",
                             "-q", "--no-deps", "--no-build-isolation", project], cwd=build, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return prefix
