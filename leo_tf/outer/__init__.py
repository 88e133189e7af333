"""The outer loop, the same for every meta-learner.

learner      the MetaLearner contract and how evaluations are scored (Score)
step         the one outer step: meta-gradient, NaN/Inf fallback, clipping, Adam
distribute   the same step over tf.distribute replicas and workers
checkpoints  a run's state: latest and best checkpoints, the resume check
progress     the progress line and TensorBoard scalars
fit          the one fit loop: steps, summaries, meta-validation, early stopping
"""

__all__ = ["checkpoints", "distribute", "fit", "learner", "progress", "step"]
