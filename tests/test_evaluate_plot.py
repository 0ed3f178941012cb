"""The accuracy-FLOPs picture: the data behind it (one curve per method, in order of FLOPs, one model only), its
axes, and the PNG drawn with every method's colour."""
import json

import numpy as np
import pytest
from PIL import Image

from elip_jax.evaluate import plot

ABOUT = {"model": "tower12@step600", "dataset": "builtin", "split": "test", "task": "zeroshot_classification"}


def result(method, flops, acc1, **reduction):
    return {**ABOUT, "metrics": {"acc1": acc1, "acc5": 1.0}, "flops_per_image": flops,
            "reduction": {"method": method, **reduction}}


def sweep(method, rows):
    return {**ABOUT, "sweep": [{**result(method, f, a, keep=[k]), "keep_ratios_typed": t} for f, a, k, t in rows]}


PAYLOADS = [result("none", 95e6, 0.38),
            sweep("evit", [(95e6, 0.38, 64, "1.0"), (62e6, 0.30, 39, "0.61"), (78e6, 0.36, 51, "0.8")]),
            {**ABOUT, "sweep": [{**result("tome", 70e6, 0.33, r=[3] * 12), "keep_ratios_typed": "3"}]}]


def test_one_curve_per_method_in_order_of_flops_with_its_points_named():
    by_its_name = {**result("random", 65e6, 0.39, keep=[39]), "dataset": "elip_shapes"}  # = builtin
    found, about = plot.curves(PAYLOADS + [by_its_name])
    assert about == {**ABOUT, "dataset": "elip_shapes"} and list(found) == ["none", "evit", "tome", "random"]
    assert found["evit"] == [(62e6, 0.30, "0.61"), (78e6, 0.36, "0.8"), (95e6, 0.38, "1.0")]
    assert found["tome"] == [(70e6, 0.33, "r=3")] and found["none"] == [(95e6, 0.38, "")]


def test_results_of_two_models_or_without_flops_are_refused():
    other = {**result("none", 1e9, 0.5), "model": "another"}
    with pytest.raises(ValueError, match="one model: found 'tower12@step600' and 'another'"):
        plot.curves(PAYLOADS + [other])
    with pytest.raises(ValueError, match="no FLOPs per image"):
        plot.curves([result("none", None, 0.5)])
    with pytest.raises(ValueError, match="no acc9"):
        plot.curves(PAYLOADS, metric="acc9")


@pytest.mark.parametrize("low, high", [(0.2, 0.97), (29.0, 39.0), (61.9, 97.9), (5.0, 5.0)])
def test_ticks_are_round_and_cover_the_range(low, high):
    ticks = plot.nice_ticks(low, high)
    steps = np.diff(ticks)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 12
    np.testing.assert_allclose(steps, steps[0], rtol=1e-6)
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]) + 1e-9)
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


def test_the_command_writes_a_png_with_every_curve(tmp_path, capsys):
    paths = []
    for i, payload in enumerate(PAYLOADS):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(payload))
    out = tmp_path / "figure.png"
    assert plot.run([*map(str, paths), "--output", str(out)]) == 0
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == (plot.SIZE[1], plot.SIZE[0], 3)
    for colour in plot.PALETTE[:3]:  # each method's line is there
        assert (picture == colour).all(axis=-1).sum() > 50, colour
    assert plot.run([str(paths[0]), "--output", str(tmp_path / "figure.jpg")]) == 2
    assert "must name a .png file" in capsys.readouterr().err
