r"""Meta-train and evaluate: `python -m leo_tf.train --flagfile=mini.flags`.

  python -m leo_tf.train --flagfile=demo.flags                    # train, then meta-test
  python -m leo_tf.train --flagfile=demo.flags --evaluation_mode  # meta-test the best checkpoint
  python -m leo_tf.train --flagfile=sines.flags                   # regression: LEO and MAML

The flags (leo_tf.command_line) keep the original code's names; --problem picks
classification (leo_tf.classification.experiment) or regression
(leo_tf.regression.experiment). This module only parses, builds the frozen
configuration and calls the experiment's train or evaluate.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from leo_tf import command_line
from leo_tf.classification import experiment as classification_experiment
from leo_tf.outer import distribute
from leo_tf.outer import fit
from leo_tf.outer import lock
from leo_tf.outer import progress
from leo_tf.regression import experiment as regression_experiment

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(command_line)  # --help lists the training flags
EXPERIMENTS = {"classification": (classification_experiment, command_line.config_from_flags),
               "regression": (regression_experiment, command_line.regression_config_from_flags)}


def main(argv):
  progress.start_command(argv, "leo_tf.train")
  if FLAGS.num_cpu_devices > 1:
    distribute.configure_cpu_devices(FLAGS.num_cpu_devices)  # before TensorFlow starts
  experiment, config_from_flags = EXPERIMENTS[FLAGS.problem]
  try:
    config = config_from_flags()
  except ValueError as e:
    progress.command_error("leo_tf.train", str(e), command_line.FLAG_NAMES[FLAGS.problem])
  try:
    if FLAGS.evaluation_mode:
      experiment.evaluate(config)
    else:
      results = experiment.train(config)
      if FLAGS.export_dir and results.get("chief", True):
        from leo_tf.serving import export  # pylint: disable=g-import-not-at-top
        version_dir = export.export_checkpoint(FLAGS.checkpoint_path, FLAGS.export_dir)
        print(f"Exported the best checkpoint to {version_dir}", flush=True)
  except fit.Interrupted as e:  # the message is printed; the checkpoint is written
    sys.exit(128 + e.signum)  # as a process killed by that signal reports it
  except (ValueError, OSError, lock.RunFolderInUse) as e:
    # Bad data or settings found at start (missing files, K + V larger than a
    # class, N larger than the split, a checkpoint_path of another run, ...).
    sys.exit(f"leo_tf.train: error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=progress.flags_parser("leo_tf.train"))
