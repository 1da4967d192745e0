"""Hypothesis profiles for the property tests (``tests/test_*_properties.py``).

``ci`` (``HYPOTHESIS_PROFILE=ci``, or any environment that sets ``CI``): derandomized, so every run tries
the same examples and a red build is a real regression, not a lucky draw; no example database. ``dev``,
elsewhere: new examples each run, failures remembered in ``.hypothesis/`` and tried first next time.
Example counts stay with each test (``@settings``): each file runs in a few seconds either way.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
