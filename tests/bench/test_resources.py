"""Tests for leo_tf.bench.resources: the reported peak is never below what is resident."""

import numpy as np

from leo_tf.bench import resources


def _status_mb(field):
  """A memory field of /proc/self/status (VmRSS, VmHWM), in MiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0  # kB
  raise AssertionError(f"no {field} in /proc/self/status")


def test_peak_rss_covers_what_is_resident_now():
  # ru_maxrss (what peak_rss_mb reads) also counts the peak of a process this one
  # was forked from, so only a lower bound can be asserted inside a test runner:
  # the peak is at least the resident memory, with a fresh 64 MiB block in it.
  block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page written
  resident = _status_mb("VmRSS")
  assert block.sum() == block.size and resident >= 64
  assert resources.peak_rss_mb() >= resident - 1  # MiB, rounding of kB
  assert resources.peak_rss_mb() >= _status_mb("VmHWM") - 1
