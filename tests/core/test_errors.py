"""Library messages become one readable line: no colour codes, never cut mid-word."""

from core.errors import one_line


def test_colour_codes_and_newlines_are_removed():
    assert one_line("\x1b[31mError:\x1b[0m bad\n  weights\tfile") == "Error: bad weights file"


def test_a_long_message_ends_at_a_sentence_or_a_word_never_inside_one():
    long = "Weights only load failed. " + "This file can still be loaded if you trust it " * 10
    assert one_line(long) == "Weights only load failed."
    words = "failed finding central directory of the archive " * 10
    cut = one_line(words, limit=60)
    assert cut.endswith(" …") and len(cut) <= 62
    assert words.startswith(cut[:-2]) and words[len(cut) - 2] == " "  # the cut falls between words
