"""English helpers shared by the question writer and the scorer.

The same rules serve both sides on purpose: a question says "How many {pluralize(name)} ...", and scoring
compares `normalize_phrase(prediction)` with `normalize_phrase(gold)`, so a model that echoes the plural
from the question, or answers in the singular, matches either way. `singularize` therefore does not have to
be good English; it has to map the singular and the plural of every category name to the same token
(`singularize(pluralize(w)) == singularize(w)`), applied to both sides alike.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

# Irregular singular -> plural. Looked up by whole word: "human" must not become "humen".
_IRREGULAR = {
    "person": "people", "man": "men", "woman": "women", "snowman": "snowmen", "child": "children",
    "mouse": "mice", "goose": "geese", "axe": "axes", "tooth": "teeth", "foot": "feet", "ox": "oxen", "die": "dice",
    "cactus": "cacti", "knife": "knives", "wife": "wives", "life": "lives", "leaf": "leaves",
    "loaf": "loaves", "wolf": "wolves", "calf": "calves", "half": "halves", "shelf": "shelves",
    "thief": "thieves", "scarf": "scarves",
}
_IRREGULAR_SINGULAR = {plural: singular for singular, plural in _IRREGULAR.items()}

# Same form in singular and plural; matched as a suffix so that "goldfish" and "reindeer" are covered.
_INVARIANT = ("sheep", "deer", "fish", "moose", "bison", "aircraft", "series", "species", "broccoli", "asparagus")

# Words that end in "s" in the singular (plus common function words, so that "this" is not read as a plural).
# Their plural, where they have one, adds "es": "lens" -> "lenses".
_SINGULAR_S = {
    "lens", "gas", "canvas", "atlas", "iris", "tennis", "rhinoceros", "christmas",
    "this", "his", "its", "was", "has", "yes", "does",
}
# Nouns in "-ie" whose plural "-ies" must not become "-y" ("ties" -> "tie", not "ty").
_IE_WORDS = {"tie", "necktie", "pie", "magpie", "cookie", "movie", "brownie", "zombie"}
# Nouns in "-o" whose plural adds "es"; every other "-o" noun adds "s" ("pianos", "kangaroos").
_O_ES = {"tomato", "potato", "mango", "hero", "echo", "volcano", "mosquito", "domino", "torpedo", "buffalo"}


def _same_case(original: str, new: str) -> str:
    """`new` (lower case) with the capitalisation of `original` kept where they share a prefix."""
    k = len(os.path.commonprefix([original.lower(), new]))
    out = original[:k] + new[k:]
    return out[:1].upper() + out[1:] if original[:1].isupper() else out


def _regular_plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")) or word in _O_ES:
        return word + "es"
    return word + "s"


def singularize(word: str) -> str:
    """The singular of one word, or the word itself when it does not look like a plural."""
    lower = word.lower()
    if lower in _IRREGULAR_SINGULAR:
        return _same_case(word, _IRREGULAR_SINGULAR[lower])
    if (
        len(lower) <= 2
        or not lower.endswith("s")
        or lower.endswith(("ss", "us") + _INVARIANT)
        or lower in _SINGULAR_S
    ):
        return word
    if lower.endswith("es") and lower[:-2] in _SINGULAR_S:
        stem = lower[:-2]
    elif lower.endswith("ies"):
        stem = lower[:-1] if lower[:-1] in _IE_WORDS else lower[:-3] + "y"
    elif (
        lower.endswith(("sses", "shes", "ches", "xes"))
        or (lower.endswith("uses") and not lower.endswith("ouses"))  # buses, but houses
        or lower[:-2] in _O_ES
    ):
        stem = lower[:-2]
    else:
        stem = lower[:-1]
    return _same_case(word, stem)


def _pluralize_word(word: str) -> str:
    lower = word.lower()
    if lower.endswith(_INVARIANT) or lower in _IRREGULAR_SINGULAR:
        return word
    if lower in _IRREGULAR:
        return _same_case(word, _IRREGULAR[lower])
    single = singularize(lower)
    if single != lower and _regular_plural(single) == lower:
        return word  # already plural: "skis", "scissors", "glasses", "shorts"
    return _same_case(word, _regular_plural(lower))


@lru_cache(maxsize=65_536)  # a few thousand category names, asked for on every question
def pluralize(name: str) -> str:
    """The plural of a category name for question templates, keeping its capitalisation.

    The head noun is pluralized: the last word, or the word before "of" ("chest of drawers" ->
    "chests of drawers").
    """
    head, of, rest = name.partition(" of ")
    if of:
        return pluralize(head) + of + rest
    prefix, space, last = name.rpartition(" ")
    return prefix + space + _pluralize_word(last)


def normalize_phrase(text: str) -> tuple[str, ...]:
    """Lower-cased, singular word tokens of `text`, without punctuation.

    Apostrophes are dropped ("person's" -> "persons" -> "person"); every other non-word character,
    underscore included, separates words ("hot-dog" and "sports_ball" are two words).
    """
    text = re.sub(r"['\u2019]", "", text.lower())
    return tuple(singularize(token) for token in re.sub(r"[\W_]+", " ", text).split())


_UNITS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_VALUES = {word: value for value, word in enumerate(_UNITS)} | {"none": 0}
_TENS_VALUES = {word: 20 + 10 * i for i, word in enumerate(_TENS)}

# One alternative per way of writing a number; the first match in the text wins.
_NUMBER = re.compile(
    r"(?P<minus>(?<![\w-])-)?(?<![\w.])(?P<digits>\d+(?:,\d{3})*)(?P<fraction>\.\d+)?(?!\w)"
    rf"|\b(?P<tens>{'|'.join(_TENS)})(?:[\s-]+(?P<unit>{'|'.join(_UNITS[1:10])}))?\b"
    rf"|\b(?P<word>{'|'.join(_WORD_VALUES)})\b",
    re.IGNORECASE,
)


def parse_count(text: str) -> int | None:
    """The first number in `text` as a count, or None when there is none or it is not a count.

    Digits ("4", "1,000") and words up to ninety-nine ("twelve", "twenty-one", "twenty one"; "zero" and
    "none" are 0) count. "no" does not: "No, there are 3" answers 3. Word boundaries keep "someone" from
    reading as 1. Only the first number counts, so a hedge ("four or five") is read as its first number.
    A first number that is negative or has a fractional part ("4.5") is no count, and gives None rather than
    falling through to a later number: the answer is then scored wrong, and reported as unparseable.
    """
    match = _NUMBER.search(text)
    if match is None:
        return None
    if match["digits"]:
        if match["minus"] or match["fraction"]:
            return None
        return int(match["digits"].replace(",", ""))
    if match["tens"]:
        return _TENS_VALUES[match["tens"].lower()] + (_WORD_VALUES[match["unit"].lower()] if match["unit"] else 0)
    return _WORD_VALUES[match["word"].lower()]


def number_word(n: int) -> str:
    """0..99 in words ("twenty-one"), the inverse of parse_count on that range; digits beyond it."""
    if 0 <= n < 20:
        return _UNITS[n]
    if 20 <= n < 100:
        tens, unit = divmod(n, 10)
        return _TENS[tens - 2] + (f"-{_UNITS[unit]}" if unit else "")
    return str(n)
