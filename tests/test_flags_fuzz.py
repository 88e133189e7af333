"""Fuzzing the training command's flags with Hypothesis: combinations the configuration refuses.

Each example sets one to three flags to values the configuration must refuse (below a
minimum, outside [0, 1), NaN or infinite, not a number, not one of the choices) among
up to four others set to valid random values, for classification or regression, and
runs `python -m leo_tf.train`'s main in this process (absl's FLAGS parsed as app.run
parses them). Each must exit with status 2 and a one-line message naming one of the
refused flags as typed, and the --helpfull hint, with no file written: the run folder,
results folder and export folder stay absent, and training is never reached.
Seeded (derandomize), bounded (max_examples), no example database.
"""

import os

import pytest
from absl import flags
from hypothesis import HealthCheck, example, given, settings, strategies as st

from leo_tf import train
from leo_tf.outer import progress

FLAGS = flags.FLAGS
NUM_EXAMPLES = 200
NAN, INF = float("nan"), float("inf")
NOT_FINITE = st.sampled_from([NAN, INF, -INF])


def _below(minimum):
  """Integers below `minimum`, or text that is not an integer."""
  return st.one_of(st.integers(-10**9, minimum - 1), st.sampled_from(["five", "2.5", ""]))


def _not_positive():
  return st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(NAN), st.just(INF))


def _negative_or_not_finite():
  return st.one_of(st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=True),
                   NOT_FINITE)


def _not_a_fraction():
  return st.one_of(st.floats(min_value=1.0, allow_nan=False), st.floats(max_value=-1e-300),
                   st.just(NAN))


# Flag -> values the configuration refuses, for either problem.
REFUSED = {
    "num_classes": _below(2), "num_tr_examples_per_class": _below(1),
    "num_val_examples_per_class": _below(1), "inner_unroll_length": _below(0),
    "finetuning_unroll_length": _below(0), "num_latents": _below(1),
    "embedding_dim": _below(1), "metatrain_batch_size": _below(1),
    "metavalid_batch_size": _below(1), "metatest_batch_size": _below(1),
    "num_steps_limit": _below(0), "checkpoint_steps": _below(1),
    "early_stopping_patience": _below(0), "num_metavalid_tasks": _below(1),
    "num_metatest_tasks": _below(1), "outer_lr": _not_positive(),
    "dropout_rate": _not_a_fraction(), "kl_weight": _negative_or_not_finite(),
    "encoder_penalty_weight": _negative_or_not_finite(),
    "l2_penalty_weight": _negative_or_not_finite(),
    "orthogonality_penalty_weight": _negative_or_not_finite(),
    "max_weights_stddev": st.one_of(st.floats(1e-6, 0.05), st.floats(-1e6, -1e-6),
                                    st.just(NAN)),
    "kl_estimator": st.sampled_from(["", "exact", "SAMPLE"]),
    "ablation": st.sampled_from(["none", "LEO", "random"]),
    "strategy": st.sampled_from(["tpu", "Mirrored"]),
}
# Only with --problem=regression (its own configuration's checks).
REFUSED_REGRESSION = {
    "regression_num_samples": _below(1), "regression_max_params_stddev": _not_positive(),
    "regression_latent_clip": _not_positive(),
    "regression_params_stddev_offset": _not_a_fraction(),
    "regression_maml_inner_steps": _below(0), "regression_maml_steps_ratio": _not_positive(),
    "regression_maml_outer_lr": _not_positive(), "regression_maml_batch_size": _below(1),
    "regression_num_eval_points": _below(1), "regression_num_eval_samples": _below(1),
    "regression_num_valid_samples": _below(2), "regression_eval_seed": _below(0),
}
# Flag -> valid values that do not interact with the refused ones.
ACCEPTED = {
    "seed": st.integers(0, 10**6), "summary_steps": st.integers(1, 100),
    "progress": st.sampled_from(["true", "false"]), "jit_compile": st.sampled_from(["true",
                                                                                 "false"]),
    "gradient_threshold": st.floats(-1.0, 1.0), "inner_lr_init": st.floats(0.01, 10.0),
    "eval_chunk_mb": st.integers(1, 1024), "weight_sampling": st.sampled_from(["per_copy",
                                                                             "class_mean"]),
    "train_on_val": st.sampled_from(["true", "false"]),
}


@st.composite
def refused_command_lines(draw):
  """(flag arguments, names of the refused flags)."""
  problem = draw(st.sampled_from(["classification", "regression"]))
  table = {**REFUSED, **(REFUSED_REGRESSION if problem == "regression" else {})}
  bad = draw(st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=3, unique=True))
  good = draw(st.lists(st.sampled_from(sorted(ACCEPTED)), max_size=4, unique=True))
  args = [f"--problem={problem}"]
  for name in good:
    args.append(f"--{name}={draw(ACCEPTED[name])}")
  for name in bad:
    value = draw(table[name])
    args.append(f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}")
  return draw(st.permutations(args)), sorted(bad)


class _Accepted(Exception):
  """Training or evaluation was reached: the configuration accepted the flags."""


def _reached(config):
  raise _Accepted(config)


def test_refused_flag_combinations_are_one_clear_error_before_any_file(monkeypatch, capsys,
                                                                      tmp_path):
  for experiment, _ in train.EXPERIMENTS.values():
    monkeypatch.setattr(experiment, "train", _reached)
    monkeypatch.setattr(experiment, "evaluate", _reached)
  root = str(tmp_path)
  folders = [f"--checkpoint_path={root}/run", f"--results_dir={root}/results",
             f"--export_dir={root}/models", f"--data_path={root}/data"]
  parse = progress.flags_parser("leo_tf.train")
  outcomes = {"refused": 0}

  @settings(max_examples=NUM_EXAMPLES, deadline=2000, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
  @given(refused_command_lines())
  # Besides the random ones: a value that is not finite, alone (each was accepted once).
  @example((["--problem=classification", "--outer_lr=inf"], ["outer_lr"]))
  @example((["--problem=classification", "--kl_weight=nan"], ["kl_weight"]))
  @example((["--problem=regression", "--regression_latent_clip=inf"],
            ["regression_latent_clip"]))
  def run(command_line):
    args, refused = command_line
    FLAGS.unparse_flags()
    capsys.readouterr()
    try:
      with pytest.raises(SystemExit) as exited:
        train.main(parse(["leo_tf.train", *folders, *args]))
    finally:
      FLAGS.unparse_flags()
    lines = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2, (args, lines)
    assert len(lines) == 2 and lines[0].startswith("leo_tf.train: error: "), (args, lines)
    assert any(f"--{name}" in lines[0] for name in refused), (args, refused, lines)
    assert lines[1] == "Run `python -m leo_tf.train --helpfull` for every flag and what it means."
    assert os.listdir(root) == [], (args, os.listdir(root))  # nothing written
    outcomes["refused"] += 1

  run()
  assert outcomes["refused"] >= NUM_EXAMPLES * 0.9, outcomes
  print(f"fuzzed {outcomes['refused']} refused flag combinations")
