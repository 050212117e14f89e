"""English helpers: plurals for question templates, normalization and number parsing for scoring."""

from __future__ import annotations

import pytest

from mimic_pipeline.core.text import normalize_phrase, parse_count, pluralize, singularize

PLURALS = [
    ("triangle", "triangles"), ("bus", "buses"), ("box", "boxes"), ("glass", "glasses"), ("knife", "knives"),
    ("leaf", "leaves"), ("person", "people"), ("man", "men"), ("woman", "women"), ("child", "children"),
    ("mouse", "mice"), ("goose", "geese"), ("tooth", "teeth"), ("foot", "feet"), ("sheep", "sheep"),
    ("deer", "deer"), ("fish", "fish"), ("skis", "skis"), ("scissors", "scissors"), ("berry", "berries"),
    ("toy", "toys"), ("tie", "ties"), ("cookie", "cookies"), ("tomato", "tomatoes"), ("piano", "pianos"),
    ("bench", "benches"), ("toothbrush", "toothbrushes"), ("horse", "horses"), ("lens", "lenses"),
    ("axe", "axes"), ("human", "humans"), ("goldfish", "goldfish"),
    ("traffic light", "traffic lights"), ("wine glass", "wine glasses"), ("hot dog", "hot dogs"),
    ("sports ball", "sports balls"), ("chest of drawers", "chests of drawers"),
    ("salt and pepper shakers", "salt and pepper shakers"),
]


@pytest.mark.parametrize(("singular", "plural"), PLURALS)
def test_pluralize(singular, plural):
    assert pluralize(singular) == plural


@pytest.mark.parametrize(
    ("name", "plural"),
    [("Land vehicle", "Land vehicles"), ("Person", "People"), ("Knife", "Knives"), ("Bus", "Buses"),
     ("TV", "TVs"), ("Glasses", "Glasses")],
)
def test_pluralize_keeps_capitalisation(name, plural):
    assert pluralize(name) == plural


@pytest.mark.parametrize(("singular", "plural"), PLURALS)
def test_singular_and_plural_normalize_alike(singular, plural):
    # The property scoring relies on: a model answering in either form matches the gold name.
    assert normalize_phrase(plural) == normalize_phrase(singular)


@pytest.mark.parametrize(
    ("plural", "singular"),
    [("triangles", "triangle"), ("buses", "bus"), ("boxes", "box"), ("glasses", "glass"), ("knives", "knife"),
     ("leaves", "leaf"), ("people", "person"), ("men", "man"), ("women", "woman"), ("children", "child"),
     ("mice", "mouse"), ("geese", "goose"), ("teeth", "tooth"), ("feet", "foot"), ("berries", "berry"),
     ("toys", "toy"), ("ties", "tie"), ("houses", "house"), ("tomatoes", "tomato"), ("shoes", "shoe"),
     ("skis", "ski"), ("scissors", "scissor"), ("Buses", "Bus"), ("People", "Person")],
)
def test_singularize_plurals(plural, singular):
    assert singularize(plural) == singular


@pytest.mark.parametrize(
    "word", ["bus", "glass", "grass", "lens", "status", "cactus", "series", "species", "sheep", "fish", "tennis",
             "triangle", "car", "is", "this"],
)
def test_singularize_leaves_singulars_alone(word):
    assert singularize(word) == word


def test_normalize_phrase():
    assert normalize_phrase("  The TRIANGLES.\n") == ("the", "triangle")
    assert normalize_phrase("Hot-dogs!") == ("hot", "dog")
    assert normalize_phrase("sports_ball, person's") == ("sport", "ball", "person")
    assert normalize_phrase("...") == ()


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("4", 4),
        ("There are 4.", 4),
        ("4 zebras", 4),
        ("12,", 12),
        ("1,000", 1000),
        ("four", 4),
        ("Four.", 4),
        ("twelve", 12),
        ("twenty", 20),
        ("twenty-one", 21),
        ("twenty one", 21),
        ("Ninety-Nine", 99),
        ("zero", 0),
        ("none", 0),
        ("There are none.", 0),
        ("four or five", 4),
        ("3-4 zebras", 3),
        ("I think there are three triangles in total", 3),
        ("No, there are 3", 3),
        ("Someone counted two", 2),
        ("The 2nd image has 5", 5),
    ],
)
def test_parse_count(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["", "no", "No.", "anyone", "someone", "a few", "4.5", "4.5 zebras", "-3", "seventh"])
def test_parse_count_none(text):
    # A first number that is no count (fractional, negative) makes the answer unparseable, not the next number.
    assert parse_count(text) is None
