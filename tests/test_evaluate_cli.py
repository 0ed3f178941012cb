"""`python -m elip_jax.evaluate` end to end on real TFDS files (the built-in dataset, generated offline),
and the class-name tables against TFDS's own label names."""
import json

import numpy as np
import pytest

from elip_jax.evaluate import cli, known_datasets, zeroshot_prompts
from elip_jax.evaluate import prompt_data

SMALL_BUILTIN = "elip_shapes/small"  # 128 test scenes with 5 captions each
TINY = ["--model", "tiny", "--image-size", "32", "--split", "test", "--batch-size", "64"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from elip_jax.data import prepare_builtin
    return prepare_builtin(str(tmp_path_factory.mktemp("tfds")), config="small")


def run(tmp_path, data_dir, *args):
    out = tmp_path / "result.json"
    payload = cli.main([*TINY, "--dataset", SMALL_BUILTIN, "--data-dir", data_dir, "--output", str(out), *args])
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    return payload


def test_cli_classification_writes_clip_benchmark_json(tmp_path, data_dir):
    result = run(tmp_path, data_dir, "--task", "zeroshot_classification")
    assert {"dataset", "model", "task", "metrics", "flops_per_image", "reduction", "examples_per_second"} <= set(result)
    assert set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert result["num_examples"] == 128 and result["reduction"]["method"] == "none"
    assert 0.0 <= result["metrics"]["acc1"] <= result["metrics"]["acc5"] <= 1.0
    assert result["flops_per_image"] > 0


def test_cli_retrieval_and_sweep(tmp_path, data_dir):
    result = run(tmp_path, data_dir, "--task", "zeroshot_retrieval")
    assert {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} == set(result["metrics"])
    assert result["num_examples"] == 128
    # chance level: 128 images, 640 captions
    assert result["metrics"]["image_retrieval_recall@10"] < 0.5

    sweep = run(tmp_path, data_dir, "--task", "zeroshot_retrieval", "--reduction", "evit", "--begin-layers",
                "1,2,3", "--reduction-sweep", "1.0,1.0,1.0;0.75,0.5,0.25")
    rows = sweep["sweep"]
    assert [r["reduction"]["prunes_at_eval"] for r in rows] == [False, True]
    assert rows[0]["metrics"] == result["metrics"]  # keep ratio 1.0 everywhere is the unpruned model
    assert rows[1]["flops_per_image"] < rows[0]["flops_per_image"]
    table = (tmp_path / "result.md").read_text()
    title, _, header, _, *table_rows = table.splitlines()
    for name in ("model `tiny`", f"dataset `{SMALL_BUILTIN}`", "split `test`", "zeroshot_retrieval",
                 "`1.0,1.0,1.0;0.75,0.5,0.25`", "begin layers `1,2,3`"):
        assert name in title, (name, title)
    assert "keep ratios (typed)" in header and len(table_rows) == 2
    assert table_rows[0].startswith("| evit (unpruned) | 1.0,1.0,1.0 |")
    assert table_rows[1].startswith("| evit | 0.75,0.5,0.25 |")
    assert [r["keep_ratios_typed"] for r in rows] == ["1.0,1.0,1.0", "0.75,0.5,0.25"]


def test_builtin_small_resolves_its_folder_without_data_dir(tmp_path, monkeypatch):
    """`--dataset elip_shapes/small` alone: generated in $ELIP_JAX_DATA_DIR and read from there (it used to be
    generated there and then looked for in TFDS's default folder)."""
    monkeypatch.setenv("ELIP_JAX_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_default"))  # where TFDS would look by default
    result = cli.main([*TINY, "--dataset", SMALL_BUILTIN, "--task", "zeroshot_retrieval",
                       "--output", str(tmp_path / "r.json")])
    assert result["num_examples"] == 128
    assert (tmp_path / "cache" / "elip_shapes" / "small").is_dir()


def one_line_error(capsys, argv, monkeypatch, match):
    """Runs the command in-process as `python -m elip_jax.evaluate` does; the model must never be loaded (no
    compilation) before the request is found bad."""
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")
    monkeypatch.setattr(cli, "load_model", no_model)
    code = cli.run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("flags,match", [
    (["--dataset", "cifar1O"], "unknown dataset 'cifar1O'"),
    (["--dataset", "elip_shapes/big"], "configs full, small"),
    (["--label-key", "lbl"], "no feature 'lbl' (given as --label-key)"),
    (["--image-key", "img"], "no feature 'img' (given as --image-key)"),
    (["--task", "zeroshot_retrieval", "--text-key", "caps"], "no feature 'caps' (given as --text-key)"),
    (["--split", "validation"], "has no split 'validation'"),
    (["--split", "test[:0]"], "is empty"),
    (["--output", "{tmp}"], "--output must name a file, not a folder"),
    (["--reduction-sweep", "1.0;0.5", "--output", "{tmp}/x.md/r.json"], "cannot be written"),
    (["--keep-ratios", "0.9,x"], "--keep-ratios takes comma-separated floats"),
    (["--batch-size", "12"], "multiple of the 8 devices"),
    (["--task", "classify"], "invalid choice"),
    (["--reduction", "tome", "--drop-merged"], "--reduction tome does not"),
    (["--reduction", "evit", "--drop-merged", "--reduction-sweep", "1.0;0.5"], "not to --reduction-sweep"),
])
def test_bad_requests_fail_in_one_line_before_loading_the_model(tmp_path, data_dir, capsys, monkeypatch, flags,
                                                              match):
    (tmp_path / "x.md").write_text("a file where a folder is needed")
    argv = [*TINY, "--dataset", SMALL_BUILTIN, "--data-dir", data_dir, "--task", "zeroshot_classification",
            "--output", str(tmp_path / "r.json")]
    argv += [flag.replace("{tmp}", str(tmp_path)) for flag in flags]  # later flags win
    one_line_error(capsys, argv, monkeypatch, match)


def test_missing_data_dir_is_an_error_not_a_new_folder(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no_such_dir"
    one_line_error(capsys, [*TINY, "--dataset", SMALL_BUILTIN, "--data-dir", str(missing), "--task",
                            "zeroshot_classification", "--output", str(tmp_path / "r.json")], monkeypatch,
                   "does not exist")
    assert not missing.exists()


def test_command_line_prints_one_line_and_exits_2(tmp_path):
    """The real `python -m elip_jax.evaluate`: an unknown dataset name is one line, not TFDS's list of 500."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "elip_jax.evaluate", *TINY, "--dataset", "cifar1O", "--task",
                           "zeroshot_classification", "--output", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: unknown dataset")


def test_tfds_mock_data_classification(tmp_path):
    """Through tfds.testing.mock_data, whose fake images are encoded with TensorFlow (a test dependency)."""
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        result = cli.main([*TINY, "--dataset", "cifar10", "--task", "zeroshot_classification", "--batch-size", "8",
                           "--output", str(tmp_path / "r.json")])
    assert result["num_examples"] == 20


def test_class_tables_follow_tfds_label_order():
    import tensorflow_datasets as tfds
    checked = 0
    for name, tfds_name in [("food101", "food101"), ("oxford_iiit_pet", "oxford_iiit_pet"), ("dtd", "dtd"),
                            ("oxford_flowers102", "oxford_flowers102"), ("caltech101", "caltech101"),
                            ("eurosat", "eurosat/rgb"), ("sun397", "sun397"), ("imagenet2012", "imagenet2012")]:
        try:
            names = tfds.builder(tfds_name).info.features["label"].names
        except Exception:  # builder needs something this environment lacks
            continue
        expected = prompt_data.IMAGENET_WNIDS if name == "imagenet2012" else prompt_data.TFDS_LABEL_NAMES[name]
        assert list(names) == list(expected), name
        assert zeroshot_prompts(name, names).num_classes == len(names)
        checked += 1
    assert checked >= 6
    # where OpenAI's order differs from TFDS's, classes were matched by TFDS label name
    pairs = lambda d: dict(zip(prompt_data.TFDS_LABEL_NAMES[d], prompt_data.CLASSNAMES[d]))  # noqa: E731
    assert pairs("eurosat")["HerbaceousVegetation"] == "brushland or shrubland"
    assert pairs("caltech101")["faces_easy"] == "centered face"
    assert pairs("caltech101")["background_google"] == "background"
    assert pairs("sun397")["/j/jail_cell"] == "jail cell"
    assert pairs("oxford_iiit_pet")["american_bulldog"] == "american bulldog"
    assert pairs("food101")["cheese_plate"] == "cheese plate"
    with pytest.raises(ValueError, match="orders its labels differently"):
        zeroshot_prompts("dtd", list(reversed(prompt_data.TFDS_LABEL_NAMES["dtd"])))


def test_imagenet_tables_are_complete():
    names = prompt_data.IMAGENET_CLASSNAMES
    assert len(names) == 1000 and len(set(names)) >= 998 and all(n.strip() for n in names)
    assert len(prompt_data.IMAGENET_TEMPLATES) == 80
    assert len(set(prompt_data.IMAGENET_WNIDS)) == 1000
    for variant in ("imagenet_a", "imagenet_r"):
        prompts = zeroshot_prompts(variant)
        assert prompts.num_classes == 200
        mapped = prompts.label_to_class[prompts.label_to_class >= 0]
        np.testing.assert_array_equal(mapped, np.arange(200))
    assert zeroshot_prompts("imagenet_a").classnames[0] == "stingray"  # ImageNet-A's first class, n01498041
    assert zeroshot_prompts("imagenet_v2/matched-frequency").num_classes == 1000
    dogs = zeroshot_prompts("stanford_dogs", ["n02085620-chihuahua", "n02099601-golden_retriever"])
    assert dogs.classnames == ("Chihuahua", "Golden Retriever")
    with pytest.raises(ValueError, match="prepare it"):
        zeroshot_prompts("stanford_dogs", [str(i) for i in range(120)])
    for name in known_datasets():
        if name not in ("stanford_dogs",):
            prompts = zeroshot_prompts(name)
            assert prompts.prompts()[0] and "{" not in prompts.prompts()[0]
    with pytest.raises(ValueError, match="known datasets"):
        zeroshot_prompts("no_such_dataset")
