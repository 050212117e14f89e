"""Scoring of single answers and per-task aggregates, with every value worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from mimic_pipeline.core.scoring import ItemScore, aggregate, score_answer, wilson_interval


def counting_item(total: int) -> dict:
    return {"task": "counting", "answer": str(total), "answer_struct": {"total": total}, "query": ["triangle"]}


def listing_item(*names: str, as_json: bool = False) -> dict:
    struct = {"categories": sorted(names)}
    return {
        "task": "listing",
        "answer": ", ".join(sorted(names)),
        "answer_struct": json.dumps(struct) if as_json else struct,
        "query": ["shape"],
    }


def name_item(answer: str, task: str = "common", query: tuple[str, ...] = ()) -> dict:
    return {"task": task, "answer": answer, "answer_struct": {"category": answer}, "query": list(query)}


# ---- counting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed", "correct"),
    [
        ("4", "4", True),
        ("There are 4.", "4", True),
        ("four", "4", True),
        ("I think there are four triangles in total", "4", True),
        ("four or five", "4", True),
        ("five or four", "5", False),
        ("No, there are 3", "3", False),
    ],
)
def test_counting(text, parsed, correct):
    assert score_answer("counting", text, counting_item(4)) == ItemScore(
        score=float(correct), correct=correct, parsed=parsed, parse_ok=True
    )


@pytest.mark.parametrize("text", ["", None, "I cannot tell", "4.5", "no"])
def test_counting_unparseable_is_wrong(text):
    assert score_answer("counting", text, counting_item(4)) == ItemScore(
        score=0.0, correct=False, parsed=None, parse_ok=False
    )


# ---- listing -----------------------------------------------------------------------------------------


def test_listing_exact_and_first_item_kept():
    # The reference code dropped the first listed name, so this perfect answer scored recall 1/2 there.
    assert score_answer("listing", "circle, ring", listing_item("circle", "ring")) == ItemScore(
        score=1.0, correct=True, parsed="circle, ring", parse_ok=True,
        precision=1.0, recall=1.0, n_pred=2, n_gold=2, n_hit=2,
    )
    only_first = score_answer("listing", "circle", listing_item("circle", "ring"))
    assert (only_first.n_hit, only_first.recall, only_first.correct) == (1, 0.5, False)


def test_listing_splits_on_and_semicolons_newlines_and_drops_duplicates():
    item = listing_item("circle", "ring", "star", "triangle")
    score = score_answer("listing", "Circles; rings and\nstar, circle, , and triangle.", item)
    assert score.parsed == "circle, ring, star, triangle"
    assert (score.n_pred, score.n_hit, score.correct) == (4, 4, True)


def test_listing_and_only_as_a_whole_word():
    # "band" and "sand" contain "and" but are not separators.
    score = score_answer("listing", "band, sand", listing_item("band", "sand"))
    assert (score.parsed, score.correct) == ("band, sand", True)


def test_listing_f1_by_hand():
    # gold {circle, ring, square, star}, predicted {circle, ring, triangle}: 2 hits,
    # P = 2/3, R = 2/4, F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7.
    score = score_answer("listing", "circle, ring, triangle", listing_item("circle", "ring", "square", "star"))
    assert score.precision == pytest.approx(2 / 3)
    assert score.recall == pytest.approx(1 / 2)
    assert score.score == pytest.approx(4 / 7)
    assert (score.n_pred, score.n_gold, score.n_hit, score.correct) == (3, 4, 2, False)


def test_listing_empty_prediction():
    assert score_answer("listing", " , and ", listing_item("circle", "ring")) == ItemScore(
        score=0.0, correct=False, parsed=None, parse_ok=False,
        precision=0.0, recall=0.0, n_pred=0, n_gold=2, n_hit=0,
    )


def test_listing_answer_struct_as_json_string():
    assert score_answer("listing", "ring, circle", listing_item("circle", "ring", as_json=True)).correct


def test_listing_keeps_names_that_contain_and():
    item = listing_item("Bow and arrow", "Sword")
    assert score_answer("listing", "bows and arrows, swords", item).correct
    # Names are protected only where they are known: here "and" separates two other names.
    vocabulary = ["Bow and arrow", "Sword", "Salt and pepper shakers"]
    split = score_answer("listing", "bow and sword", item, vocabulary=vocabulary)
    assert (split.parsed, split.n_hit) == ("bow, sword", 1)
    from_vocabulary = score_answer("listing", "sword and salt and pepper shakers", item, vocabulary=vocabulary)
    assert from_vocabulary.parsed == "sword, salt and pepper shaker"


# ---- common / odd-one --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "text", "correct"),
    [
        ("triangle", "The triangles.", True),
        ("triangle", "TRIANGLE", True),
        ("car", "cars?", True),
        ("car", "carrot", False),
        ("car", "Carrots.", False),
        ("hot dog", "hot dogs", True),
        ("hot dog", "hot", False),
        ("hot dog", "dog hot", False),
        ("traffic light", "A traffic-light.", True),
        ("skis", "ski", True),
        ("scissors", "a pair of scissors", True),
        ("Land vehicle", "land vehicles", True),
        ("person", "people", True),
        ("triangle", "triangle or square", True),  # hedging is caught only with a vocabulary
    ],
)
def test_name_match_without_vocabulary(gold, text, correct):
    score = score_answer("common", text, name_item(gold))
    assert (score.correct, score.score, score.parse_ok) == (correct, float(correct), True)


def test_name_parsed_is_the_normalized_prediction():
    assert score_answer("odd_one", "The Triangles!", name_item("triangle", "odd_one")).parsed == "the triangle"


VOCABULARY = ["triangle", "square", "car", "carrot", "glass", "wine glass", "dog", "hot dog"]


@pytest.mark.parametrize(
    ("gold", "text", "correct"),
    [
        ("triangle", "triangle or square", False),
        ("triangle", "Triangles, I think.", True),
        ("car", "car, not a carrot", False),
        ("glass", "glass", True),
        ("glass", "wine glass", False),
        ("wine glass", "wine glasses", True),  # its own token "glass" is no hedge
        ("hot dog", "a hot dog", True),
        ("dog", "hot dog", False),
    ],
)
def test_name_match_with_vocabulary(gold, text, correct):
    assert score_answer("common", text, name_item(gold), vocabulary=VOCABULARY).correct is correct


def test_queried_parent_is_no_hedge():
    item = name_item("Land vehicle", "odd_one", query=("Vehicle",))
    vocabulary = ["Vehicle", "Land vehicle", "Car", "Boat"]
    assert score_answer("odd_one", "The odd vehicle is the land vehicle.", item, vocabulary=vocabulary).correct
    assert not score_answer("odd_one", "land vehicle or boat", item, vocabulary=vocabulary).correct


@pytest.mark.parametrize("text", ["", None, "  ?! "])
def test_name_empty_prediction(text):
    assert score_answer("common", text, name_item("triangle")) == ItemScore(
        score=0.0, correct=False, parsed=None, parse_ok=False
    )


def test_unknown_task():
    message = "unknown task 'sorting'; known tasks: counting, listing, common, odd_one, presence"
    with pytest.raises(ValueError, match=f"^{message}$"):
        score_answer("sorting", "4", counting_item(4))
    with pytest.raises(ValueError, match=f"^{message}$"):
        aggregate("sorting", [])


# ---- aggregation -------------------------------------------------------------------------------------


def test_wilson_interval_by_hand():
    # 8/10, z = 1.959964, z^2 = 3.841459: denominator = 1 + z^2/10 = 1.384146,
    # centre = (0.8 + z^2/20) / 1.384146 = 0.992073 / 1.384146 = 0.716740,
    # half = z * sqrt(0.8 * 0.2 / 10 + z^2/400) / 1.384146 = 1.959964 * sqrt(0.025604) / 1.384146 = 0.226578.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.716740 - 0.226578, abs=2e-6)
    assert high == pytest.approx(0.716740 + 0.226578, abs=2e-6)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0
    assert wilson_interval(5, 5)[1] == 1.0


def test_aggregate_counting():
    answers = ["4", "four", "There are 4.", "5", "I cannot tell"]
    result = aggregate("counting", [score_answer("counting", a, counting_item(4)) for a in answers])
    low, high = wilson_interval(3, 5)
    assert result == {"accuracy": 0.6, "n": 5, "ci_low": low, "ci_high": high, "unparseable": 1}


def test_aggregate_listing_micro_averages_by_hand():
    scores = [
        # 1 hit of 2 predicted, 2 gold: P = R = F1 = 1/2
        score_answer("listing", "circle, square", listing_item("circle", "ring")),
        # 1 hit of 3 predicted, 1 gold: P = 1/3, R = 1, F1 = 1/2
        score_answer("listing", "triangle, ring, star", listing_item("triangle")),
        # exact: 3 hits of 3 predicted, 3 gold
        score_answer("listing", "circle and square and triangle", listing_item("circle", "square", "triangle")),
    ]
    result = aggregate("listing", scores)
    # pooled: 5 hits, 8 predicted, 6 gold -> P = 5/8, R = 5/6, F1 = 2 * 5 / (8 + 6) = 5/7
    assert result["micro_precision"] == pytest.approx(5 / 8)
    assert result["micro_recall"] == pytest.approx(5 / 6)
    assert result["micro_f1"] == pytest.approx(5 / 7)
    assert result["mean_item_f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == result["exact_set_accuracy"] == pytest.approx(1 / 3)
    assert (result["ci_low"], result["ci_high"]) == wilson_interval(1, 3)
    assert (result["n"], result["unparseable"]) == (3, 0)
    # bootstrap resamples of {0.5, 0.5, 1.0} have means in [0.5, 1.0]; a fixed seed gives the same interval
    assert 0.5 <= result["f1_ci_low"] < result["mean_item_f1"] < result["f1_ci_high"] <= 1.0
    assert aggregate("listing", scores) == result


def test_aggregate_listing_constant_f1_has_a_point_interval():
    scores = [score_answer("listing", "circle", listing_item("circle"))] * 4
    result = aggregate("listing", scores)
    assert (result["f1_ci_low"], result["f1_ci_high"]) == (1.0, 1.0)


def test_aggregate_without_items():
    result = aggregate("listing", [])
    assert math.isnan(result["accuracy"]) and math.isnan(result["micro_f1"]) and math.isnan(result["mean_item_f1"])
    intervals = (result["ci_low"], result["ci_high"], result["f1_ci_low"], result["f1_ci_high"])
    assert (result["n"], intervals) == (0, (0.0, 1.0, 0.0, 1.0))
    assert set(aggregate("common", [])) == {"accuracy", "n", "ci_low", "ci_high", "unparseable"}


@pytest.mark.parametrize("text, parsed, correct", [("yes", "yes", True), ("Yes, there is one.", "yes", True),
                                                    ("No, there is none.", "no", False), ("nope", None, False),
                                                    ("I see yesterday's shapes", None, False)])  # fmt: skip
def test_presence_yes_no(text, parsed, correct):
    s = score_answer("presence", text, {"answer": "yes"})
    assert (s.parsed, s.correct, s.parse_ok) == (parsed, correct, parsed is not None)
