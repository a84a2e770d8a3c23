"""End to end (slow): the README's Python example runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_example_attacks_the_photos_to_the_least_likely_class():
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # the project's own README, not user data
    x, x_adv, target, classifier = scope["x"], scope["x_adv"], scope["target"], scope["classifier"]
    assert scope["maps"].shape == (len(x), 224, 224)
    logits = classifier.predict(x_adv)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert (probs[np.arange(len(x)), target] >= 0.9999 - 1e-4).mean() >= 0.8
    assert x_adv.min() >= 0 and x_adv.max() <= 1
