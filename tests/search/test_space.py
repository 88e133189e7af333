"""leo_tf.search.space and the checks before any trial: the space file's errors, sampling,
applying a sample to a run configuration, and a study folder of another base or space."""

import dataclasses

import optuna
import pytest

from leo_tf.classification import experiment
from leo_tf.core.config import ModelConfig
from leo_tf.regression import experiment as regression_experiment
from leo_tf.search import space
from leo_tf.search import study as study_lib
from tests.paths import REPO

CONFIG = experiment.RunConfig(model=ModelConfig(embedding_dim=32))
FIELDS = space.searchable(CONFIG, {})


def _parse(text):
  return space.parse_space(text, "s.txt", FIELDS)


def test_the_default_space_file_holds_table_6_and_n_z_on_their_scales():
  settings = space.read_space(f"{REPO}/search_space.txt", FIELDS)
  by_name = {s.name: s for s in settings}
  assert list(by_name) == ["outer_lr", "kl_weight", "encoder_penalty_weight", "l2_penalty_weight",
                           "orthogonality_penalty_weight", "dropout_rate", "num_latents"]
  assert [s.log for s in settings] == [True] * 5 + [False, True]
  assert by_name["num_latents"].integer and not by_name["kl_weight"].integer
  # Every value of the original README (mini*.flags, tiered*.flags) lies inside, with room.
  for name, values in {"outer_lr": (2.739071e-4, 8.659053e-4),
                       "kl_weight": (2.034189e-3, 1.622811),
                       "encoder_penalty_weight": (2.661608e-7, 8.302962e-5),
                       "l2_penalty_weight": (1.690399e-10, 8.540338e-9),
                       "orthogonality_penalty_weight": (1.523998e-3, 0.188103),
                       "dropout_rate": (0.300299, 0.475126)}.items():
    s = by_name[name]
    assert s.low < min(values) and max(values) < s.high, name
  space.check_against(CONFIG, settings, FIELDS)


@pytest.mark.parametrize("text, message", [
    ("kl_wieght 1e-4 10 log", "s.txt, line 1: unknown setting 'kl_wieght'. Did you mean kl_weight?"),
    ("data_path 0 1 linear", "unknown setting 'data_path'"),
    ("embedding_dim 16 64 log", "unknown setting 'embedding_dim'"),
    ("# beta\nkl_weight 0.1 0.1 log", "s.txt, line 2: kl_weight's range [0.1, 0.1] is empty"),
    ("kl_weight 10 1e-4 log", "kl_weight's range [10, 1e-4] is inverted: low must be below high"),
    ("kl_weight 0 10 log", "kl_weight's log range [0, 10] reaches 0; a log scale needs low > 0"),
    ("kl_weight -1 10 log", "reaches below 0"),
    ("kl_weight 1e-4 10 cubic", "scale must be one of ('linear', 'log'), got 'cubic'"),
    ("kl_weight 1e-4 ten log", "high must be a number, got 'ten'"),
    ("kl_weight 1e-4 10", "expected `setting low high scale`"),
    ("num_latents 8.5 64 log", "--num_latents is an integer flag; its range must be integers"),
    ("kl_weight 1e-4 1 log\nkl_weight 1e-3 1 log", "s.txt, line 2: kl_weight is listed twice"),
    ("# nothing\n", "no setting to search"),
    ("kl_weight 1e-4 inf log", "range must be finite"),
])
def test_a_bad_space_is_refused_with_its_line_and_the_fix(text, message):
  with pytest.raises(ValueError, match=None) as e:
    _parse(text)
  assert message in str(e.value)


@pytest.mark.parametrize("line, message", [
    ("dropout_rate 0.0 1.0 linear", "dropout_rate's high end 1 is not a valid value: dropout_rate "
                                    "must be in [0, 1), got 1.0."),
    ("metatrain_batch_size 0 12 linear", "metatrain_batch_size's low end 0 is not a valid value"),
    ("max_weights_stddev 0.01 10 log", "max_weights_stddev's low end 0.01 is not a valid value"),
])
def test_a_range_end_the_configuration_refuses_is_an_error_before_any_trial(line, message):
  settings = _parse(line)
  with pytest.raises(ValueError) as e:
    space.check_against(CONFIG, settings, FIELDS)
  assert message in str(e.value) and "s.txt, line 1" in str(e.value)


def test_samples_lie_in_their_ranges_on_their_scales_and_apply_to_the_config():
  settings = _parse("kl_weight 1e-6 1 log\ndropout_rate 0.1 0.6 linear\nnum_latents 16 256 log\n"
                    "outer_lr 1e-5 1e-2 log")
  storage = optuna.storages.InMemoryStorage()
  study = optuna.create_study(storage=storage, sampler=study_lib.TrialSeededRandomSampler(seed=4),
                              direction="maximize")
  samples = []
  for _ in range(100):
    trial = study.ask()
    samples.append(space.suggest(trial, settings))
    study.tell(trial, 0.0)
  kl = [s["kl_weight"] for s in samples]
  assert all(1e-6 <= v <= 1 for v in kl) and all(0.1 <= s["dropout_rate"] <= 0.6 for s in samples)
  assert all(isinstance(s["num_latents"], int) and 16 <= s["num_latents"] <= 256 for s in samples)
  # Log scale: about half the draws below the geometric midpoint 1e-3 (a linear draw: 0.1%).
  assert 0.35 < sum(v < 1e-3 for v in kl) / len(kl) < 0.65
  config = space.apply(CONFIG, samples[0], FIELDS)
  assert config.model.kl_weight == samples[0]["kl_weight"]
  assert config.model.num_latents == samples[0]["num_latents"]
  assert config.outer.outer_lr == samples[0]["outer_lr"]
  assert dataclasses.replace(config.model, kl_weight=CONFIG.model.kl_weight,
                             dropout_rate=CONFIG.model.dropout_rate,
                             num_latents=CONFIG.model.num_latents) == CONFIG.model
  # Trial t's draw depends on (seed, t) alone: a second worker with the same seed joining the
  # study draws trial 100's sample, not trial 0's again (as one generator per process would).
  second = optuna.load_study(study_name=study.study_name, storage=storage,
                             sampler=study_lib.TrialSeededRandomSampler(seed=4))
  joined = second.ask()
  assert joined.number == 100 and space.suggest(joined, settings) != samples[0]
  fresh = optuna.create_study(sampler=study_lib.TrialSeededRandomSampler(seed=4))
  assert space.suggest(fresh.ask(), settings) == samples[0]
  assert len({tuple(s.items()) for s in samples}) == len(samples)


def test_regression_settings_are_named_by_their_flags():
  fields = space.searchable(regression_experiment.RegressionRunConfig(),
                            {"num_samples": "regression_num_samples"})
  assert fields["regression_num_samples"] == space.Field("model", "num_samples", True)
  assert "num_samples" not in fields and fields["kl_weight"].section == "model"
  assert study_lib.direction(regression_experiment.RegressionRunConfig()) == "minimize"
  assert study_lib.direction(CONFIG) == "maximize"


def test_a_study_folder_of_another_base_or_space_is_refused(tmp_path):
  settings = _parse("kl_weight 1e-4 1 log")
  search = study_lib.SearchConfig(study_dir=str(tmp_path / "s"), num_trials=1)
  study_lib.open_study(search, CONFIG, settings, FIELDS)
  # The searched setting, the run folder and progress may differ; the base is the same.
  same = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, kl_weight=0.5),
                             outer=dataclasses.replace(CONFIG.outer, checkpoint_path="x"),
                             progress=False)
  assert (study_lib.base_fingerprint(same, settings, FIELDS)
          == study_lib.base_fingerprint(CONFIG, settings, FIELDS))
  changed = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, dropout_rate=0.1))
  assert (study_lib.base_fingerprint(changed, settings, FIELDS)
          != study_lib.base_fingerprint(CONFIG, settings, FIELDS))
  other = dataclasses.replace(CONFIG, data=dataclasses.replace(CONFIG.data, num_classes=20))
  with pytest.raises(study_lib.SearchError) as e:
    study_lib.open_study(search, other, settings, FIELDS)
  assert "was made for another base flagfile: data.num_classes: 5 there, 20 here" in str(e.value)
  with pytest.raises(study_lib.SearchError, match="another search space"):
    study_lib.open_study(search, CONFIG, _parse("kl_weight 1e-4 10 log"), FIELDS)


def test_base_first_enqueues_the_base_values_once_and_refuses_one_out_of_range(tmp_path):
  settings = _parse("kl_weight 1e-4 1 log\nnum_latents 16 256 log\nouter_lr 1e-5 1e-2 log")
  base = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, kl_weight=0.25,
                                                               num_latents=100))
  assert space.values(base, settings, FIELDS) == {
      "kl_weight": 0.25, "num_latents": 100, "outer_lr": CONFIG.outer.outer_lr}
  search = study_lib.SearchConfig(study_dir=str(tmp_path / "s"), num_trials=2, base_first=True)
  for _ in range(2):  # a second worker opening the study enqueues nothing more
    study = study_lib.open_study(search, base, settings, FIELDS)
  (waiting,) = study.get_trials(deepcopy=False)
  assert waiting.state == optuna.trial.TrialState.WAITING
  assert waiting.user_attrs == {"base": True}
  trial = study.ask()  # the first trial any worker asks for is the base's
  assert space.suggest(trial, settings) == {"kl_weight": 0.25, "num_latents": 100,
                                            "outer_lr": CONFIG.outer.outer_lr}
  outside = dataclasses.replace(base, model=dataclasses.replace(base.model, kl_weight=2.0))
  with pytest.raises(ValueError, match=r"--base_first: the base's kl_weight=2.0 is outside the "
                     r"space's range \[0.0001, 1\] \(s.txt, line 1\); widen the range"):
    study_lib.open_study(dataclasses.replace(search, study_dir=str(tmp_path / "t")), outside,
                         settings, FIELDS)
