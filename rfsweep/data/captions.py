"""Class captions as the paper builds them for ImageNet (Sec. 5.1): "a photo of a <name>", with the
name drawn at random among the class's synonyms. The draw is a pure function of (seed, index, epoch) so
that a resumed run sees exactly the captions an uninterrupted run would have seen."""

from __future__ import annotations

import random

DIGIT_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("zero", "nought", "0", "digit zero", "number zero"),
    ("one", "1", "digit one", "number one", "single"),
    ("two", "2", "digit two", "number two", "pair"),
    ("three", "3", "digit three", "number three", "trio"),
    ("four", "4", "digit four", "number four", "quartet"),
    ("five", "5", "digit five", "number five", "quintet"),
    ("six", "6", "digit six", "number six", "half dozen"),
    ("seven", "7", "digit seven", "number seven", "septet"),
    ("eight", "8", "digit eight", "number eight", "octet"),
    ("nine", "9", "digit nine", "number nine", "nonet"),
)


def class_caption(name: str) -> str:
    return f"a photo of a {name}"


def draw(choices: tuple, seed: int, index: int, epoch: int = 0):
    """One of an item's alternatives (a class's synonyms, an image's captions) for a pass over the data. The choice
    depends on (seed, index, epoch) and the number of alternatives only, so pre-encoded data, which keeps every
    alternative's embedding, redraws exactly what online encoding draws."""
    return random.Random(f"{seed}/{epoch}/{index}").choice(choices)
