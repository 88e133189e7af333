"""What the benchmarks measure of the process itself."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
  """This process's peak resident memory so far (ru_maxrss), in MiB.

  On Linux ru_maxrss also counts the peak of the process this one was forked
  from, so each benchmark case runs in a subprocess of a small parent (the
  benchmark's own driver, which never imports TensorFlow).
  """
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
