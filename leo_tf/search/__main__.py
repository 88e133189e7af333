r"""Hyperparameter search: `python -m leo_tf.search --flagfile=demo.flags --study_dir=runs/s`.

  python -m leo_tf.search --flagfile=demo.flags --study_dir=runs/search_demo --num_trials=20
  # a second worker on the same machine: the same command in another shell
  # several machines: --storage=postgresql://user:password@host/db on each, same --study_name

Every trial is a `python -m leo_tf.train` run of the base flags (the flagfile and
any training flag on the command line) with the searched settings replaced by a
sample of --space (search_space.txt by default). The search flags are below;
the training flags keep their meaning (leo_tf.command_line). The command only
parses, builds the configurations and calls leo_tf.search.study.run_worker,
then writes the leaderboard, best.flags and the plots (leo_tf.search.report).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from leo_tf import command_line
from leo_tf.outer import fit
from leo_tf.outer import progress
from leo_tf.search import report
from leo_tf.search import space
from leo_tf.search import study as study_lib

COMMAND = "leo_tf.search"
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(command_line)  # --help lists the training flags too

flags.DEFINE_string("study_dir", None, "The study's folder: study.db (SQLite, unless --storage), "
                    "trials/<number>/ (each trial's run folder), leaderboard.md/.csv, best.flags "
                    "and the plots.")
flags.DEFINE_integer("num_trials", 20, "Finished trials (completed or pruned) the study should "
                     "hold; every worker stops there. A killed trial does not count.")
flags.DEFINE_string("space", "search_space.txt",
                    "The search space: one `setting low high scale` line per searched flag.")
flags.DEFINE_enum("sampler", "random", study_lib.SAMPLERS,
                  "random: random search, as the paper's (appendix B.5); tpe: Optuna's "
                  "tree-structured Parzen estimator (model-based).")
flags.DEFINE_enum("pruner", "median", study_lib.PRUNERS,
                  "median: stop a trial whose meta-validation is worse than the median of the "
                  "completed trials' at the same step; halving: successive halving; none.")
flags.DEFINE_integer("prune_after_trials", 5, "The median pruner prunes once so many trials "
                     "have completed.")
flags.DEFINE_bool("base_first", False, "Trial 0 of a new study trains the base's own values of "
                  "the searched settings: the yardstick on the same tasks (with a database "
                  "server, start one worker before the others).")
flags.DEFINE_integer("prune_warmup_steps", 0, "No pruning at meta-validations before this step.")
flags.DEFINE_integer("tpe_startup_trials", 10, "TPE samples at random for the first so many trials.")
flags.DEFINE_integer("search_seed", 0, "Seeds the random sampler: trial t's sample depends only "
                     "on (search_seed, t). (--seed stays the training seed of every trial.)")
flags.DEFINE_string("storage", "", "An Optuna RDB URL that several machines share (e.g. "
                    "postgresql://user:password@host/leo or mysql+pymysql://...); empty: SQLite in "
                    "--study_dir.")
flags.DEFINE_string("study_name", "", "The study's name in --storage (default: the folder name "
                    "of --study_dir).")
flags.DEFINE_integer("heartbeat_seconds", 60, "A running trial's heartbeat; a trial silent for "
                     "twice this is taken as dead, marked failed and run again from its checkpoint.")
flags.mark_flag_as_required("study_dir")


def _base_flags() -> tuple[list[str], str]:
  """The training flags the user set (flagfile or command line) as lines, and where from."""
  lines = [f.serialize() for f in FLAGS.get_flags_for_module(command_line) if f.present]
  flagfiles = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--flagfile=")]
  return lines, " and ".join(flagfiles + ["the command line"]) if flagfiles else "the command line"


def main(argv):
  progress.start_command(argv, COMMAND)
  config_from_flags = (command_line.regression_config_from_flags if FLAGS.problem == "regression"
                       else command_line.config_from_flags)
  try:
    config = config_from_flags()
    search = study_lib.SearchConfig(
        study_dir=FLAGS.study_dir, num_trials=FLAGS.num_trials, sampler=FLAGS.sampler,
        pruner=FLAGS.pruner, prune_after_trials=FLAGS.prune_after_trials,
        prune_warmup_steps=FLAGS.prune_warmup_steps, tpe_startup_trials=FLAGS.tpe_startup_trials,
        seed=FLAGS.search_seed, storage=FLAGS.storage, study_name=FLAGS.study_name,
        heartbeat_seconds=FLAGS.heartbeat_seconds, base_first=FLAGS.base_first)
    fields = space.searchable(config, command_line.FLAG_NAMES[FLAGS.problem])
    settings = space.read_space(FLAGS.space, fields)
    space.check_against(config, settings, fields)
  except ValueError as e:
    progress.command_error(COMMAND, str(e), command_line.FLAG_NAMES[FLAGS.problem])
  base_flags, base_source = _base_flags()
  label = "MSE" if study_lib.direction(config) == "minimize" else "accuracy"
  searched = ", ".join(s.name for s in settings)
  print(f"Study {search.name} in {search.storage_url}: {search.num_trials} trials of the base "
        f"{base_source} with {searched} sampled ({search.sampler}, {search.pruner} pruner).",
        flush=True)

  def write(study) -> dict:
    return report.write_all(study, settings, search.study_dir, base_flags, base_source, label)

  try:
    study = study_lib.run_worker(search, config, settings, fields,
                                 after_trial=lambda s: report.write_leaderboard(
                                     s, settings, search.study_dir, label))
  except fit.Interrupted as e:
    sys.exit(128 + e.signum)
  except (ValueError, study_lib.SearchError) as e:
    sys.exit(f"{COMMAND}: error: {e}")
  written = write(study)
  best = report.best_trial(study)
  if best is None:
    print("No trial completed (see the leaderboard).", flush=True)
  else:
    test = {k: v for k, v in best.user_attrs.items() if k.startswith("metatest")}
    value = f"{100 * best.value:.2f}%" if label == "accuracy" else f"{best.value:.4f}"
    print(f"Best: trial {best.number}, meta-valid {label} {value}, "
          f"{', '.join(f'{k}={v}' for k, v in best.params.items())}; its meta-test: {test}",
          flush=True)
  print(f"Leaderboard: {written['leaderboard']}\nBest flagfile: {written['best_flagfile']}\n"
        f"Plots: {', '.join(written['plots'])}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=progress.flags_parser(COMMAND))
