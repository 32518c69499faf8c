"""What a Stanford Cars style label says: "[NNN_]Make Model Body Year" -> make, model, year.

Torch-free: the gallery's metadata (clients/) and the make-disjoint class split (train/) both
read labels through this one function.
"""

from __future__ import annotations

import re
from typing import Any

# Makes of more than one word in Stanford Cars; any other make is the label's first word.
MULTI_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover", "Rolls-Royce", "Mercedes-Benz", "Ram C/V")


def parse_label(label: str) -> dict[str, Any]:
    """make / model / year of a Stanford Cars style label; {} when it has no year at its end."""
    words = re.sub(r"^\d+_", "", label).replace("_", " ").split()
    if len(words) < 3 or not re.fullmatch(r"(19|20)\d\d", words[-1]):
        return {}
    text = " ".join(words[:-1])
    make = next((m for m in MULTI_WORD_MAKES if text.startswith(m + " ")), words[0])
    return {"make": make, "model": text[len(make) :].strip(), "year": int(words[-1])}


def make_of(label: str) -> str:
    """The make of a label, or the label itself when it names none (its own group)."""
    return parse_label(label).get("make", label)
