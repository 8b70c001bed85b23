"""lr-find: the smoothing / divergence / suggestion math on synthetic curves, and the range
test on digits (finite suggestion inside the range, a curve that falls then rises, the same
result from a run's checkpoint, no run directory touched)."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import pytest
from ftcompile.runtime.lr_find import diverged, multipliers, smooth, suggest
from runtime_helpers import cli, recipe_text, write_recipe


def test_multipliers_are_log_spaced_from_start_to_end() -> None:
    assert multipliers(1e-2, 1e2, 5) == pytest.approx([1e-2, 1e-1, 1.0, 1e1, 1e2])


def test_smoothing_is_bias_corrected() -> None:
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])
    # point 1: (0.98 * 0.02 * 2 + 0.02 * 0) / (1 - 0.98^2) = 0.0392 / 0.0396
    assert smooth([2.0, 0.0]) == pytest.approx([2.0, 0.0392 / 0.0396])


def test_divergence_is_four_times_the_minimum_or_not_finite() -> None:
    assert diverged([1.0, 0.5, 2.1])  # 2.1 > 4 * 0.5
    assert not diverged([1.0, 0.5, 1.9])
    assert diverged([1.0, math.nan])


def test_suggestions_on_a_synthetic_curve() -> None:
    # s(x) = 1 + 2 / (1 + e^(4 (x + 2))) + 0.5 max(0, x)^2 over x = log10(multiplier) on the
    # grid -5.05, -4.95, ..., 1.95: the sigmoid falls fastest at x = -2, the middle of the
    # segment [-2.05, -1.95] (its left point is the suggestion); the lowest grid point is
    # x = -0.05 (s = 1 + 8.2e-4, against 1 + 5.5e-4 + 1.25e-3 at x = 0.05).
    xs = [-5.05 + 0.1 * i for i in range(71)]
    curve = [1 + 2 / (1 + math.exp(4 * (x + 2))) + 0.5 * max(0.0, x) ** 2 for x in xs]
    found = suggest([10**x for x in xs], curve)
    assert found["steepest"] == pytest.approx(10**-2.05)
    assert found["minimum_10"] == pytest.approx(10**-0.05 / 10)


def test_too_few_points_is_a_user_error() -> None:
    from ftcompile.errors import RecipeError

    with pytest.raises(RecipeError, match="diverged before two steps"):
        suggest([1.0, 2.0], [1.0, math.nan])


PHASES = """
[phases.warm]
train = ["head"]
steps = 3
lr = { head = 0.01 }
bn = "frozen"

[phases.tune]
after = ["warm"]
train = ["late", "head"]
steps = 20
lr = { head = 0.01, late = "head / 10" }
bn = "frozen"
scheduler = { type = "OneCycleLR" }
"""


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.mark.slow
def test_lr_find_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, recipe_text("lrf", PHASES, run='checkpoint_every = "100 steps"'))
    args = ("lr-find", recipe, "--phase", "tune", "--steps", "60")
    res = cli(capsys, *args, "-o", tmp_path / "fresh")
    assert res.rc == 0, res.err
    found = rows(tmp_path / "fresh" / "lr_find.csv")
    assert list(found[0]) == ["step", "multiplier", "lr_late", "lr_head", "loss", "smoothed_loss"]
    # Groups keep their planned ratio (late = head / 10) at every step.
    assert all(float(r["lr_late"]) == pytest.approx(float(r["lr_head"]) / 10) for r in found)
    smoothed = [float(r["smoothed_loss"]) for r in found]
    low = smoothed.index(min(smoothed))
    assert 0 < low < len(smoothed) - 1 and smoothed[0] > smoothed[low] < smoothed[-1]  # falls, then rises
    # The reference group is the last of `train`: head.
    line = next(x for x in res.out.splitlines() if x.strip().startswith("lr = { head = "))
    lr = float(line.split("=")[2].split(",")[0])
    assert line.strip().endswith(', late = "head / 10" }')  # the phase's whole table: late follows head
    assert math.isfinite(lr) and 0.01 * 1e-4 <= lr <= 0.01 * 1e3
    assert (tmp_path / "fresh" / "lr_find.png").is_file()

    # From a run's checkpoint at the phase start: the same test, and the run is unchanged.
    run = tmp_path / "run"
    assert cli(capsys, "run", recipe, "--out", run).rc == 0
    before = digests(run)
    res = cli(capsys, *args, "--from", run, "-o", tmp_path / "from")
    assert res.rc == 0, res.err
    # Its one evaluation is of the state loaded from the run, and says so (issue 21).
    assert [x for x in res.out.splitlines() if x.startswith("eval")] == [
        next(x for x in res.out.splitlines() if x.startswith("eval"))
    ]
    assert "[the starting state, loaded from --from: not trained here]" in res.out
    assert rows(tmp_path / "from" / "lr_find.csv") == found
    assert digests(run) == before
    res = cli(capsys, *args, "--from", run, "-o", run)
    assert res.rc == 2 and "inside the run directory" in res.err
    assert digests(run) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--phase", "tunes"), "no phase 'tunes'"),
        (("--phase", "tune", "--steps", "1"), "at least 2 steps"),
        (("--phase", "tune", "--start", "10", "--end", "1"), "need 0 < start < end"),
        (("--phase", "tune", "--from", "nowhere"), "is not a run directory"),
    ],
)
def test_lr_find_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    recipe = write_recipe(tmp_path, recipe_text("lrf", PHASES))
    res = cli(capsys, "lr-find", recipe, *extra, "-o", tmp_path / "out")
    assert res.rc == 2 and message in res.err and "Traceback" not in res.err
    assert not (tmp_path / "out" / "lr_find.csv").exists()


@pytest.mark.slow
def test_the_printed_lrs_are_the_curves_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What a user pastes: the printed steepest-descent LR and minimum / 10 LR of the
    reference group (head) are points of lr_find.csv, found here from the CSV alone."""
    recipe = write_recipe(tmp_path, recipe_text("lrf", PHASES))
    res = cli(capsys, "lr-find", recipe, "--phase", "tune", "--steps", "30", "--end", "1e4", "-o", tmp_path / "out")
    assert res.rc == 0, res.err
    curve = rows(tmp_path / "out" / "lr_find.csv")
    # Candidates as documented: without the diverged last point when the test stopped, then
    # (20 points or more) without the first tenth and the last 5.
    kept = curve[:-1] if "stopped after" in res.out else curve
    kept = [r for r in kept if math.isfinite(float(r["smoothed_loss"]))]
    if len(kept) >= 20:
        kept = kept[len(kept) // 10 : -5]
    lr = [float(r["lr_head"]) for r in kept]
    loss = [float(r["smoothed_loss"]) for r in kept]
    minimum_10 = lr[loss.index(min(loss))] / 10
    # steepest: the left point of the segment where the loss falls fastest per log-unit of LR
    slopes = [(loss[i + 1] - loss[i]) / (math.log(lr[i + 1]) - math.log(lr[i])) for i in range(len(lr) - 1)]
    steepest = lr[slopes.index(min(slopes))]

    def printed(label: str) -> float:
        line = next(x for x in res.out.splitlines() if x.strip().startswith(label))
        return float(line.split(" lr ", 1)[1].split()[0])

    assert printed("minimum / 10") == float(f"{minimum_10:.2g}")  # printed to 2 significant digits
    assert printed("steepest descent") == float(f"{steepest:.2g}")
    assert f'lr = {{ head = {steepest:.2g}, late = "head / 10" }}' in res.out


def _phase(recipe: str, name: str):
    from ftcompile.load import load_recipe
    from ftcompile.schema import validate

    return validate(load_recipe(Path(__file__).parents[2] / "recipes" / recipe)).phases[name]


@pytest.mark.parametrize(
    "recipe, phase, mult, line",
    [
        # layer4 = "head / 3" follows head: only the number is scaled (0.03 x 0.5)
        ("quickstart.toml", "layer4", 0.5, 'lr = { head = 0.015, layer4 = "head / 3" }'),
        ("quickstart.toml", "layer3", 1e-3, 'lr = { head = 3e-05, layer4 = "head / 3", layer3 = "layer4 / 3" }'),
        ("quickstart.toml", "full", 2.0, "lr = { head = 0.1 }"),  # lr_decay gives the others, kept
        ("quickstart.toml", "warmup", 20.0, "lr = { head = 1.0 }"),  # a TOML float, not the integer 1
    ],
)
def test_the_paste_in_line_is_the_phases_whole_lr_table_scaled(recipe: str, phase: str, mult: float, line: str) -> None:
    """A new user pasted `lr = { layer4 = 5.1e-06 }` from lr-find --phase layer4 into the
    quickstart: 'group head is trained but has no LR'. The line is now the phase's table."""
    from ftcompile.lr_paste import paste_lr

    assert paste_lr(phase, _phase(recipe, phase), mult) == line


def test_the_paste_in_line_compiles_in_the_quickstart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ftcompile.lr_paste import paste_lr

    recipes = Path(__file__).parents[2] / "recipes"
    pasted = paste_lr("layer4", _phase("quickstart.toml", "layer4"), 1 / 30).removeprefix("lr = ")
    res = cli(capsys, "plan", recipes / "quickstart.toml", "--set", f"phases.layer4.lr={pasted}")
    assert res.rc == 0, res.err
    assert "layer4  head    0.001 / 0.001" in res.out and "layer4  0.000333 / 0.000333" in res.out
    # the old line, the reference group alone, does not
    res = cli(capsys, "plan", recipes / "quickstart.toml", "--set", "phases.layer4.lr={ layer4 = 5.1e-06 }")
    assert res.rc == 2 and "group 'head' is trained but has no LR" in res.err


def test_an_expression_that_does_not_scale_makes_every_group_a_number() -> None:
    from ftcompile.lr_paste import paste_lr

    phase = _phase("quickstart.toml", "layer4").model_copy(update={"lr": {"head": 0.03, "layer4": "head / 3 + 0.01"}})
    # planned: head 0.03, layer4 0.02; x 0.1 each
    assert paste_lr("layer4", phase, 0.1) == "lr = { head = 0.003, layer4 = 0.002 }"


def test_a_plan_json_pastes_every_trained_group_as_a_number() -> None:
    """A compiled plan.json keeps no expressions: the line is the planned LRs, scaled."""
    from ftcompile.lr_paste import paste_line

    line = paste_line("runs/x/plan.json", (), "tune", {"head": 0.03, "layer4": 0.01}, 0.5)
    assert line == "lr = { head = 0.015, layer4 = 0.005 }"


def test_a_flat_curve_suggests_nothing_and_a_falling_one_does() -> None:
    import numpy as np
    from ftcompile.runtime.lr_find import flat

    # Gaussian noise of sd 0.2 around 0.7 with no trend (the noise measured: about 0.2), and
    # spikes near the end as before a divergence (the robust spread leaves them out): the
    # smoothed loss moves far less than one batch's noise.
    noise = np.random.default_rng(0).normal(0.0, 0.2, 100)
    noisy = [0.7 + e + (3.0 if i in (90, 92) else 0.0) for i, e in enumerate(noise)]
    found = flat(noisy, smooth(noisy))
    assert found is not None and found["noise"] == pytest.approx(0.2, rel=0.25)
    # The same noise on a loss falling from 2.0 to 0.5: a fall of ~1.5 is far beyond it.
    falling = [2.0 - 1.5 * i / 99 + e for i, e in enumerate(noise)]
    assert flat(falling, smooth(falling)) is None
    assert flat([1.0] * 50, [1.0] * 50) == {"fall": 0.0, "noise": 0.0}  # exactly flat


def test_a_flat_curves_report_says_it_found_nothing() -> None:
    from ftcompile.runtime.lr_find import Found, report

    phase = type("P", (), {"name": "layer4", "begin": 23})()
    found = Found(
        phase,
        "layer4",
        {"head": 0.03, "layer4": 0.01},
        [{"step": 0}] * 100,
        False,
        None,  # type: ignore[arg-type]
        {"fall": 0.01, "noise": 0.2},
    )
    text = report(found)
    assert "nothing to suggest: the curve is flat" in text and "paste" not in text


# The raw losses of `lr-find recipes/quickstart.toml --phase layer4` (default range, stopped
# after 84 steps), 2026-12-07 on the 2-core AMD EPYC, commit 63396a3, rounded to 2 digits:
# the curve where the old suggestion was the planned LR / 500. The smoothed loss falls 0.13
# at most, one batch's noise is 0.17.
QUICKSTART_LAYER4 = [
    1.01,
    1.04,
    1.24,
    0.87,
    1.03,
    1.05,
    0.78,
    0.71,
    0.78,
    1.14,
    0.76,
    0.77,
    1.09,
    0.69,
    0.73,
    0.88,
    1.08,
    0.88,
    1.09,
    0.53,
    1.01,
    0.92,
    0.82,
    1.15,
    0.81,
    0.76,
    0.73,
    0.94,
    0.78,
    1.02,
    1.08,
    0.99,
    1.01,
    0.74,
    1.04,
    1.05,
    0.81,
    0.72,
    0.57,
    0.67,
    0.77,
    0.66,
    0.6,
    0.74,
    0.99,
    0.95,
    1.02,
    0.78,
    0.75,
    0.67,
    0.6,
    0.89,
    0.85,
    0.87,
    0.73,
    0.57,
    0.69,
    1.04,
    0.59,
    0.84,
    0.83,
    0.86,
    0.94,
    1.1,
    0.76,
    1.1,
    0.96,
    0.96,
    1.46,
    1.66,
    2.85,
    2.34,
    1.85,
    1.76,
    1.75,
    3.59,
    1.25,
    6.54,
    4.61,
    1.22,
    7.75,
    16.44,
    19.44,
    60.99,
]


def test_the_quickstarts_layer4_curve_is_flat() -> None:
    from ftcompile.runtime.lr_find import flat

    kept = QUICKSTART_LAYER4[:-1]  # the diverged point is not a candidate
    found = flat(kept, smooth(QUICKSTART_LAYER4)[:-1])
    assert found is not None
    assert found["fall"] == pytest.approx(0.127, abs=0.005) and found["noise"] == pytest.approx(0.168, abs=0.005)
