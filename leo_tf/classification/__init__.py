"""Few-shot classification on fixed features: LEO and its baselines.

leo            LEO, the whole inner model (algorithm 1)
metasgd        Meta-SGD on the same features
prototypes     the nearest class mean on the same features
evaluation     meta-validation and meta-test accuracy over tasks
experiment     a classification run: train (outer.fit), then meta-test
latent_figure  figure 4: the latent codes before and after adaptation
"""

__all__ = ["evaluation", "experiment", "latent_figure", "leo", "metasgd", "prototypes"]
