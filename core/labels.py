"""What a Stanford Cars style label says: "[NNN_]Make Model Body Year" -> make, model, year.

Torch-free: the gallery's metadata (clients/) and the make-disjoint class split (train/) both
read labels through this one function. Folder names spell the same class in several ways
("Rolls-Royce Phantom Sedan 2012", "Rolls_Royce_Phantom_Sedan_2012", "Rolls-Royce-Phantom-Sedan-2012"),
so a make is recognised by its words whatever separates them, and always reported in one spelling.
"""

from __future__ import annotations

import re
from typing import Any

# The 49 makes of Stanford Cars, spelled as its class names spell them. A make not listed here is
# taken to be the label's first word.
STANFORD_CARS_MAKES = (
    "AM General", "Acura", "Aston Martin", "Audi", "BMW", "Bentley", "Bugatti", "Buick", "Cadillac", "Chevrolet",
    "Chrysler", "Daewoo", "Dodge", "Eagle", "FIAT", "Ferrari", "Fisker", "Ford", "GMC", "Geo",
    "HUMMER", "Honda", "Hyundai", "Infiniti", "Isuzu", "Jaguar", "Jeep", "Lamborghini", "Land Rover", "Lincoln",
    "MINI", "Maybach", "Mazda", "McLaren", "Mercedes-Benz", "Mitsubishi", "Nissan", "Plymouth", "Porsche", "Ram",
    "Rolls-Royce", "Scion", "Spyker", "Suzuki", "Tesla", "Toyota", "Volkswagen", "Volvo", "smart",
)  # fmt: skip

# Each make as a pattern of its words with any separator between them, followed by the model;
# longest first, so that a make is never cut short by a shorter one that begins the same way.
_MAKE_PATTERNS = [
    (make, re.compile(r"[-\s]+".join(map(re.escape, re.split(r"[-\s]", make))) + r"[-\s]+(?P<model>.+)", re.I))
    for make in sorted(STANFORD_CARS_MAKES, key=len, reverse=True)
]


def label_words(label: str) -> list[str]:
    """The words of a label, without its "NNN_" class number. Underscores and spaces separate
    words; hyphens do too, but only in a label that has neither (else "MP4-12C" stays one word)."""
    text = re.sub(r"^\d+[_\s-]", "", label.strip())
    separator = r"[_\s]+" if re.search(r"[_\s]", text) else r"-+"
    return [word for word in re.split(separator, text) if word]


def parse_label(label: str) -> dict[str, Any]:
    """make / model / year of a Stanford Cars style label; {} when it has no year at its end."""
    words = label_words(label)
    if len(words) < 3 or not re.fullmatch(r"(19|20)\d\d", words[-1]):
        return {}
    text = " ".join(words[:-1])
    for make, pattern in _MAKE_PATTERNS:
        found = pattern.fullmatch(text)
        if found:
            return {"make": make, "model": found["model"], "year": int(words[-1])}
    return {"make": words[0], "model": " ".join(words[1:-1]), "year": int(words[-1])}


def make_of(label: str) -> str:
    """The make of a label, or the label itself when it names none (its own group)."""
    return parse_label(label).get("make", label)
