"""Converted weights compute what the reference PyTorch libraries compute, and the round trip is exact.

Real references, random weights (nothing is downloaded): Hugging Face `transformers.CLIPModel` and
`open_clip`, covering ViT-B/32 and ViT-B/16, QuickGELU and GELU, each library with both activations:

    transformers  ViT-B/32 QuickGELU    ViT-B/16 GELU
    open_clip     ViT-B/32 QuickGELU    ViT-B/16 GELU

Every torch parameter is perturbed with noise first (open_clip's init leaves LayerNorms at identity and
biases at zero), so a mapping mistake in any tensor shows up. Inputs are real photographs from
`skimage.data`, resized and centre-cropped to 224 and CLIP-normalised, and real captions through the real
BPE (`open_clip.tokenize`). fp32 throughout, default JAX matmul precision (full fp32 on CPU).
"""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")
from PIL import Image  # noqa: E402

import jax  # noqa: E402
import safetensors.torch  # noqa: E402

from elip_jax.convert import convert_checkpoint, export_checkpoint, load_pretrained, params_from_checkpoint  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from convert_support import assert_trees_equal  # noqa: E402
from torch_stubs import install_torchvision_stub  # noqa: E402

install_torchvision_stub()
open_clip = pytest.importorskip("open_clip")

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
CAPTIONS = ["an astronaut in a white space suit with a flag", "a ginger cat looking at the camera",
            "a red cup of coffee on a saucer", "a rocket on the launch pad before lift-off"]
EMBED_TOL, LOGIT_TOL = 1e-5, 1e-3

# (library, reference model, elip_jax name used to confirm the architecture)
CASES = [("hf", ("ViT-B-32", "quick_gelu"), "ViT-B-32"),
         ("hf", ("ViT-B-16", "gelu"), "ViT-B-16-gelu"),
         ("open_clip", "ViT-B-32-quickgelu", "ViT-B-32-quickgelu"),
         ("open_clip", "ViT-B-16", "ViT-B-16-gelu")]
MEASURED = {}  # case id -> max abs differences, printed at the end of the module (pytest -s)


def clip_preprocess(image: np.ndarray, size: int = 224) -> np.ndarray:
    """Shorter side to `size` (bicubic), centre crop, [0, 1], CLIP mean/std: [size, size, 3] float32."""
    image = Image.fromarray(image).convert("RGB")
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    array = np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255.0
    return (array - MEAN) / STD


@pytest.fixture(scope="module")
def images():
    return np.stack([clip_preprocess(getattr(skimage_data, name)()) for name in PHOTOS])


@pytest.fixture(scope="module")
def tokens():
    return open_clip.tokenize(CAPTIONS).numpy()


def perturb_(module: torch.nn.Module, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))


def hf_model(arch: str, activation: str):
    patch = int(arch[-2:])
    common = {"hidden_act": activation}
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, vocab_size=49408, **common),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=patch, **common),
        projection_dim=512)
    return transformers.CLIPModel(config).eval()


def torch_features(library, model, images, tokens):
    """(normalised image features, normalised text features, logits per image) from the reference."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(tokens).long()
    with torch.no_grad():
        if library == "hf":
            out = model(input_ids=ids, pixel_values=pixels)
            return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(ids, normalize=True)
        return image.numpy(), text.numpy(), (model.logit_scale.exp() * image @ text.T).numpy()


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[2]}")
def case(request, tmp_path_factory):
    """Builds the reference once per case, saves it the way that library does, converts it."""
    library, reference, name = request.param
    tmp = tmp_path_factory.mktemp(f"{library}-{name}")
    if library == "hf":
        model = hf_model(*reference)
        perturb_(model, seed=len(MEASURED))
        source = tmp / "hf-folder"
        model.save_pretrained(source)  # config.json + model.safetensors
    else:
        model = open_clip.create_model(reference).eval()
        perturb_(model, seed=len(MEASURED))
        source = tmp / "open_clip.pt"  # a torch.save pickle: read with torch.load(weights_only=True)
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, source)
    convert_checkpoint(source, tmp / "elip", model=name)
    jax_model, variables = load_pretrained(tmp / "elip")
    yield {"library": library, "model": model, "name": name, "tmp": tmp, "id": f"{library}-{name}",
           "jax_model": jax_model, "variables": variables}


def test_features_match_the_reference(case, images, tokens):
    image, text, scale = jax.jit(case["jax_model"].apply)(case["variables"], images, tokens)
    logits = np.asarray(scale * image @ text.T)
    ref_image, ref_text, ref_logits = torch_features(case["library"], case["model"], images, tokens)
    diffs = {"image": float(np.abs(np.asarray(image) - ref_image).max()),
             "text": float(np.abs(np.asarray(text) - ref_text).max()),
             "logits": float(np.abs(logits - ref_logits).max())}
    MEASURED[case["id"]] = diffs
    print(f"\n{case['id']}: max abs diff {diffs}")
    assert diffs["image"] <= EMBED_TOL and diffs["text"] <= EMBED_TOL and diffs["logits"] <= LOGIT_TOL, diffs
    # the features are not degenerate: different photos and captions give different embeddings
    assert np.abs(ref_image[0] - ref_image[1]).max() > 1e-2 and np.abs(ref_text[0] - ref_text[1]).max() > 1e-2


def test_round_trip_through_pytorch_is_exact(case):
    """elip_jax -> the library's own loader -> elip_jax gives bitwise the same parameters, and the
    exported tensors are bitwise the reference's."""
    library, tmp = case["library"], case["tmp"]
    if library == "hf":
        exported = export_checkpoint(tmp / "elip", "hf", tmp / "hf-export")
        reloaded = transformers.CLIPModel.from_pretrained(exported).eval()
    else:
        exported = export_checkpoint(tmp / "elip", "open_clip", tmp / "export.safetensors")
        reloaded = open_clip.create_model(_open_clip_name(case["name"])).eval()
        reloaded.load_state_dict(safetensors.torch.load_file(exported), strict=True)
    original, loaded = case["model"].state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys()
    for key in original:
        assert torch.equal(original[key], loaded[key]), key
    again, _, _ = params_from_checkpoint(exported, model=case["name"])
    assert_trees_equal(jax.tree.map(np.asarray, case["variables"]["params"]), again)


def _open_clip_name(elip_name: str) -> str:
    return {"ViT-B-16-gelu": "ViT-B-16", "ViT-B-32-gelu": "ViT-B-32"}.get(elip_name, elip_name)
