"""Zero-shot evaluation: closed-form metrics from a fake model, sharding invariance, NumPy cross-checks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elip_jax
from elip_jax.data.normalize import CLIP_MEAN, CLIP_STD
from elip_jax.evaluate import (class_embeddings_from_prompts, classification_metrics, data_mesh,
                               evaluate_classification, evaluate_retrieval, image_flops_per_image,
                               mean_per_class_recall, parse_keep_schedules, retrieval_metrics, with_reduction,
                               zeroshot_classifier, zeroshot_prompts)
from elip_jax.evaluate.extract import run_image_program
from elip_jax.evaluate.results import describe_reduction, sweep_markdown
from elip_jax.evaluate.sharding import batch_sharding

IMAGE_SIZE = 8
NUM_CLASSES = 6


class PixelCodeCLIP(nn.Module):
    """Image features known in closed form: pixel (0, 0) holds class ids (p0, p1, neg) in its channels and
    the feature is one_hot(p0) + 0.5 one_hot(p1) - one_hot(neg), so the class ranking is p0 > p1 > rest > neg."""

    num_classes: int = NUM_CLASSES

    def encode_image(self, images, guide=None, rng=None, normalize=False):
        pixel = images[:, 0, 0, :] * (jnp.asarray(CLIP_STD) * 255.0) + jnp.asarray(CLIP_MEAN) * 255.0
        codes = jnp.round(pixel).astype(jnp.int32)
        one_hot = lambda c: jax.nn.one_hot(codes[:, c], self.num_classes)  # noqa: E731
        features = one_hot(0) + 0.5 * one_hot(1) - one_hot(2)
        return features / jnp.linalg.norm(features, axis=-1, keepdims=True) if normalize else features


def coded_examples():
    """60 examples: 30 right at top-1, 18 wrong at top-1 but right at top-5, 12 wrong at top-5; classes
    unevenly split between the groups so that mean per-class recall differs from accuracy."""
    labels = np.array([min(i % 8, NUM_CLASSES - 1) for i in range(60)])  # class 5 is the most frequent
    codes, groups = [], []
    for i, y in enumerate(labels):
        group = "top1" if i < 30 else ("top5" if i < 48 else "miss")
        if y == 0 and group != "miss":  # class 0 is always right: uneven per-class recall
            group = "top1"
        groups.append(group)
        a, b = (y + 1) % NUM_CLASSES, (y + 2) % NUM_CLASSES
        codes.append({"top1": (y, a, b), "top5": (a, y, b), "miss": (a, b, y)}[group])
    images = np.zeros((60, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    images[:, 0, 0, :] = np.array(codes, np.uint8)
    return images, labels, np.array(groups)


def eval_batches(images, labels, mesh, batch_size, order_seed=0):
    """What the eval iterator yields: shuffled order, a padded last batch (mask False, index -1)."""
    order = np.random.default_rng(order_seed).permutation(len(images))
    padded = -(-len(order) // batch_size) * batch_size
    index = np.concatenate([order, -np.ones(padded - len(order), np.int64)]).astype(np.int32)
    safe = np.maximum(index, 0)
    sharding = batch_sharding(mesh)
    batches = []
    for s in range(0, padded, batch_size):
        part = slice(s, s + batch_size)
        batches.append({"images": jax.device_put(images[safe[part]], sharding),
                        "labels": jax.device_put(labels[safe[part]].astype(np.int32), sharding),
                        "index": jax.device_put(index[part], sharding),
                        "mask": jax.device_put(index[part] >= 0, sharding)})
    return batches


def expected_classification(labels, groups):
    recalls = [np.mean(groups[labels == c] == "top1") for c in range(NUM_CLASSES)]
    return {"acc1": np.mean(groups == "top1"), "acc5": np.mean(groups != "miss"),
            "mean_per_class_recall": np.mean(recalls)}


@pytest.mark.parametrize("num_devices", [1, 8])
def test_fake_model_gives_closed_form_accuracies_on_any_mesh(num_devices):
    images, labels, groups = coded_examples()
    mesh = data_mesh(jax.devices()[:num_devices])
    out = evaluate_classification(PixelCodeCLIP(), {}, eval_batches(images, labels, mesh, 16), np.eye(NUM_CLASSES),
                                  mesh)
    expected = expected_classification(labels, groups)
    assert out["num_examples"] == 60
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    assert expected["acc1"] != pytest.approx(expected["mean_per_class_recall"])  # the test tells them apart


def test_label_to_class_maps_a_subset_label_space():
    """ImageNet-A style: dataset labels live in a bigger space; the classifier has only the subset."""
    images, labels, groups = coded_examples()
    subset_ids = np.array([3, 10, 11, 20, 42, 99])  # dataset label of classifier row r
    label_to_class = -np.ones(100, np.int32)
    label_to_class[subset_ids] = np.arange(NUM_CLASSES)
    mesh = data_mesh()
    out = evaluate_classification(PixelCodeCLIP(), {}, eval_batches(images, subset_ids[labels], mesh, 16),
                                  np.eye(NUM_CLASSES), mesh, label_to_class=label_to_class)
    assert out["acc1"] == pytest.approx(expected_classification(labels, groups)["acc1"])


def test_every_example_counted_once_and_duplicates_rejected():
    images, labels, _ = coded_examples()
    mesh = data_mesh()
    program = jax.jit(lambda v, x, index: {"first": x[:, 0, 0, 0].astype(jnp.int32)})
    results, _ = run_image_program(program, {}, eval_batches(images, labels, mesh, 24))
    np.testing.assert_array_equal(results["index"], np.arange(60))
    np.testing.assert_array_equal(results["first"], images[:, 0, 0, 0])
    np.testing.assert_array_equal(results["labels"], labels)
    twice = eval_batches(images, labels, mesh, 24)
    with pytest.raises(ValueError, match="more than once"):
        run_image_program(program, {}, twice + twice[:1])


def brute_force_recalls(images, texts, text_to_image, k):
    """Independent reference: sort every score row, as CLIP_benchmark's top-k does."""
    scores = texts @ images.T
    image_hits = [text_to_image[t] in np.argsort(-scores[t], kind="stable")[:k] for t in range(len(texts))]
    text_hits = [np.any(text_to_image[np.argsort(-scores[:, i], kind="stable")[:k]] == i)
                 for i in range(len(images))]
    return float(np.mean(image_hits)), float(np.mean(text_hits))


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_retrieval_metrics_closed_form():
    e = np.eye(4, dtype=np.float32)
    images = e[:3]
    texts = unit([e[0], e[1] + 0.1 * e[0], e[1], e[2] + 0.5 * e[1]])
    owners = np.array([0, 0, 1, 2])
    m = retrieval_metrics(images, texts, owners, ks=(1, 2))
    # per text, rank of its own image: t0 0, t1 1 (image 1 scores higher), t2 0, t3 0 (0.89 on image 2 vs 0.45)
    assert m["image_retrieval_recall@1"] == pytest.approx(3 / 4)
    assert m["image_retrieval_recall@2"] == pytest.approx(1.0)
    # per image, best rank of its captions: image 0 -> t0 first; image 1 -> t2 (1.0) before t1 (0.995);
    # image 2 -> t3 first
    assert m["text_retrieval_recall@1"] == pytest.approx(1.0)
    images_extra = np.concatenate([images, unit([e[3] + e[0]])])  # image 3: no caption -> a miss
    m = retrieval_metrics(images_extra, texts, owners, ks=(1,))
    assert m["text_retrieval_recall@1"] == pytest.approx(3 / 4)


def test_retrieval_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    images = unit(rng.normal(size=(37, 16)))
    owners = np.concatenate([np.arange(37), rng.integers(0, 37, size=60)])
    texts = unit(images[owners] + 0.9 * rng.normal(size=(len(owners), 16)))
    m = retrieval_metrics(images, texts, owners, ks=(1, 5, 10), chunk=7)
    for k in (1, 5, 10):
        image_r, text_r = brute_force_recalls(images, texts, owners, k)
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(image_r)
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(text_r)


def test_classification_metrics_match_numpy_and_balanced_accuracy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 12))
    labels = rng.integers(0, 12, size=200)
    top = np.argsort(-logits, axis=1)[:, :5]
    m = classification_metrics(top, labels, 12)
    assert m["acc1"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert m["acc5"] == pytest.approx(np.mean([y in row for y, row in zip(labels, top)]))
    pred = logits.argmax(1)
    per_class = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
    assert m["mean_per_class_recall"] == pytest.approx(np.mean(per_class))
    assert mean_per_class_recall(np.array([0, 0, 1]), np.array([0, 1, 1])) == pytest.approx(0.75)
    assert classification_metrics(np.array([[1, 0]]), np.array([1]), 2)["acc5"] is None  # < 5 classes
    with pytest.raises(ValueError, match="classifier rows"):
        classification_metrics(np.array([[0]]), np.array([-1]), 2)


@pytest.fixture(scope="module")
def tiny():
    model = elip_jax.create_model("tiny", image_size=32)
    images = jnp.zeros((1, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), images, jnp.zeros((1, 77), jnp.int32))
    return model, variables


def test_classifier_is_normalised_mean_of_normalised_prompt_embeddings(tiny):
    model, variables = tiny
    prompts = zeroshot_prompts("cifar10")
    prompts = type(prompts)("cifar10", prompts.classnames[:3], prompts.templates[:4], prompts.label_to_class[:3])
    classifier = zeroshot_classifier(model, variables, prompts, data_mesh(), batch_size=8)
    tokens = elip_jax.tokenize(prompts.prompts())
    reference = np.asarray(model.apply(variables, jnp.asarray(tokens), method=model.encode_text))
    reference = reference / np.linalg.norm(reference, axis=-1, keepdims=True)
    reference = reference.reshape(3, 4, -1).mean(1)
    reference /= np.linalg.norm(reference, axis=-1, keepdims=True)
    np.testing.assert_allclose(classifier, reference, atol=2e-5)
    np.testing.assert_allclose(class_embeddings_from_prompts(reference.repeat(2, 0), 3), reference, atol=1e-6)


@pytest.mark.slow
def test_real_model_sharded_results_match_unsharded_numpy(tiny):
    """Tiny CLIP on 1 and 8 devices: same metrics, equal to NumPy from features computed without sharding."""
    model, variables = tiny
    # pruning at evaluation must be batch-local too
    model = with_reduction(model, {"method": "evit", "begin_layers": (1, 2, 3), "keep_ratios": (0.9, 0.65, 0.4)})
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, size=20)
    class_embeddings = unit(rng.normal(size=(5, model.config.embed_dim)))
    captions = [[f"caption {i}", f"a second caption {i}"] for i in range(20)]
    outs = []
    for n in (1, 8):
        mesh = data_mesh(jax.devices()[:n])
        cls = evaluate_classification(model, variables, eval_batches(images, labels, mesh, 8), class_embeddings,
                                      mesh)
        ret = evaluate_retrieval(model, variables, eval_batches(images, labels, mesh, 8), captions, mesh, ks=(1, 5))
        outs.append((cls, ret))
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert outs[0][0][key] == outs[1][0][key]
    for key in ("image_retrieval_recall@1", "text_retrieval_recall@5"):
        assert outs[0][1][key] == outs[1][1][key]

    from elip_jax.data.normalize import normalize_images
    features = np.asarray(model.apply(variables, normalize_images(images), method=model.encode_image,
                                      normalize=True))
    logits = features @ class_embeddings.T
    top = np.argsort(-logits, axis=1)[:, :5]
    expected = classification_metrics(top, labels, 5)
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert outs[1][0][key] == pytest.approx(expected[key])
    texts = [c for cs in captions for c in cs]
    text_features = np.asarray(model.apply(variables, jnp.asarray(elip_jax.tokenize(texts)),
                                           method=model.encode_text, normalize=True))
    owners = np.repeat(np.arange(20), 2)
    for k in (1, 5):
        image_r, text_r = brute_force_recalls(features, text_features, owners, k)
        assert outs[1][1][f"image_retrieval_recall@{k}"] == pytest.approx(image_r)
        assert outs[1][1][f"text_retrieval_recall@{k}"] == pytest.approx(text_r)


def test_flops_per_image_drop_with_pruning_and_sweep_table(tiny):
    model, variables = tiny
    none = image_flops_per_image(with_reduction(model, "none"), variables)
    pruned_model = with_reduction(model, {"method": "evit", "keep_ratios": (0.5,), "begin_layers": (2,)})
    pruned = image_flops_per_image(pruned_model, variables)
    assert none and pruned and pruned < 0.85 * none
    elip = describe_reduction(with_reduction(model, {"method": "elip", "begin_layers": (1, 2, 3)}).reduction)
    assert elip["prunes_at_eval"] is False and len(set(elip["tokens_per_block"])) == 1
    records = [{"task": "zeroshot_classification", "metrics": {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.4},
                "flops_per_image": f, "examples_per_second": 10.0, "reduction": describe_reduction(m.reduction)}
               for f, m in ((none, with_reduction(model, "none")), (pruned, pruned_model))]
    table = sweep_markdown(records)
    assert "| evit | 0.5 | 0.5 |" in table and "50.00" in table
    assert parse_keep_schedules("1.0,1.0;0.9, 0.5;") == [(1.0, 1.0), (0.9, 0.5)]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_keep_schedules("0.9,x")
