"""`random` as an inference baseline: at evaluation each image keeps the patches its own key draws, a key made of
the seed and the image's index in the split, so the subset depends on nothing else (batch size, position in the
batch, device count)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elip_jax
from elip_jax.evaluate import cli, data_mesh, with_reduction
from elip_jax.evaluate.results import describe_reduction
from elip_jax.evaluate.retrieval import image_embeddings
from elip_jax.evaluate.sharding import batch_sharding
from elip_jax.reduction import evaluation_methods, get_method, inference_methods
from elip_jax.reduction.methods import example_keys

IMAGE_SIZE = 32  # tiny: 4 blocks, 16 patches of 8x8 at 32 px
LAYER, KEEP = 3, 8  # keep 8 of 16 patches before block 3
NUM_IMAGES = 7


def random_model(keep_ratio=KEEP / 16, layer=LAYER):
    return elip_jax.create_model("tiny", image_size=IMAGE_SIZE, reduction={
        "method": "random", "begin_layers": (layer,), "keep_ratios": (keep_ratio,)})


@pytest.fixture(scope="module")
def tiny():
    model = random_model()
    images = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
    variables = model.init(jax.random.PRNGKey(0), images, jnp.ones((1, 77), jnp.int32))
    pixels = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return model, variables, pixels


def batches_of(images, batch_size, mesh):
    """The eval iterator's layout in a shuffled order: each row carries its example index; the last batch is
    padded (index -1, mask False)."""
    order = np.random.default_rng(batch_size).permutation(len(images))
    padded = -(-len(order) // batch_size) * batch_size
    index = np.concatenate([order, -np.ones(padded - len(order), np.int64)]).astype(np.int32)
    sharding = batch_sharding(mesh)
    return [{"images": jax.device_put(images[np.maximum(index[s:s + batch_size], 0)], sharding),
             "index": jax.device_put(index[s:s + batch_size], sharding),
             "mask": jax.device_put(index[s:s + batch_size] >= 0, sharding)} for s in range(0, padded, batch_size)]


def drawn_subsets(seed, count, num_patches=16, keep=KEEP):
    """The definition, written out: example i ranks its patches by uniform(fold_in(PRNGKey(seed), i)), keeps the
    top `keep` (ties to the lower index), in their original order."""
    subsets = []
    for i in range(count):
        scores = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(seed), i), (num_patches,)))
        subsets.append(np.sort(np.argsort(-scores, kind="stable")[:keep]))
    return np.stack(subsets)


def features_with_kept_patches(module, images, kept, layer):
    """CLIP.apply method, the reference: the unpruned tower, keeping only the patches `kept` [B, K] from block
    `layer` on (CLS kept), L2-normalised features."""
    from elip_jax.data import normalize_images
    visual = module.visual
    x = visual.embed(normalize_images(images))
    for block in visual.blocks[:layer]:
        x = block(x)
    x = jnp.concatenate([x[:, :1], jnp.take_along_axis(x[:, 1:], kept[..., None], axis=1)], axis=1)
    for block in visual.blocks[layer:]:
        x = block(x)
    features = visual.ln_post(x[:, 0]).astype(jnp.float32) @ visual.proj
    return features / jnp.linalg.norm(features, axis=-1, keepdims=True)


def reference(tiny, seed):
    model, variables, pixels = tiny
    unpruned = with_reduction(model, "none")
    return np.asarray(unpruned.apply(variables, jnp.asarray(pixels), jnp.asarray(drawn_subsets(seed, len(pixels))),
                                     LAYER, method=features_with_kept_patches))


def evaluated(tiny, seed, batch_size, devices=1, model=None):
    base, variables, pixels = tiny
    mesh = data_mesh(jax.devices()[:devices])
    indices, features, _ = image_embeddings(model or base, variables, batches_of(pixels, batch_size, mesh), mesh,
                                            seed=seed)
    np.testing.assert_array_equal(indices, np.arange(len(pixels)))
    return features


def test_each_image_keeps_the_patches_its_own_key_draws_whatever_the_batch_and_devices(tiny):
    expected = reference(tiny, seed=0)
    for batch_size, devices in ((2, 1), (3, 1), (8, 8)):  # 3: not a multiple of anything else here
        np.testing.assert_allclose(evaluated(tiny, 0, batch_size, devices), expected, atol=2e-5,
                                   err_msg=f"batch {batch_size} on {devices} device(s)")


def test_another_seed_draws_other_subsets(tiny):
    assert (drawn_subsets(0, NUM_IMAGES) != drawn_subsets(1, NUM_IMAGES)).any(axis=1).all()
    got = evaluated(tiny, 1, 3)
    np.testing.assert_allclose(got, reference(tiny, seed=1), atol=2e-5)
    assert np.abs(got - reference(tiny, seed=0)).max(axis=1).min() > 1e-3  # every image changed


def test_keep_ratio_one_is_the_unpruned_model(tiny):
    model, variables, _ = tiny
    everything = evaluated(tiny, 0, 3, model=random_model(keep_ratio=1.0))
    np.testing.assert_array_equal(everything, evaluated(tiny, 0, 3, model=with_reduction(model, "none")))
    assert not describe_reduction(random_model(keep_ratio=1.0).reduction, seed=0)["prunes_at_eval"]


def test_the_method_says_what_evaluation_passes():
    random, elip = get_method("random"), get_method("elip")
    assert random.evaluation_needs_keys and random.prunes_at_evaluation and "random" in evaluation_methods()
    assert "random" not in inference_methods()  # the image alone is not enough: it needs its key
    assert not elip.evaluation_needs_keys and not elip.prunes_at_evaluation
    described = describe_reduction(random_model().reduction, seed=5)
    assert described["prunes_at_eval"] and described["seed"] == 5
    assert described["tokens_per_block"] == [17, 17, 17, 9]


def test_a_batch_of_keys_must_have_one_key_per_image(tiny):
    model, variables, pixels = tiny
    with pytest.raises(ValueError, match="one key per image"):
        model.apply(variables, jnp.asarray(pixels[:3], jnp.float32), rng=example_keys(0, jnp.arange(2)),
                    method=model.encode_image)


SMALL_BUILTIN = "elip_shapes/small"  # 128 test images


def run_cli(tmp_path, data_dir, name, *flags):
    out = tmp_path / f"{name}.json"
    payload = cli.main(["--model", "tiny", "--image-size", str(IMAGE_SIZE), "--dataset", SMALL_BUILTIN,
                        "--data-dir", data_dir, "--split", "test", "--task", "zeroshot_classification",
                        "--output", str(out), *flags])
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    return payload


def test_the_command_line_prunes_with_the_seed_and_says_so(tmp_path, builtin_data_dir):
    random = ["--reduction", "random", "--begin-layers", "3", "--keep-ratios", "0.5"]
    # --seed also initialises a --model: the same seed everywhere, the same weights
    none = run_cli(tmp_path, builtin_data_dir, "none", "--seed", "1", "--batch-size", "64")
    first = run_cli(tmp_path, builtin_data_dir, "s1", *random, "--seed", "1", "--batch-size", "64")
    again = run_cli(tmp_path, builtin_data_dir, "s1b24", *random, "--seed", "1", "--batch-size", "24")
    reduction = first["reduction"]
    assert reduction["prunes_at_eval"] and reduction["seed"] == 1 and reduction["keep"] == [8]
    assert reduction["tokens_per_block"] == [17, 17, 17, 9]
    assert first["metrics"] == again["metrics"]  # 24 does not divide 128: a padded last batch, other positions
    assert first["flops_per_image"] < none["flops_per_image"]  # the pruned program was counted

    sweep = run_cli(tmp_path, builtin_data_dir, "sweep", "--reduction", "random", "--begin-layers", "3",
                    "--reduction-sweep", "1.0;0.5", "--seed", "1", "--batch-size", "64")["sweep"]
    assert [row["reduction"]["prunes_at_eval"] for row in sweep] == [False, True]
    assert sweep[0]["metrics"] == none["metrics"] and sweep[1]["metrics"] == first["metrics"]
    assert sweep[1]["flops_per_image"] == first["flops_per_image"]
    assert "seed `1`" in (tmp_path / "sweep.md").read_text().splitlines()[0]


@pytest.mark.parametrize("seed,match", [("-1", "--seed must be an int in [0, 4294967295]"),
                                        (str(2 ** 32), "--seed must be an int in [0, 4294967295]"),
                                        ("x", "invalid int value")])
def test_a_bad_seed_is_one_line(tmp_path, capsys, monkeypatch, seed, match):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")
    monkeypatch.setattr(cli, "load_model", no_model)
    code = cli.run(["--model", "tiny", "--dataset", "builtin", "--task", "zeroshot_classification", "--reduction",
                    "random", "--seed", seed, "--output", str(tmp_path / "r.json")])
    lines = capsys.readouterr().err.strip("\n").splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], lines
