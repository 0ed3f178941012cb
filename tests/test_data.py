"""Input pipelines: determinism, sharding, exact resume, bad data, evaluation padding, TFDS mocking, tfrecord."""
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import elip_jax.data as data
from elip_jax.data import bad_data, captions, shapes_scenes, sources
from grain.sharding import ShardOptions

CONTEXT = 16


def fake_tokenize(texts, context_length=77):
    """Stand-in tokenizer (picklable): SOT, one id per word, EOT, truncated keeping EOT last, zero padded."""
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
        ids = [1] + [2 + (sum(map(ord, w)) % 1000) for w in text.split()] + [3]
        if len(ids) > context_length:
            ids = ids[:context_length - 1] + [3]
        out[row, :len(ids)] = ids
    return out


def png(array):
    """PNG bytes; the mode follows the array (2-D uint8: L, uint16: I;16, 4 channels: RGBA)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def solid(value, size=24):
    return np.full((size, size, 3), value, np.uint8)


class IndexedToy(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """64 train images whose pixel value identifies the example (value = 3 * index); 13 test images."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "captions": tfds.features.Sequence(tfds.features.FeaturesDict({"text": tfds.features.Text()})),
            "label": tfds.features.ClassLabel(num_classes=5)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(64), "test": self._generate_examples(13)}

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"image": png(solid(3 * i)), "captions": [{"text": f"item {i}"}, {"text": f"thing {i}"}],
                      "label": i % 5}


def _bad_records():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    good = png(rgb)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    return [
        (good, ["good zero"]),
        (b"not an image at all", ["garbage"]),                                    # undecodable
        (good[: len(good) // 2], ["truncated"]),                                  # truncated file
        (png(rgb[..., 0]), ["grayscale"]),                              # converted
        (png(np.dstack([rgb, rgb[..., :1]])), ["rgba"]),              # converted
        (cmyk.getvalue(), ["cmyk"]),                                               # converted
        (png(rgb[..., 0].astype(np.uint16) * 257), ["sixteen bit"]),  # 16 -> 8 bit
        (png(solid(9, size=2)), ["too tiny"]),                                     # skipped: < min_image_size
        (png(solid(9, size=10)), ["small but fine"]),                              # upscaled
        (good, ["   ", ""]),                                                      # empty captions
        (good, []),                                                               # no caption
        (good, [" ".join(["word"] * 40)]),                                         # longer than the context
        (good, ["good twelve"]),
    ]


class BadToy(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Records with broken, odd and fine images and captions (image bytes are stored as given)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "captions": tfds.features.Sequence(tfds.features.Text())}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (image, texts) in enumerate(_bad_records()):
            yield i, {"image": image, "captions": texts}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    for builder_class in (IndexedToy, BadToy):
        builder_class(data_dir=root, file_format="array_record").download_and_prepare()
    data.prepare_builtin(root, config="small")
    return root


def config_for(root, name, **overrides):
    config = data.default_data_config()
    config.name, config.data_dir = name, root
    config.update(overrides)
    return config


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def ids_of(batch):
    return (batch["images"][:, 0, 0, 0] // 3).tolist()


def test_normalize_images_matches_clip_statistics():
    images = np.stack([np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)])
    out = jax.jit(data.normalize_images)(images)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out[0, 0, 0], -np.array(data.CLIP_MEAN) / np.array(data.CLIP_STD), rtol=1e-6)
    np.testing.assert_allclose(out[1, 0, 0], (1 - np.array(data.CLIP_MEAN)) / np.array(data.CLIP_STD), rtol=1e-6)


def test_builtin_scenes_are_deterministic_and_captions_describe_them():
    first, again = shapes_scenes.render_scene(1, "train", 7), shapes_scenes.render_scene(1, "train", 7)
    assert first.png == again.png and first.captions == again.captions
    for index in range(20):
        scene = shapes_scenes.render_scene(0, "test", index)
        classname = data.builtin_classnames()[scene.label]
        assert f"a photo of a {classname}" in scene.captions
        assert len(scene.captions) == 5 and len(set(scene.captions)) == 5
    assert len(data.builtin_classnames()) == 16 and all("{c}" in t for t in data.builtin_templates())


def test_prepare_builtin_is_cached(data_root):
    info = os.path.join(data_root, "elip_shapes", "small", "1.0.0", "dataset_info.json")
    before = os.stat(info).st_mtime_ns
    assert data.prepare_builtin(data_root, config="small") == data_root
    assert os.stat(info).st_mtime_ns == before
    assert not [p for p in os.listdir(os.path.dirname(os.path.dirname(info))) if "incomplete" in p]
    source = data.open_source("elip_shapes/small", "test", data_root)
    assert len(source) == 128 and isinstance(source[0]["image"], bytes)  # left encoded for bad_data.py


def test_train_batches_shapes_and_determinism(data_root):
    config = config_for(data_root, "elip_shapes/small")
    kwargs = dict(global_batch_size=8, image_size=64, seed=3, context_length=CONTEXT, tokenize_fn=fake_tokenize)
    first, second = data.make_train_iterator(config, **kwargs), data.make_train_iterator(config, **kwargs)
    a, b = take(first, 3), take(second, 3)
    assert a[0]["images"].shape == (8, 64, 64, 3) and a[0]["images"].dtype == np.uint8
    assert a[0]["tokens"].shape == (8, CONTEXT) and a[0]["tokens"].dtype == np.int32
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    other = next(data.make_train_iterator(config, **{**kwargs, "seed": 4}))
    assert not np.array_equal(other["images"], a[0]["images"])


def test_shards_are_disjoint_and_cover_an_epoch(data_root):
    config = config_for(data_root, "indexed_toy", caption_key="captions/text")
    seen = []
    for index in range(2):
        iterator = data.make_train_iterator(
            config, global_batch_size=16, image_size=8, seed=0, context_length=CONTEXT,
            tokenize_fn=fake_tokenize, shard_options=ShardOptions(shard_index=index, shard_count=2))
        seen.append([i for batch in take(iterator, 4) for i in ids_of(batch)])  # 4 x 8 = one epoch's half
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(64))


def test_captions_vary_per_visit(data_root):
    config = config_for(data_root, "indexed_toy", caption_key="captions/text", shuffle=False)
    iterator = data.make_train_iterator(config, global_batch_size=64, image_size=8, seed=0,
                                        context_length=CONTEXT, tokenize_fn=fake_tokenize)
    first_words = [batch["tokens"][:, 1] for batch in take(iterator, 2)]  # 'item' or 'thing', per example
    assert len(set(first_words[0].tolist())) == 2  # both captions get drawn ...
    assert 10 < np.sum(first_words[0] != first_words[1]) < 54  # ... and redrawn per visit (epoch), not fixed


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_reproduces_the_next_batches(data_root, num_workers):
    config = config_for(data_root, "indexed_toy", caption_key="captions/text", num_workers=num_workers)
    make = lambda: data.make_train_iterator(config, global_batch_size=8, image_size=8, seed=5,
                                            context_length=CONTEXT, tokenize_fn=fake_tokenize)
    original = make()
    take(original, 3)
    state = json.loads(json.dumps(original.get_state()))  # must survive a JSON round trip
    expected = take(original, 9)  # crosses an epoch boundary (64 / 8 = 8 batches per epoch)
    original.close()
    restored = make()
    restored.set_state(state)
    for want, got in zip(expected, take(restored, 9)):
        np.testing.assert_array_equal(want["images"], got["images"])
        np.testing.assert_array_equal(want["tokens"], got["tokens"])
    restored.close()
    wrong = data.make_train_iterator(config, global_batch_size=16, image_size=8, seed=5,
                                     context_length=CONTEXT, tokenize_fn=fake_tokenize)
    with pytest.raises(ValueError, match="global_batch_size"):
        wrong.set_state(state)


def test_bad_data_is_converted_or_skipped_and_counted(data_root):
    config = config_for(data_root, "bad_toy", shuffle=False, min_image_size=8)
    iterator = data.make_train_iterator(config, global_batch_size=4, image_size=16, seed=0,
                                        context_length=CONTEXT, tokenize_fn=fake_tokenize)
    batches = take(iterator, 2)  # 13 records, 5 unusable: exactly two full batches from the first epoch
    assert all(b["images"].shape == (4, 16, 16, 3) for b in batches)
    assert iterator.skipped == {"unreadable_record": 0, "undecodable_image": 2, "bad_image_shape": 0,
                                "image_too_small": 1, "missing_caption": 1, "empty_caption": 1}
    assert iterator.converted == {"converted_to_rgb": 4, "reduced_bit_depth": 1, "truncated_caption": 1}
    assert iterator.get_state()["skipped"]["undecodable_image"] == 2
    take(iterator, 4)  # later epochs keep going: no stall, no crash


def test_bad_data_helpers():
    assert bad_data.extract_captions({"c": [b"ok", 3, None]}, ["c"]) == (["ok"], None)
    assert bad_data.extract_captions({"c": 7}, ["c"]) == ([], "missing_caption")
    assert bad_data.extract_captions({"x": "a"}, ["c"]) == ([], "missing_caption")
    assert bad_data.extract_captions({"c": [{"text": b" a\nb "}]}, ["c", "text"]) == (["a b"], None)
    image, reason, conv = bad_data.decode_image(np.ones((9, 9, 4), np.float32), 8)
    assert reason is None and image.dtype == np.uint8 and image.shape == (9, 9, 3) and image[0, 0, 0] == 255
    assert set(conv) == {"reduced_bit_depth", "converted_to_rgb"}
    assert bad_data.decode_image(np.ones((9, 9, 5), np.uint8), 8)[1] == "bad_image_shape"
    tokens, truncated = captions.tokenize_captions(["a b", " ".join(["w"] * 30)], 8, fake_tokenize)
    assert truncated == 1 and tokens.shape == (2, 8) and tokens[1, -1] == 3


def test_eval_padding_and_masks_over_two_processes(data_root):
    rows = {}
    lengths = set()
    for index in range(2):
        iterator = data.make_eval_iterator("indexed_toy", "test", data_dir=data_root, image_size=8,
                                           global_batch_size=6, shard_options=ShardOptions(index, 2))
        lengths.add(len(iterator))
        batches = list(iterator)
        assert len(batches) == len(iterator)
        rows[index] = batches
    assert lengths == {3}  # ceil(13 / 6) on both processes
    seen = []
    for k in range(3):  # process 0's rows then process 1's rows form global batch k, in split order
        glued = {key: np.concatenate([rows[0][k][key], rows[1][k][key]]) for key in rows[0][k]}
        expected = np.arange(6 * k, 6 * k + 6)
        np.testing.assert_array_equal(glued["index"], np.where(expected < 13, expected, -1))
        np.testing.assert_array_equal(glued["mask"], expected < 13)
        valid = glued["mask"]
        np.testing.assert_array_equal(glued["labels"][valid], glued["index"][valid] % 5)
        np.testing.assert_array_equal(ids_of(glued) if valid.all() else np.array(ids_of(glued))[valid],
                                      glued["index"][valid])
        seen += glued["index"][valid].tolist()
    assert seen == list(range(13))


def test_mock_data_standard_dataset_through_eval_iterator():
    """tfds.testing.mock_data for cifar10. Its default random generator encodes images with TensorFlow, so
    without TF the examples come from as_data_source_fn (PNG bytes made with PIL)."""
    def as_data_source(self, split, decoders=None, **kwargs):
        del kwargs
        assert isinstance(decoders["image"], tfds.decode.SkipDecoding)
        return [{"image": png(solid(i, size=32)), "label": i % 10, "id": f"{i}"} for i in range(10)]

    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=as_data_source):
        iterator = data.make_eval_iterator("cifar10", "test", image_size=16, global_batch_size=4)
        batches = list(iterator)
    assert len(iterator) == 3 and [b["images"].shape for b in batches] == [(4, 16, 16, 3)] * 3
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches])[:10], np.arange(10) % 10)
    assert np.concatenate([b["mask"] for b in batches]).sum() == 10 and iterator.skipped["undecodable_image"] == 0


def _mark_as_tfrecord(root, name):
    info_path = os.path.join(root, name, "1.0.0", "dataset_info.json")
    info = json.load(open(info_path))
    info["fileFormat"] = "tfrecord"
    json.dump(info, open(info_path, "w"))


def test_tfrecord_without_tensorflow_says_how_to_convert(tmp_path, monkeypatch):
    IndexedToy(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    monkeypatch.setattr(sources, "tensorflow_available", lambda: False)  # as on a machine without TF
    _mark_as_tfrecord(str(tmp_path), "indexed_toy")  # what a TF build with the default format leaves
    config = config_for(str(tmp_path), "indexed_toy", caption_key="captions/text")
    with pytest.raises(ValueError, match=r"tfds convert_format --root_data_dir=.* --out_file_format=array_record"):
        data.make_train_iterator(config, global_batch_size=4, image_size=8, seed=0, tokenize_fn=fake_tokenize)
    with pytest.raises(ValueError, match="array_record"):
        data.open_source("indexed_toy", "train", str(tmp_path))


def test_tfrecord_through_tf_data(tmp_path):
    """TensorFlow is a test dependency (requirements/test.txt), so this runs in CI."""
    IndexedToy(data_dir=str(tmp_path), file_format="tfrecord").download_and_prepare()
    config = config_for(str(tmp_path), "indexed_toy", caption_key="captions/text", shuffle_buffer=16)
    make = lambda: data.make_train_iterator(config, global_batch_size=8, image_size=8, seed=0,
                                            context_length=CONTEXT, tokenize_fn=fake_tokenize)
    first = make()
    take(first, 2)
    state, expected = first.get_state(), take(first, 2)
    again = make()
    again.set_state(state)
    for want, got in zip(expected, take(again, 2)):
        np.testing.assert_array_equal(want["images"], got["images"])
    evaluation = list(data.make_eval_iterator("indexed_toy", "test", data_dir=str(tmp_path), image_size=8,
                                              global_batch_size=6))
    assert np.concatenate([b["index"] for b in evaluation])[:13].tolist() == list(range(13))


def test_default_tokenizer_is_elip_jax_tokenize(data_root):
    import elip_jax
    config = config_for(data_root, "indexed_toy", caption_key="captions/text", shuffle=False)
    batch = next(data.make_train_iterator(config, global_batch_size=4, image_size=8, seed=0,
                                          context_length=CONTEXT))
    texts = [[f"item {i}", f"thing {i}"] for i in ids_of(batch)]
    for row, options in zip(batch["tokens"], texts):
        assert any(np.array_equal(row, elip_jax.tokenize([t], context_length=CONTEXT)[0]) for t in options)


# ---------------------------------------------------------------- README, checks, workers

def readme_data_example() -> str:
    """The first python block of README.md's '## Data' section, as written."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    section = readme.split("\n## Data\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_data_example_runs_as_written(tmp_path, monkeypatch):
    """Verbatim, in a fresh data folder and with TFDS's default folder empty: the example must define its own
    sharding and both iterators must read the built-in dataset where it was generated."""
    monkeypatch.setenv("ELIP_JAX_DATA_DIR", str(tmp_path / "elip_jax_cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_default"))
    namespace = {}
    exec(compile(readme_data_example(), "README.md (## Data)", "exec"), namespace)  # pylint: disable=exec-used
    assert namespace["batch"]["images"].shape == (256, 64, 64, 3)
    assert namespace["batch"]["tokens"].shape == (256, 77)
    assert len(namespace["ev"]) == 1 and namespace["ev"].num_examples == 128
    indices = np.concatenate([np.asarray(b["index"]) for b in namespace["ev"]])
    assert sorted(i for i in indices.tolist() if i >= 0) == list(range(128))


def test_check_dataset_names_what_is_wrong_in_one_sentence(data_root, tmp_path):
    keys = {"data.image_key": "image", "data.caption_key": "captions/text", "--label-key": "label"}
    assert data.check_dataset("indexed_toy", "test", data_root, keys) == 13
    assert data.check_dataset("indexed_toy", "train[:25%]", data_root, ["image"]) == 16
    assert data.check_dataset("elip_shapes/small", "test", data_root, ["image", "captions", "label"]) == 128
    cases = [
        (("indexed_toi", "test", data_root, ()), "unknown dataset 'indexed_toi'"),
        (("indexed_toy", "validation", data_root, ()), "has no split 'validation' (its splits: test, train"),
        (("indexed_toy", "test[:0]", data_root, ()), "split 'test[:0]' of dataset 'indexed_toy' is empty"),
        (("indexed_toy", "test", data_root, {"data.caption_key": "captions/txt"}),
         "no feature 'captions/txt' (given as data.caption_key); its features are: captions/text, image, label"),
        (("indexed_toy", "test", data_root, ["lbl"]), "no feature 'lbl'; its features"),
        (("elip_shapes/tiny", "test", data_root, ()), "configs full, small"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError) as error:
            data.check_dataset(*args)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("name", ["indexed_toy", "elip_shapes/small"])
def test_a_data_dir_that_does_not_exist_is_an_error_not_a_new_folder(tmp_path, name):
    missing = str(tmp_path / "typo")
    for call in (lambda: data.check_dataset(name, "test", missing),
                 lambda: data.make_eval_iterator(name, "test", data_dir=missing, image_size=8, global_batch_size=4),
                 lambda: data.open_source(name, "test", data_dir=missing)):
        with pytest.raises(ValueError, match="does not exist"):
            call()
    assert not os.path.exists(missing)


def test_a_split_smaller_than_the_batch_warns_in_training(data_root):
    config = config_for(data_root, "indexed_toy", split="test", caption_key="captions/text")
    with pytest.warns(UserWarning, match="13 examples, fewer than the batch of 16: .*false negative"):
        data.make_train_iterator(config, global_batch_size=16, image_size=8, seed=0, context_length=CONTEXT,
                                 tokenize_fn=fake_tokenize)


def test_same_global_batches_for_any_number_of_processes_and_workers(data_root):
    """One seed, the same global batches (as sets of examples, in order of batches) whatever the layout."""
    def global_batches(process_count, num_workers, count=3):
        parts = []
        for index in range(process_count):
            config = config_for(data_root, "indexed_toy", caption_key="captions/text", num_workers=num_workers)
            iterator = data.make_train_iterator(
                config, global_batch_size=8, image_size=8, seed=0, context_length=CONTEXT,
                tokenize_fn=fake_tokenize, shard_options=ShardOptions(shard_index=index, shard_count=process_count))
            parts.append([ids_of(batch) for batch in take(iterator, count)])
            iterator.close()
        return [sorted(i for part in parts for i in part[k]) for k in range(count)]

    reference = global_batches(1, 0)
    assert global_batches(1, 2) == reference
    assert global_batches(2, 2) == reference


def test_generating_the_builtin_dataset_says_so_and_downloads_nothing(tmp_path, capfd):
    data.prepare_builtin(str(tmp_path), config="small")
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err and "has no dataset_info.json" not in err
    assert "Generating the built-in dataset elip_shapes/small (512 train, 128 test scenes)" in err
    data.prepare_builtin(str(tmp_path), config="small")
    out, err = capfd.readouterr()
    assert "Generating the built-in dataset" not in out + err  # once
