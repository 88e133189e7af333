"""Tests for leo_tf.command_line: every flagfile at the root names only flags it defines."""

import os

import pytest
from absl import flags

from leo_tf import command_line  # pylint: disable=unused-import  (defines the flags)
from tests.paths import REPO


def _flag_values(name):
  with open(os.path.join(REPO, f"{name}.flags")) as f:
    lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
  return dict((line[2:].split("=", 1) + [""])[:2] for line in lines)


@pytest.mark.parametrize("name", ["demo", "mini", "mini_5shot", "tiered", "tiered_5shot",
                                  "sines", "omniglot_5way1shot", "omniglot_5way5shot",
                                  "omniglot_20way1shot", "omniglot_20way5shot"])
def test_flagfiles_name_only_known_flags(name):
  for flag in _flag_values(name):
    assert flag in flags.FLAGS, f"{name}.flags: unknown flag {flag}"


def test_sines_flagfile_is_a_regression_run():
  assert _flag_values("sines")["problem"] == "regression"


@pytest.mark.parametrize("name", ["omniglot_5way1shot", "omniglot_5way5shot",
                                  "omniglot_20way1shot", "omniglot_20way5shot"])
def test_omniglot_flagfiles_match_their_setting(name):
  values = _flag_values(name)
  way, shot = name.split("_")[1].split("way")
  assert values["dataset_name"] == "omniglot"
  assert values["num_classes"] == way and values["num_tr_examples_per_class"] == shot[0]
