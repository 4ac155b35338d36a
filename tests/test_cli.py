"""The offline command line on the real SmolLM2: project -> search -> validate -> effect."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import REFERENCE_DICTIONARIES

from vla_steering.cli import main

OPENVLA = REFERENCE_DICTIONARIES / "openvla_7b_dictionaries.yaml"


def test_offline_workflow(tmp_path, capsys):
    out = tmp_path / "proj"
    assert main(["project", "--model", "smollm2-135m", "--out", str(out), "--layers", "24,28"]) == 0
    assert (out / "projection.npz").exists() and (out / "top_tokens.txt").exists()
    dictionary = tmp_path / "up.yaml"
    assert main(["search", "--projection", str(out), "--keywords", "up", "--top-n", "5", "--write",
                 str(dictionary), "--strength", "5"]) == 0
    printed = capsys.readouterr().out
    assert "L24 " in printed and "' up'" in printed
    data = yaml.safe_load(dictionary.read_text())
    assert data["concepts"]["up"]["strength"] == 5.0 and data["model"]["intermediate_size"] == 1536
    assert main(["validate", "--dictionary", str(dictionary), "--model", "smollm2-135m"]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["effect", "--model", "smollm2-135m", "--dictionary", str(dictionary), "--concept", "up",
                 "--strength", "6", "--prompt", "The robot arm moves the block"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert "up" in rows[0].split()[-2].lower()  # the steered column's top token is from the 'up' family


def test_errors_are_reported_not_raised(capsys):
    assert main(["validate", "--dictionary", str(OPENVLA), "--num-layers", "30", "--intermediate-size", "1536"]) == 1
    assert "outside the model" in capsys.readouterr().err
    assert main(["validate", "--dictionary", str(OPENVLA), "--num-layers", "32", "--intermediate-size", "11008"]) == 0
    assert main(["project", "--model", "/no/such/model", "--out", "/tmp/x"]) == 1
    assert "not found" in capsys.readouterr().err


def test_convert_reference_to_native(tmp_path):
    target = tmp_path / "native.yaml"
    assert main(["convert", "--dictionary", str(OPENVLA), "--to", "native", "--intermediate-size", "11008",
                 "--out", str(target)]) == 0
    data = yaml.safe_load(target.read_text())
    assert data["format"] == "vla-steer/v1" and 21 in data["concepts"]["up_10"]["neurons"]


def test_act_prints_unsteered_and_steered_chunks(capsys):
    dictionary = Path(__file__).resolve().parents[1] / "config" / "demo_vla_dictionary.yaml"
    assert main(["act", "--instruction", "move left", "--dictionary", str(dictionary), "--concept", "up",
                 "--strength", "2"]) == 0
    out = capsys.readouterr().out
    assert "ee_delta_7d" in out and "unsteered" in out and "steered (up at 2.0, clamp)" in out
    assert main(["act", "--instruction", "x", "--dictionary", str(dictionary), "--concept", "nope"]) == 1
    assert "unknown concept 'nope'" in capsys.readouterr().err
