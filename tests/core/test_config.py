"""leo_tf.core.config: the shared field checks and the messages they give.

Each check raises ValueError naming the field, its bound and the value given.
"""

import types

import pytest

from leo_tf.core import config


@pytest.mark.parametrize("make,message", [
    (lambda: config.ModelConfig(dropout_rate=1.5), r"dropout_rate must be in \[0, 1\), got 1.5"),
    (lambda: config.ModelConfig(dropout_rate=-0.1),
     r"dropout_rate must be in \[0, 1\), got -0.1"),
    (lambda: config.OuterConfig(outer_lr=0), r"outer_lr must be > 0, got 0\."),
    (lambda: config.ModelConfig(inner_unroll_length=-1),
     r"inner_unroll_length must be >= 0 \(0 switches that loop off\), got -1\."),
    (lambda: config.ModelConfig(finetuning_unroll_length=-2),
     r"finetuning_unroll_length must be >= 0 \(0 switches that loop off\), got -2\."),
    (lambda: config.ModelConfig(embedding_dim=0), r"embedding_dim must be >= 1, got 0\."),
    (lambda: config.ModelConfig(kl_weight=-0.001), r"kl_weight must be >= 0, got -0.001\."),
    (lambda: config.ModelConfig(kl_estimator="exact"),
     r"kl_estimator must be one of \('sample', 'analytic'\), got 'exact'\."),
    (lambda: config.ModelConfig(dtype="float16"),
     r"dtype must be one of \('float32', 'float64'\), got 'float16'\."),
    (lambda: config.OuterConfig(metatrain_batch_size=0),
     r"metatrain_batch_size must be >= 1, got 0\."),
    (lambda: config.OuterConfig(num_steps_limit=-1), r"num_steps_limit must be >= 0, got -1\."),
])
def test_configs_report_the_field_the_bound_and_the_value(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_the_bounds_themselves_are_allowed():
  config.ModelConfig(dropout_rate=0.0, inner_unroll_length=0, finetuning_unroll_length=0,
                     kl_weight=0.0, embedding_dim=1, num_latents=1)
  config.OuterConfig(num_steps_limit=0, early_stopping_patience=0, metatrain_batch_size=1,
                     outer_lr=1e-12)


def test_shared_checks_on_any_object():
  fields = types.SimpleNamespace(a=2, b=0, c=float("nan"), rate=1.0, name="x")
  config.check_at_least(fields, 2, "a")  # the minimum passes
  with pytest.raises(ValueError, match=r"^b must be >= 1 \(why\), got 0\.$"):
    config.check_at_least(fields, 1, "a", "b", note=" (why)")  # names the first failing field
  config.check_positive(fields, "a")
  with pytest.raises(ValueError, match=r"^b must be > 0, got 0\.$"):
    config.check_positive(fields, "a", "b")
  with pytest.raises(ValueError, match=r"^c must be > 0, got nan\.$"):  # NaN is not > 0
    config.check_positive(fields, "c")
  with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\), got 1\.0\.$"):
    config.check_fraction(fields, "rate")
  config.check_choice(fields, "name", ("x", "y"))
  with pytest.raises(ValueError, match=r"^name must be one of \('y',\), got 'x'\.$"):
    config.check_choice(fields, "name", ("y",))
