"""Tests for leo_tf.bench.resources: the peak resident memory grows with what is held."""

import subprocess
import sys

from tests.paths import REPO

# In a fresh process (a test process's peak is already whatever earlier tests reached).
CHECK = """
import numpy as np
from leo_tf.bench import resources
before = resources.peak_rss_mb()
block = np.ones(64 * 2**20 // 8)  # 64 MB, every page written
print(before, resources.peak_rss_mb(), block.sum() == block.size)
"""


def test_peak_rss_grows_by_what_is_touched():
  result = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
  before, after, written = result.stdout.split()
  assert float(before) > 0 and written == "True"
  assert float(after) >= float(before) + 60  # 64 MiB more (ru_maxrss / 1024 is in MiB)
