"""benches/reference/quality.py plans the sets it renders and sums up several seeds' readings.
(Its full run renders lines and runs textrec and Tesseract: a benchmark, not a test.)"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benches" / "reference"))

import quality  # noqa: E402


DESCRIPTIONS = ["--split", "descriptions"]
UNSEEN = [a for f in quality.UNSEEN_FONTS for a in ("--font", f)]


def test_one_pair_of_sets_at_synths_own_seed_by_default() -> None:
    sets = quality.rendered_sets(Path("/r"), [None], by_family=False, independent=False)
    assert sets == {
        "training-fonts": (Path("/r/training-fonts"), DESCRIPTIONS, None),
        "unseen-fonts": (Path("/r/unseen-fonts"), DESCRIPTIONS + UNSEEN, None),
    }


def test_a_pair_per_seed_and_a_set_per_family() -> None:
    sets = quality.rendered_sets(Path("/r"), [11, 22], by_family=True, independent=False)
    assert len(sets) == 2 * (2 + len(quality.UNSEEN_FONTS))
    assert sets["unseen-fonts@22"] == (Path("/r/unseen-fonts@22"), DESCRIPTIONS + UNSEEN, 22)
    assert sets["cabin-sketch@11"] == (Path("/r/cabin-sketch@11"), DESCRIPTIONS + ["--font", "Cabin Sketch"], 11)
    assert len({folder for folder, _, _ in sets.values()}) == len(sets), "every set has a folder of its own"


def test_independent_sets_use_documentation_text_and_the_reserved_fonts() -> None:
    sets = quality.rendered_sets(Path("/r"), [None, 7], by_family=True, independent=True)
    assert len(sets) == 2 * (2 + len(quality.RESERVED_FONTS))
    for _, synth_args, _ in sets.values():
        assert synth_args[0] == "--independent-evaluation" and "--split" not in synth_args
    assert sets["doc-training-fonts"][1] == ["--independent-evaluation", "--training-fonts"]
    assert sets["doc-reserved-fonts@7"] == (Path("/r/doc-reserved-fonts@7"), ["--independent-evaluation"], 7)
    assert sets["doc-kaushanscript"][1] == ["--independent-evaluation", "--font", "opentype/kaushanscript"]


def test_case_alone_counts_as_an_error_only_in_the_cer() -> None:
    c = quality.Counts()
    c.add("Print the REPORT", "print the Report  ")
    assert (c.char_errors, c.caseless_char_errors, c.chars) == (6, 0, 16)
    c.add("abc", "abd")
    assert (c.cer, c.cer_caseless) == (7 / 19, 1 / 19)


def test_summary_spans_the_seeds_of_each_kind() -> None:
    results = {
        "unseen-fonts@1": {"textrec": {"cer": 0.06, "cer_caseless": 0.05}, "tesseract": {"cer": 0.04}},
        "unseen-fonts@2": {"textrec": {"cer": 0.08}, "tesseract": {"cer": 0.05}},
        "training-fonts@1": {"textrec": {"cer": 0.01}},
        "training-fonts@2": {"textrec": {"cer": 0.03}},
    }
    s = quality.summary(results)
    assert s["unseen-fonts"]["textrec"] == {"sets": 2, "mean": 0.07, "min": 0.06, "max": 0.08,
                                            "caseless_mean": 0.065}
    assert s["unseen-fonts"]["tesseract"]["max"] == 0.05
    assert s["training-fonts"]["textrec"]["mean"] == 0.02
    assert "tesseract" not in s["training-fonts"]


def test_no_summary_for_a_single_seed() -> None:
    assert quality.summary({"unseen-fonts": {"textrec": {"cer": 0.06}}}) == {}


def test_default_names_synths_own_seed() -> None:
    assert quality.seed_arg("default") is None
    assert quality.seed_arg("22") == 22
