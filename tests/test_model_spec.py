"""Parsing --model strings (no torch needed) and the errors for unusable models."""

import subprocess
import sys

import pytest

from clipsearch.encoder import ModelSpec
from clipsearch.errors import ModelNotFoundError
from clipsearch.results import ModelIdentity


@pytest.mark.parametrize("text, name, pretrained", [
    ("ViT-B-32/laion2b_s34b_b79k", "ViT-B-32", "laion2b_s34b_b79k"),
    ("ViT-L-14/openai", "ViT-L-14", "openai"),
    ("ViT-B-32/random", "ViT-B-32", "random"),
    ("hf-hub:timm/ViT-B-16-SigLIP", "hf-hub:timm/ViT-B-16-SigLIP", None),
    ("demo", "demo", None),
])
def test_parse_names(text, name, pretrained):
    spec = ModelSpec.parse(text)
    assert (spec.name, spec.pretrained) == (name, pretrained)
    assert str(spec) == text
    assert spec.matches(ModelIdentity(name, pretrained, 512))


def test_local_checkpoints(tmp_path):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"0")
    assert ModelSpec.parse(f"ViT-B-32/{ckpt}") == ModelSpec("ViT-B-32", str(ckpt))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").write_bytes(b"0")
    assert ModelSpec.parse(str(folder)) == ModelSpec(f"local-dir:{folder}")
    assert ModelSpec.parse(str(folder / "open_clip_model.safetensors")) == ModelSpec(f"local-dir:{folder}")
    with pytest.raises(ModelNotFoundError, match="without an open_clip_config.json"):
        ModelSpec.parse(str(ckpt))
    with pytest.raises(ModelNotFoundError, match="checkpoint file not found"):
        ModelSpec.parse("ViT-B-32/missing.safetensors")


@pytest.mark.parametrize("text, message", [("", "empty"), ("ViT-B-32", "names no pretrained weights"),
                                           ("hf-hub:", "needs a repository")])
def test_bad_names(text, message):
    with pytest.raises(ModelNotFoundError, match=message):
        ModelSpec.parse(text)


def test_parsing_does_not_import_torch():
    code = "import sys; from clipsearch.encoder import ModelSpec; ModelSpec.parse('demo'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
