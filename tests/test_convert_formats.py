"""Every supported container and layout converts to the same elip_jax parameters, bitwise.

Uses a small architecture (tests/convert_support.py) so each format is cheap; the agreement of the
converted model with the reference libraries is proven on ViT-B in test_convert_reference.py.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

import elip_jax
from elip_jax.convert import ConversionError, load_params, params_from_checkpoint, read_config
from elip_jax.convert import hf_layout, openai_layout
from elip_jax.convert.cli import main

sys.path.insert(0, os.path.dirname(__file__))
from convert_support import SMALL, assert_trees_equal, random_params  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def params():
    return random_params(SMALL, seed=1)


@pytest.fixture(scope="module")
def state_dict(params):
    """The OpenAI / open_clip state dict of `params`, as numpy."""
    return openai_layout.from_params(params, SMALL)


def torch_state_dict(state_dict, dtype=None):
    out = {k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}
    return {k: v.to(dtype) for k, v in out.items()} if dtype else out


class _Node(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class QuickGELU(torch.nn.Module):  # OpenAI's releases hold objects of a class of this name in every MLP
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATION_MODULES = {"quick_gelu": QuickGELU, "gelu": torch.nn.GELU,
                      "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh")}


def torchscript_archive(state_dict, path, activation=None):
    """A TorchScript archive holding the tensors under their state-dict names, as OpenAI's releases do
    (modules nested by the dotted names, fp16 weights, the int buffers OpenAI adds, and with `activation`
    an activation module `mlp.gelu` in every block, as in OpenAI's and open_clip's models)."""
    root = _Node()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Node())
            module = getattr(module, name)
        if value.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(leaf, value)
        if activation and key.endswith(".mlp.c_fc.weight"):
            root.get_submodule(".".join(parents[:-1])).add_module("gelu", ACTIVATION_MODULES[activation]())
    torch.jit.save(torch.jit.script(root), str(path))


OPENAI_BUFFERS = dict(input_resolution=torch.tensor(SMALL.image_size), context_length=torch.tensor(16),
                      vocab_size=torch.tensor(SMALL.vocab_size))


def test_plain_state_dict_that_states_no_activation_is_refused(tmp_path, params, state_dict):
    """An open_clip state dict without a config says nothing about its activation: it used to become
    QuickGELU silently (features off by ~2e-3 on random weights if it was GELU)."""
    safetensors.numpy.save_file(state_dict, tmp_path / "w.safetensors")
    with pytest.raises(ConversionError, match=r"does not state its activation(.|\n)*--activation(.|\n)*--model"):
        params_from_checkpoint(tmp_path / "w.safetensors")
    for activation in ("quick_gelu", "gelu"):
        converted, config, provenance = params_from_checkpoint(tmp_path / "w.safetensors", activation=activation)
        assert config == SMALL.replace(activation=activation)
        assert provenance["inferred_from"]["activation"] == "--activation"
        assert provenance["inferred_from"]["vision_heads"] == "default (width // 64)"
        assert_trees_equal(converted, params)


def test_safetensors_openai_layout(tmp_path, params, state_dict):
    safetensors.numpy.save_file(state_dict, tmp_path / "w.safetensors")
    converted, config, provenance = params_from_checkpoint(tmp_path / "w.safetensors", activation="quick_gelu")
    assert config == SMALL
    assert_trees_equal(converted, params)
    assert provenance["layout"] == "openai" and provenance["container"] == "safetensors"


def test_torch_save_zip_legacy_and_open_clip_training_checkpoint(tmp_path, params, state_dict):
    tensors = torch_state_dict(state_dict)
    torch.save(tensors, tmp_path / "plain.pth")
    torch.save(tensors, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"epoch": 7, "name": "run", "state_dict": {f"module.{k}": v for k, v in tensors.items()}},
               tmp_path / "epoch_7.pt")
    for name in ("plain.pth", "legacy.pt", "epoch_7.pt"):
        converted, config, provenance = params_from_checkpoint(tmp_path / name, activation="quick_gelu")
        assert config == SMALL and provenance["container"] == "torch", name
        assert_trees_equal(converted, params)


def test_openai_release_state_dict_states_quick_gelu(tmp_path, params, state_dict):
    """`torch.jit.load(OpenAI's .pt).state_dict()` keeps the buffers only OpenAI's archives have: that, not a
    default, is what makes it QuickGELU."""
    tensors = {**torch_state_dict(state_dict), **OPENAI_BUFFERS}
    torch.save(tensors, tmp_path / "openai-state-dict.pt")
    converted, config, provenance = params_from_checkpoint(tmp_path / "openai-state-dict.pt")
    assert config == SMALL and provenance["inferred_from"]["activation"].startswith("OpenAI release")
    assert_trees_equal(converted, params)
    with pytest.raises(ConversionError, match="--activation gelu contradicts the checkpoint: OpenAI release"):
        params_from_checkpoint(tmp_path / "openai-state-dict.pt", activation="gelu")


def test_torchscript_archive_states_its_activation_by_its_modules(tmp_path, state_dict):
    """A TorchScript archive's activation is the class of its activation modules; it used to be assumed
    QuickGELU for every archive, so a scripted GELU model converted wrong."""
    tensors = torch_state_dict(state_dict)
    for activation in ("quick_gelu", "gelu"):
        torchscript_archive(tensors, tmp_path / f"{activation}.pt", activation=activation)
        _, config, provenance = params_from_checkpoint(tmp_path / f"{activation}.pt")
        assert config == SMALL.replace(activation=activation)
        kind = {"quick_gelu": "QuickGELU", "gelu": "GELU"}[activation]
        assert provenance["inferred_from"]["activation"].startswith("TorchScript archive")
        assert provenance["inferred_from"]["activation"].endswith(f"are {kind})")
    with pytest.raises(ConversionError, match="contradicts the checkpoint: TorchScript archive"):
        params_from_checkpoint(tmp_path / "gelu.pt", activation="quick_gelu")
    torchscript_archive(tensors, tmp_path / "tanh.pt", activation="gelu_tanh")  # a constant in the archive's code
    with pytest.raises(ConversionError, match="GELU\\(approximate='tanh'\\); elip_jax implements exact GELU"):
        params_from_checkpoint(tmp_path / "tanh.pt")
    torchscript_archive(tensors, tmp_path / "silent.pt")  # no activation modules, no OpenAI buffers
    with pytest.raises(ConversionError, match="does not state its activation"):
        params_from_checkpoint(tmp_path / "silent.pt")


def test_torchscript_archive_is_read_without_running_it(tmp_path, params, state_dict):
    tensors = torch_state_dict(state_dict, torch.float16)
    tensors.update(OPENAI_BUFFERS)
    torchscript_archive(tensors, tmp_path / "ViT-tiny.pt", activation="quick_gelu")
    converted, config, provenance = params_from_checkpoint(tmp_path / "ViT-tiny.pt")
    assert provenance["container"] == "torchscript"
    assert config.activation == "quick_gelu" and "TorchScript" in provenance["inferred_from"]["activation"]
    # the reference: torch.jit.load (which does run the archive; fine for a file this test made)
    reference = torch.jit.load(str(tmp_path / "ViT-tiny.pt")).state_dict()
    expected = openai_layout.to_params({k: v.float().numpy() for k, v in reference.items()}, SMALL)
    assert_trees_equal(converted, expected)
    fp16 = jax_tree_astype(params, np.float16)
    assert_trees_equal(converted, jax_tree_astype(fp16, np.float32))


def jax_tree_astype(tree, dtype):
    import jax
    return jax.tree.map(lambda x: np.asarray(x).astype(dtype), tree)


def test_hf_folder_sharded_safetensors_and_bin(tmp_path, params, state_dict):
    hf = hf_layout.openai_to_hf(state_dict, SMALL)
    hf_config = hf_layout.hf_config_for(SMALL.replace(activation="gelu"), 2.0)
    # sharded safetensors folder
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(hf)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, shard_keys in halves.items():
        safetensors.numpy.save_file({k: hf[k] for k in shard_keys}, sharded / shard)
    weight_map = {k: shard for shard, shard_keys in halves.items() for k in shard_keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (sharded / "config.json").write_text(json.dumps(hf_config))
    # pytorch_model.bin folder
    binary = tmp_path / "bin"
    binary.mkdir()
    torch.save(torch_state_dict(hf), binary / "pytorch_model.bin")
    (binary / "config.json").write_text(json.dumps(hf_config))
    for folder in (sharded, binary):
        converted, config, provenance = params_from_checkpoint(folder)
        assert config == SMALL.replace(activation="gelu"), folder
        assert provenance["layout"] == "hf" and provenance["inferred_from"]["activation"] == "HF config.json"
        assert_trees_equal(converted, params)


def test_open_clip_folder_states_activation_and_heads(tmp_path, params, state_dict):
    safetensors.numpy.save_file(state_dict, tmp_path / "open_clip_model.safetensors")
    model_cfg = {"embed_dim": 32, "vision_cfg": {"width": 128, "layers": 2, "head_width": 32},
                 "text_cfg": {"width": 128, "heads": 4, "layers": 2}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    _, config, _ = params_from_checkpoint(tmp_path)
    assert (config.activation, config.vision_heads, config.text_heads) == ("gelu", 4, 4)
    model_cfg["quick_gelu"] = True
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    assert params_from_checkpoint(tmp_path)[1].activation == "quick_gelu"


@pytest.mark.parametrize("change,match", [
    ({"vision_cfg": {"width": 128, "layers": 12}}, "open_clip_config.json says vision_layers 12, the tensors have 2"),
    ({"embed_dim": 64}, "says embed_dim 64, the tensors have 32"),
    ({"text_cfg": {"pool_type": "last"}}, r"sets text_cfg.pool_type = 'last'; elip_jax's CLIP implements only"),
    ({"vision_cfg": {"pos_embed_type": "sin_cos_2d"}}, "sets vision_cfg.pos_embed_type"),
    ({"vision_cfg": {"layers": [3, 4, 6, 3]}}, "ResNet image tower"),
])
def test_open_clip_config_that_does_not_describe_the_tensors_is_refused(tmp_path, state_dict, change, match):
    """What open_clip_config.json says is checked against the tensors, and options elip_jax does not
    implement (which may leave the keys unchanged, so the weights alone would load) are refused."""
    safetensors.numpy.save_file(state_dict, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": change}))
    with pytest.raises(ConversionError, match=match):
        params_from_checkpoint(tmp_path)


def test_model_name_confirms_and_supplies_guessed_fields(tmp_path):
    b32 = random_params(elip_jax.get_config("ViT-B-32").replace(vocab_size=49408), seed=2)
    path = tmp_path / "b32.safetensors"
    safetensors.numpy.save_file(openai_layout.from_params(b32, elip_jax.get_config("ViT-B-32")), path)
    _, config, provenance = params_from_checkpoint(path, model="ViT-B-32-gelu")  # activation from the name
    assert config == elip_jax.get_config("ViT-B-32-gelu")
    assert provenance["inferred_from"]["activation"] == "--model ViT-B-32-gelu"
    with pytest.raises(ConversionError, match=r"not a ViT-B-16(.|\n)*patch_size: checkpoint 32"):
        params_from_checkpoint(path, model="ViT-B-16")
    with pytest.raises(ConversionError, match=r"activation: checkpoint 'gelu' \(--activation\), ViT-B-32 'quick"):
        params_from_checkpoint(path, model="ViT-B-32", activation="gelu")
    with pytest.raises(ConversionError, match="unknown model name"):
        params_from_checkpoint(path, model="ViT-Q-99")


def test_activation_flag_and_conflict_with_source(tmp_path, state_dict):
    safetensors.numpy.save_file(state_dict, tmp_path / "w.safetensors")
    assert params_from_checkpoint(tmp_path / "w.safetensors", activation="gelu")[1].activation == "gelu"
    (tmp_path / "config.json").write_text(json.dumps(hf_layout.hf_config_for(SMALL, 2.0)))  # says quick_gelu
    with pytest.raises(ConversionError, match="contradicts the checkpoint: HF config.json says quick_gelu"):
        params_from_checkpoint(tmp_path / "w.safetensors", activation="gelu")


def test_image_size_resamples_positional_embedding(tmp_path, params, state_dict):
    safetensors.numpy.save_file(state_dict, tmp_path / "w.safetensors")
    converted, config, provenance = params_from_checkpoint(tmp_path / "w.safetensors", image_size=48,
                                                           activation="quick_gelu")
    assert config == SMALL.replace(image_size=48)
    pos = converted["visual"]["positional_embedding"]
    assert pos.shape == (1 + 36, SMALL.vision_width)
    np.testing.assert_array_equal(pos[0], params["visual"]["positional_embedding"][0])  # CLS kept
    assert provenance["positional_embedding_resized"]["from_image_size"] == 32
    with pytest.raises(ConversionError, match="multiple of the patch size 8"):
        params_from_checkpoint(tmp_path / "w.safetensors", image_size=50, activation="quick_gelu")


def test_cli_round_trip_and_load_pretrained(tmp_path, params, state_dict):
    safetensors.numpy.save_file(state_dict, tmp_path / "w.safetensors")
    assert main(["--input", str(tmp_path / "w.safetensors"), "--output", str(tmp_path / "elip"),
                 "--activation", "quick_gelu"]) == 0
    config, provenance = read_config(tmp_path / "elip")
    assert config == SMALL and provenance["files_sha256"]
    model, variables = elip_jax.load_pretrained(
        tmp_path / "elip", reduction={"method": "evit", "begin_layers": (1,), "keep_ratios": (0.5,)},
        dtype="bfloat16")
    assert model.config == SMALL.replace(dtype="bfloat16") and model.reduction.method == "evit"
    assert_trees_equal(jax_tree_astype(variables["params"], np.float32), params)
    images = np.zeros((1, 32, 32, 3), np.float32)
    assert model.apply(variables, images, method=model.encode_image).shape == (1, 32)
    for target, name in (("hf", "hf"), ("open_clip", "oc")):
        assert main(["--input", str(tmp_path / "elip"), "--to", target, "--output", str(tmp_path / name)]) == 0
        assert main(["--input", str(tmp_path / name), "--output", str(tmp_path / f"back-{target}")]) == 0
        assert_trees_equal(load_params(tmp_path / f"back-{target}"), params)
    with pytest.raises(ConversionError, match="already an elip_jax checkpoint"):
        params_from_checkpoint(tmp_path / "elip")
    with pytest.raises(ValueError, match="only .*dtype"):
        elip_jax.load_pretrained(tmp_path / "elip", image_size=64)


def test_open_clip_logit_bias_is_kept(tmp_path, params, state_dict):
    biased = {**state_dict, "logit_bias": np.array([-10.0], np.float32)}
    safetensors.numpy.save_file(biased, tmp_path / "siglip-loss.safetensors")
    converted, config, _ = params_from_checkpoint(tmp_path / "siglip-loss.safetensors", activation="quick_gelu")
    assert config.init_logit_bias == -10.0 and converted["logit_bias"] == np.float32(-10.0)
    assert_trees_equal({k: v for k, v in converted.items() if k != "logit_bias"}, params)


def test_python_dash_m_entry_point(tmp_path, state_dict):
    safetensors.numpy.save_file(state_dict, tmp_path / "w.safetensors")
    run = subprocess.run([sys.executable, "-m", "elip_jax.convert", "--input", str(tmp_path / "w.safetensors"),
                          "--output", str(tmp_path / "out"), "--model", "ViT-B-32"],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 2 and "not a ViT-B-32" in run.stderr and "nothing was written" in run.stderr
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("error: "), run.stderr
    assert not (tmp_path / "out").exists()
