from __future__ import annotations

import pytest

from glossrec.generate import postprocess


@pytest.mark.parametrize("raw, expected", [
    ("Title: Red Lipstick", "Title: Red Lipstick"),
    ("Title: Red Lipstick\nTitle: Blue Gloss\n", "Title: Red Lipstick"),
    ("  Title: Red Lipstick  \n\nmore", "Title: Red Lipstick"),
    ("\n\nTitle: Mascara\nrest", "Title: Mascara"),      # leading blank lines skipped
    ("Title: Comb\r\nTitle: Brush", "Title: Comb"),
    ("Title: Gel\rjunk", "Title: Gel"),
    ("", ""),
    ("   \n \n", ""),
    ("no newline at all", "no newline at all"),
])
def test_first_item_line_stripped(raw: str, expected: str) -> None:
    assert postprocess(raw) == expected
