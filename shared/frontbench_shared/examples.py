"""Example digits shipped with the package: real held-out images of the data set.

The PNG files are written by `frontbench_backend.data.write_examples` from the
held-out split the model was not trained on, and a test checks that they still
match it. Frontends offer them as one-click examples, and the load tests send
them and check the predicted label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EXAMPLES_DIR = Path(__file__).with_name("example_digits")
_NAME = re.compile(r"^digit-(?P<label>\d)-(?P<index>\d+)\.png$")


@dataclass(frozen=True)
class Example:
    """One example image and the label a correct model predicts for it."""

    label: str
    index: int
    path: Path

    def read_bytes(self) -> bytes:
        """Return the PNG file's bytes."""
        return self.path.read_bytes()


def list_examples(directory: Path = EXAMPLES_DIR) -> list[Example]:
    """Return the example digits in `directory`, sorted by label."""
    found = []
    for path in directory.glob("digit-*.png"):
        match = _NAME.match(path.name)
        if match:
            found.append(Example(match["label"], int(match["index"]), path))
    return sorted(found, key=lambda example: (example.label, example.index))
