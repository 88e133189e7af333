"""Typed, frozen configuration for the model, the data and the outer loop.

Flags are read only in entry points (`leo_tf.train`); the library takes these
objects. Defaults are those of the original code (deepmind/leo, config.py); each
field says in one line what it is and, where there is one, its symbol in the
paper.
"""

from __future__ import annotations

import dataclasses
import math

KL_ESTIMATORS = ("sample", "analytic")
# How meta-training samples a class's weights for K > 1 (identical for K = 1 and in
# evaluation, which takes the means): "per_copy", the original's, samples a code and
# then a weight vector per support copy and averages the K vectors; "class_mean"
# samples the Gaussian of that average directly (one draw per class: the same
# distribution for the first decoding, different latent-step noise from then on).
WEIGHT_SAMPLINGS = ("per_copy", "class_mean")
DTYPES = ("float32", "float64")

# Table 2 of the paper, as switches of one model rather than forks of it.
ABLATIONS = (
    "leo",  # the full model
    "conditional_generator_only",  # no latent adaptation, no fine-tuning
    "conditional_generator_finetuning",  # no latent adaptation, + fine-tuning
    "random_prior",  # latents drawn from N(0, I) instead of the encoder
    "deterministic",  # means instead of samples (no sampling, no KL)
    "no_finetuning",  # latent adaptation only
)


OBJECTIVE_WEIGHTS = ("kl_weight", "encoder_penalty_weight", "l2_penalty_weight",
                     "orthogonality_penalty_weight")  # beta, gamma, lambda_1, lambda_2
UNROLL_LENGTHS = ("inner_unroll_length", "finetuning_unroll_length")


# Checks shared by every configuration dataclass of the project (model, data,
# outer loop, baselines, regression): each raises ValueError naming the field.


def check_at_least(config, minimum: int, *names: str, note: str = "") -> None:
  """Every named field of `config` must be >= minimum (`note` explains the bound), and finite."""
  for name in names:
    value = getattr(config, name)
    if not value >= minimum:  # NaN included
      raise ValueError(f"{name} must be >= {minimum}{note}, got {value}.")
    _check_finite(name, value)


def check_positive(config, *names: str) -> None:
  """Every named field of `config` must be > 0, and finite."""
  for name in names:
    value = getattr(config, name)
    if not value > 0:
      raise ValueError(f"{name} must be > 0, got {value}.")
    _check_finite(name, value)


def _check_finite(name: str, value) -> None:
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value}.")


def check_fraction(config, name: str) -> None:
  """The named field must be in [0, 1) (a dropout rate, an offset)."""
  value = getattr(config, name)
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value}.")


def check_choice(config, name: str, choices: tuple[str, ...]) -> None:
  """The named field must be one of `choices`."""
  value = getattr(config, name)
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def check_inner_model(config) -> None:
  """What every LEO-style model configuration shares: unroll lengths, weights, estimator, dtype."""
  check_at_least(config, 0, *UNROLL_LENGTHS, note=" (0 switches that loop off)")
  check_at_least(config, 0, *OBJECTIVE_WEIGHTS)
  check_choice(config, "kl_estimator", KL_ESTIMATORS)
  check_choice(config, "dtype", DTYPES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The LEO model: encoder, relation network, decoder, inner loops, objective."""

  embedding_dim: int = 640  # D, size of the pre-trained features (WRN-28-10: 640)
  num_latents: int = 64  # n_z, size of the latent code
  inner_unroll_length: int = 5  # latent-space adaptation steps (0: no adaptation)
  finetuning_unroll_length: int = 5  # parameter-space fine-tuning steps (0: none)
  inner_lr_init: float = 1.0  # initial alpha, learned per latent dimension
  finetuning_lr_init: float = 0.001  # initial eta, learned per embedding dimension
  dropout_rate: float = 0.5  # dropout on the features during meta-training
  kl_weight: float = 0.001  # beta
  encoder_penalty_weight: float = 1e-9  # gamma
  l2_penalty_weight: float = 1e-8  # lambda_1
  orthogonality_penalty_weight: float = 1e-3  # lambda_2
  max_weights_stddev: float = 0.0  # soft bound on sigma^d of the weights (0: none, as the original)
  kl_estimator: str = "sample"  # "sample" (the original's) or "analytic" (TFP)
  weight_sampling: str = "per_copy"  # WEIGHT_SAMPLINGS: per support copy (the original's) or class mean
  deterministic: bool = False  # ablation: use means, never sample
  random_prior: bool = False  # ablation: latents from the prior, not the encoder
  dtype: str = "float32"  # "float64" for gradient checks

  def __post_init__(self):
    check_at_least(self, 1, "embedding_dim", "num_latents")
    check_fraction(self, "dropout_rate")
    check_inner_model(self)
    check_choice(self, "weight_sampling", WEIGHT_SAMPLINGS)
    if self.max_weights_stddev and not (
        self.max_weights_stddev > math.sqrt(2.0 / (self.embedding_dim + 2))):
      raise ValueError(
          f"max_weights_stddev must be 0 (no bound) or above the weights' stddev at u = 0, "
          f"sqrt(2 / (N + D)) <= {math.sqrt(2.0 / (self.embedding_dim + 2)):.4g}; got "
          f"{self.max_weights_stddev} (e.g. 10).")

  def with_ablation(self, ablation: str) -> "ModelConfig":
    """Returns this configuration switched to one of the paper's table 2 rows."""
    if ablation not in ABLATIONS:
      raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}.")
    changes = {
        "leo": {},
        "conditional_generator_only": dict(inner_unroll_length=0, finetuning_unroll_length=0),
        "conditional_generator_finetuning": dict(inner_unroll_length=0),
        "random_prior": dict(random_prior=True),
        "deterministic": dict(deterministic=True),
        "no_finetuning": dict(finetuning_unroll_length=0),
    }[ablation]
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the embeddings are and what episodes to draw from them."""

  data_path: str = "data/embeddings"  # folder holding <dataset_name>/<crop>/<split>_embeddings.pkl
  dataset_name: str = "miniImageNet"  # miniImageNet, tieredImageNet, or any folder in that layout
  embedding_crop: str = "center"  # center or multiview (miniImageNet only)
  train_on_val: bool = False  # meta-train on train + val
  num_classes: int = 5  # N, as in N-way
  num_tr_examples_per_class: int = 1  # K, as in K-shot
  num_val_examples_per_class: int = 15  # V, queries per class in meta-training

  def __post_init__(self):
    if self.num_classes < 2:
      raise ValueError(f"num_classes (N) must be >= 2, got {self.num_classes}.")
    if self.num_tr_examples_per_class < 1:
      raise ValueError(
          f"num_tr_examples_per_class (K) must be >= 1, got {self.num_tr_examples_per_class}.")
    if self.num_val_examples_per_class < 1:
      raise ValueError(
          f"num_val_examples_per_class (V) must be >= 1, got {self.num_val_examples_per_class}.")


@dataclasses.dataclass(frozen=True)
class OuterConfig:
  """The outer (meta-training) loop: optimiser, clipping, batches, checkpoints."""

  metatrain_batch_size: int = 12  # tasks per meta-training step
  metavalid_batch_size: int = 200  # tasks per meta-validation batch
  metatest_batch_size: int = 200  # tasks per meta-test batch
  num_steps_limit: int = 100_000  # meta-training steps
  outer_lr: float = 1e-4  # Adam learning rate
  gradient_threshold: float = 0.1  # clip each gradient by value (<= 0: off)
  gradient_norm_threshold: float = 0.1  # then clip each gradient by norm (<= 0: off)
  checkpoint_path: str = "runs/leo"  # checkpoints, summaries and results
  checkpoint_steps: int = 1000  # meta-validate and checkpoint every so many steps
  num_metavalid_tasks: int = 2000  # tasks per meta-validation (the original: 10 x 200)
  num_metatest_tasks: int = 10_000  # tasks in the final meta-test (the original's)
  early_stopping_patience: int = 0  # stop after so many evaluations without a better
                                   # meta-validation accuracy (0: never)
  seed: int = 0  # seeds the model initialisation, the sampling and the episodes
  jit_compile: bool = True  # compile the meta-training step with XLA

  def __post_init__(self):
    check_at_least(self, 1, "metatrain_batch_size", "metavalid_batch_size",
                   "metatest_batch_size", "checkpoint_steps", "num_metavalid_tasks",
                   "num_metatest_tasks")
    check_at_least(self, 0, "num_steps_limit", "early_stopping_patience")
    check_positive(self, "outer_lr")
