"""Hyperparameter search (appendix B.5): `python -m leo_tf.search`, on Optuna.

space     the search space file: settings, ranges, scales; checked before any trial
study     the study (RDB storage, samplers, pruners) and the worker loop; each trial
          is a normal training run
report    the leaderboard, the best trial's flagfile, the plots
"""

__all__ = ["report", "space", "study"]
