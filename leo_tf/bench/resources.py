"""What the benchmarks measure of the process itself."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
  """This process's peak resident memory so far (ru_maxrss), in MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
