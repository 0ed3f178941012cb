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

from elip_jax.convert import (convert_checkpoint, export_checkpoint, load_pretrained,  # noqa: E402
                              params_from_checkpoint, save_pretrained)
from elip_jax.models.config import CLIPConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from convert_support import assert_trees_equal, random_params  # noqa: E402
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
    else:  # open_clip builds the model from the exported open_clip_config.json alone, then loads the weights
        exported = export_checkpoint(tmp / "elip", "open_clip", tmp / "open_clip-export")
        reloaded = open_clip.create_model(f"local-dir:{exported}").eval()
        assert isinstance(reloaded.transformer.resblocks[0].mlp.gelu, type(case["model"].transformer.resblocks[0].mlp.gelu))
    original, loaded = case["model"].state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys()
    for key in original:
        assert torch.equal(original[key], loaded[key]), key
    again, config, _ = params_from_checkpoint(exported)  # no --model: the exported folder states everything
    assert config == case["jax_model"].config
    assert_trees_equal(jax.tree.map(np.asarray, case["variables"]["params"]), again)


# GELU, heads that break OpenAI's width // 64 rule in both towers, and a SigLIP-style logit_bias: everything
# an open_clip folder must state for open_clip and elip_jax to build the same model from it.
UNUSUAL = CLIPConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=128, vision_layers=2, vision_heads=4,
                     text_width=128, text_layers=2, text_heads=8, context_length=16, vocab_size=500,
                     activation="gelu", init_logit_bias=-5.0)


def test_open_clip_folder_builds_the_same_model_in_open_clip_and_back(tmp_path):
    """--to open_clip writes open_clip_config.json beside the weights: open_clip builds the model from it
    (heads, GELU, logit_bias) and computes elip_jax's features, and reading the folder back needs no flags.
    It used to write the weights alone, which read back as 2-head QuickGELU."""
    params = random_params(UNUSUAL, seed=4)
    params["logit_bias"] = np.float32(-5.0)
    save_pretrained(tmp_path / "elip", params, UNUSUAL)
    exported = export_checkpoint(tmp_path / "elip", "open_clip", tmp_path / "open_clip")
    assert sorted(p.name for p in exported.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]

    reference = open_clip.create_model(f"local-dir:{exported}").eval()  # loads the weights, strict
    assert reference.visual.transformer.resblocks[0].attn.num_heads == 4
    assert reference.transformer.resblocks[0].attn.num_heads == 8
    assert isinstance(reference.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert float(reference.logit_bias.detach()) == -5.0
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    tokens = rng.integers(1, 499, (3, 16)).astype(np.int32)
    tokens[:, 9] = 499  # the end-of-text token: the highest id, where both pool (argmax)
    with torch.no_grad():
        ref_image = reference.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True).numpy()
        ref_text = reference.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
    model, variables = load_pretrained(tmp_path / "elip")
    image, text, _ = model.apply(variables, images, tokens)
    np.testing.assert_allclose(np.asarray(image), ref_image, atol=EMBED_TOL)
    np.testing.assert_allclose(np.asarray(text), ref_text, atol=EMBED_TOL)

    again, config, provenance = params_from_checkpoint(exported)
    assert config == UNUSUAL
    assert provenance["inferred_from"] == {field: "open_clip_config.json"
                                           for field in ("activation", "vision_heads", "text_heads")}
    assert_trees_equal(params, again)
