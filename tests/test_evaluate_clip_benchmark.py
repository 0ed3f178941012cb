"""Our zero-shot numbers are CLIP_benchmark's: its own evaluate functions (clip-benchmark 1.6.2) run on the
embeddings our pipeline extracts from the built-in dataset, for a briefly trained model and for a collapsed
image tower (every image embedding equal, where exact ties decide everything).

CLIP_benchmark's `evaluate` functions take a torch model, a dataloader and a tokenizer; here the "model" looks
its embeddings up in ours (example index -> image embedding, caption -> text embedding), so everything from the
batching to the metrics is CLIP_benchmark's code. Its `accuracy` helper calls float() on a 1-element numpy
array, which numpy 2 refuses; `numpy()` of a 1-element tensor is made 0-d for the duration of the call.
"""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("clip_benchmark")
from clip_benchmark.metrics import zeroshot_classification as cb_classification  # noqa: E402
from clip_benchmark.metrics import zeroshot_retrieval as cb_retrieval  # noqa: E402

import elip_jax  # noqa: E402
from elip_jax.data import prepare_builtin  # noqa: E402
from elip_jax.evaluate import evaluate, sources  # noqa: E402
from elip_jax.evaluate.extract import text_embeddings  # noqa: E402
from elip_jax.evaluate.retrieval import flatten_captions, image_embeddings  # noqa: E402
from elip_jax.evaluate.evaluator import classifier_for  # noqa: E402
from elip_jax.evaluate.sharding import data_mesh  # noqa: E402

DATASET = "elip_shapes/small"
KS = (1, 5, 10)
TRAIN_STEPS = 8  # a model in training; its identical captions tie at the top-k boundary (text R@10 counts them)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_builtin(str(tmp_path_factory.mktemp("data")), config="small")


@pytest.fixture(scope="module")
def trained(data_dir):
    """The tiny model after a few Adam steps of the CLIP loss on the built-in dataset's training split.

    A plain loop over the public pieces (pipeline, model, loss), so that this test does not depend on the
    trainer's internals; what matters here is embeddings with the structure of a trained model."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from elip_jax.checkpoints import random_variables  # pylint: disable=g-import-not-at-top
    from elip_jax.train.losses import clip_loss  # pylint: disable=g-import-not-at-top

    model = elip_jax.create_model("tiny")
    variables = random_variables(model, seed=0)
    config = elip_jax.data.default_data_config()
    config.name, config.data_dir, config.prefetch = DATASET, data_dir, 0
    batches = elip_jax.data.make_train_iterator(config, global_batch_size=32, image_size=model.config.image_size,
                                                seed=0, context_length=model.config.context_length)
    optimizer = optax.adam(1e-3)

    def loss_fn(params, images, tokens):
        features = model.apply({**variables, "params": params}, elip_jax.data.normalize_images(images), tokens)
        return clip_loss(*features)

    @jax.jit
    def step(params, opt_state, images, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, tokens)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = variables["params"]
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(TRAIN_STEPS):
        batch = next(batches)
        params, opt_state, loss = step(params, opt_state, jnp.asarray(batch["images"]), jnp.asarray(batch["tokens"]))
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
    return model, {**variables, "params": params}


def collapse_image_tower(variables):
    """The same parameters with the image tower's last LayerNorm scale at 0: every image embeds to its bias."""
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    ln_post = params["visual"]["ln_post"]["LayerNorm_0"]
    ln_post["scale"] = np.zeros_like(ln_post["scale"])
    ln_post["bias"] = np.random.default_rng(0).normal(size=ln_post["bias"].shape).astype(np.float32)
    return {**variables, "params": params}


class LookupModel:
    """A torch 'CLIP' for CLIP_benchmark whose inputs are indices into embeddings we computed."""

    def __init__(self, image_embeddings, text_embeddings=None):
        self.images = torch.from_numpy(np.asarray(image_embeddings, np.float32))
        self.texts = None if text_embeddings is None else torch.from_numpy(np.asarray(text_embeddings, np.float32))

    def encode_image(self, indices):
        return self.images[indices]

    def encode_text(self, indices):
        return self.texts[indices]


class Loader(list):
    """A list of (inputs, targets) batches with the `.dataset.classes` CLIP_benchmark reads."""

    def __init__(self, batches, classes=()):
        super().__init__(batches)
        self.dataset = type("Dataset", (), {"classes": list(classes)})()


def batched(count, size):
    return [np.arange(start, min(start + size, count)) for start in range(0, count, size)]


def variants(trained):
    model, variables = trained
    return {"trained": (model, variables), "collapsed": (model, collapse_image_tower(variables))}


@pytest.mark.parametrize("variant", ["trained", "collapsed"])
def test_retrieval_equals_clip_benchmark(trained, data_dir, variant):
    model, variables = variants(trained)[variant]
    mesh = data_mesh()
    ours = evaluate(model, variables, task="zeroshot_retrieval", dataset=DATASET, split="test", data_dir=data_dir,
                    batch_size=64, mesh=mesh, compute_flops=False)["metrics"]

    batches = sources.eval_batches(DATASET, "test", data_dir=data_dir, image_size=model.config.image_size,
                                   batch_size=64, mesh=mesh, label_key=None)
    indices, images, _ = image_embeddings(model, variables, batches, mesh)
    assert indices.tolist() == list(range(len(indices)))
    captions = sources.read_captions(DATASET, "test", data_dir, "captions")
    texts, _ = flatten_captions(indices, captions)
    embedded = text_embeddings(model, variables, elip_jax.tokenize(texts, context_length=model.config.context_length),
                               mesh)
    row_of = {}
    for row, text in enumerate(texts):
        row_of.setdefault(text, row)  # identical captions embed identically; any copy will do
    assert all(np.array_equal(embedded[row_of[t]], embedded[r]) for r, t in enumerate(texts))

    def tokenizer(strings):
        return torch.tensor([row_of[s] for s in strings])

    loader = Loader([(torch.from_numpy(rows), [captions[i] for i in rows]) for rows in batched(len(indices), 32)])
    theirs = cb_retrieval.evaluate(LookupModel(images, embedded), loader, tokenizer, "cpu", amp=False,
                                   recall_k_list=list(KS))

    for k in KS:
        for direction in ("image", "text"):
            key = f"{direction}_retrieval_recall@{k}"
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (key, ours, theirs)  # theirs: a float32 mean
    duplicated = len(texts) - len(row_of)
    assert duplicated > 0  # the built-in captions repeat: ties are exercised even for the trained model
    if variant == "collapsed":
        assert ours["image_retrieval_recall@1"] == pytest.approx(1 / len(indices))


@pytest.mark.parametrize("variant", ["trained", "collapsed"])
def test_classification_equals_clip_benchmark(trained, data_dir, variant, tmp_path, monkeypatch):
    model, variables = variants(trained)[variant]
    mesh = data_mesh()
    prompts, class_embeddings = classifier_for(model, variables, DATASET, data_dir=data_dir, mesh=mesh)
    ours = evaluate(model, variables, task="zeroshot_classification", dataset=DATASET, split="test",
                    data_dir=data_dir, batch_size=64, mesh=mesh, classifier=(prompts, class_embeddings),
                    compute_flops=False)["metrics"]

    batches = sources.eval_batches(DATASET, "test", data_dir=data_dir, image_size=model.config.image_size,
                                   batch_size=64, mesh=mesh, label_key=None)
    indices, images, _ = image_embeddings(model, variables, batches, mesh)
    source = elip_jax.data.open_source(DATASET, "test", data_dir=data_dir)
    labels = np.array([int(source[int(i)]["label"]) for i in indices])
    assert prompts.label_to_class is None or np.array_equal(prompts.label_to_class, np.arange(len(class_embeddings)))

    classifier_file = str(tmp_path / "classifier.pt")
    torch.save(torch.from_numpy(class_embeddings.T.copy()), classifier_file)  # CLIP_benchmark's [E, C]
    loader = Loader([(torch.from_numpy(rows), torch.from_numpy(labels[rows])) for rows in batched(len(labels), 32)],
                    classes=prompts.classnames)

    numpy_of_tensor = torch.Tensor.numpy

    def zero_d_when_single(self, *args, **kwargs):  # numpy 2: float() needs a 0-d array, see the docstring
        array = numpy_of_tensor(self, *args, **kwargs)
        return array.reshape(()) if array.size == 1 else array

    monkeypatch.setattr(torch.Tensor, "numpy", zero_d_when_single)
    theirs = cb_classification.evaluate(LookupModel(images), loader, tokenizer=None, classnames=prompts.classnames,
                                        templates=[], device="cpu", amp=False, load_clfs=[classifier_file])
    monkeypatch.undo()
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (key, ours, theirs)  # theirs: a float32 mean
    if variant == "collapsed":
        assert ours["mean_per_class_recall"] == pytest.approx(1 / len(np.unique(labels)))
