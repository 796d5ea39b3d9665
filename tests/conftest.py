"""Test-suite settings shared by every test."""

import os

from hypothesis import settings

# Property tests are derandomized unless asked otherwise: the same examples every run, so CI cannot fail at
# random. Every failure ever found is pinned with @example next to its test. Explore new examples locally
# with HYPOTHESIS_PROFILE=explore (random, more examples).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
