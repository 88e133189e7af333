"""What a study leaves for a person: the leaderboard, the best trial's flagfile, the plots.

In <study_dir>:
  leaderboard.md, leaderboard.csv   every trial: its settings, its best meta-validation
                                    score, its state (completed, pruned at step S, failed)
  best.flags                        the base flagfile's settings with the best completed
                                    trial's, ready for `python -m leo_tf.train --flagfile=`
  history.png                       the optimisation history (each trial's score, the best so far)
  slice.png                         the score against each searched setting
  importances.png                   each setting's share of the score's variance (fANOVA),
                                    once two trials have completed

Every file is written atomically (data.atomic): a reader, or another worker
writing the same file, never sees half of one.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from typing import Any, Sequence

import optuna
from optuna.trial import TrialState

from leo_tf.data import atomic
from leo_tf.search import space as space_lib

LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_CSV = "leaderboard.csv"
BEST_FLAGFILE = "best.flags"
PLOTS = ("history.png", "slice.png", "importances.png")


def _best_reported(trial: optuna.trial.FrozenTrial, maximize: bool) -> float | None:
  """A trial's best meta-validation score: its objective if completed, else its best report."""
  if trial.state == TrialState.COMPLETE:
    return trial.value
  values = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
  if not values:
    return None
  return max(values) if maximize else min(values)


def _state(trial: optuna.trial.FrozenTrial) -> str:
  note = trial.user_attrs.get("note", "")
  base = " (the base's settings)" if trial.user_attrs.get("base") else ""
  if trial.state == TrialState.PRUNED:
    return f"pruned at step {trial.user_attrs.get('last_step', '?')}{base}"
  if trial.state == TrialState.FAIL:
    return note or "failed (its worker stopped; see the trial that continues it)"
  return trial.state.name.lower() + base


def leaderboard_rows(study: optuna.Study, settings: Sequence[space_lib.Setting]
                     ) -> list[dict[str, Any]]:
  """One row per trial: completed ones best first, then pruned (best first), then the rest."""
  maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
  order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2,
           TrialState.WAITING: 3, TrialState.FAIL: 4}
  rows = []
  for t in study.get_trials(deepcopy=False):
    score = _best_reported(t, maximize)
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t)
    rows.append({
        "trial": t.number, "state": _state(t), "metavalid": score,
        "steps": t.user_attrs.get("last_step", ""),
        **{s.name: t.params.get(s.name, "") for s in settings},
        "continues": retried[-1] if retried else "",
        "run_folder": t.user_attrs.get("run_folder", ""),
        "seconds": t.user_attrs.get("seconds", ""),
        "_key": (order[t.state], 0 if score is None else (-score if maximize else score),
                 t.number),
    })
  rows.sort(key=lambda r: r.pop("_key"))
  return rows


def _format(value: Any, percent: bool) -> str:
  if isinstance(value, float):
    return f"{100 * value:.2f}%" if percent else f"{value:.4g}"
  return str(value)


def write_leaderboard(study: optuna.Study, settings: Sequence[space_lib.Setting], study_dir: str,
                      score_label: str = "accuracy") -> list[dict[str, Any]]:
  """Writes leaderboard.md and leaderboard.csv; returns the rows."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    rows = leaderboard_rows(study, settings)
  percent = score_label == "accuracy"
  columns = ["trial", "state", "metavalid", "steps", *[s.name for s in settings], "continues",
             "run_folder", "seconds"]
  header = {"metavalid": f"meta-valid {score_label}", "continues": "continues trial"}
  lines = [f"# Study {study.study_name}: {len(rows)} trials, objective: best meta-validation "
           f"{score_label} ({'higher' if percent else 'lower'} is better)", "",
           "| " + " | ".join(header.get(c, c) for c in columns) + " |",
           "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(_format(row[c], percent and c == "metavalid") if row[c] is not None
                                   else "" for c in columns) + " |")
  text = "\n".join(lines) + "\n"
  atomic.atomic_write(os.path.join(study_dir, LEADERBOARD_MD), lambda f: f.write(text.encode()))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns)
  writer.writeheader()
  writer.writerows([{c: "" if row[c] is None else row[c] for c in columns} for row in rows])
  atomic.atomic_write(os.path.join(study_dir, LEADERBOARD_CSV),
                      lambda f: f.write(buffer.getvalue().encode()))
  return rows


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
  """The completed trial with the best objective (None before any completed)."""
  if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
    return None
  return study.best_trial


def write_best_flagfile(study: optuna.Study, base_flags: Sequence[str], study_dir: str,
                        base_source: str) -> str | None:
  """Writes best.flags: base_flags with the best trial's settings; returns its path (or None).

  Args:
    base_flags: the base's flags as "--name=value" lines (the flagfile and
      command line the search was given).
    base_source: what they came from, for the header comment.
  """
  trial = best_trial(study)
  if trial is None:
    return None
  checkpoint_path = os.path.join(study_dir, "best_run")
  replaced = {**{name: f"--{name}={value!r}" if isinstance(value, float) else
                 f"--{name}={value}" for name, value in trial.params.items()},
              "checkpoint_path": f"--checkpoint_path={checkpoint_path}"}
  lines = [f"# Written by python -m leo_tf.search: study {study.study_name}, trial "
           f"{trial.number} of {len(study.trials)}, best meta-validation score {trial.value:.6g}.",
           f"# The base: {base_source}; the searched settings come last. The trial's own run",
           f"# (checkpoints, TensorBoard, meta-test) is in "
           f"{os.path.join(study_dir, trial.user_attrs.get('run_folder', ''))};",
           f"# training with this flagfile starts afresh in {checkpoint_path}."]
  kept = [replaced.get(line[2:].split("=", 1)[0], line) for line in base_flags
          if line[2:].split("=", 1)[0] not in trial.params]
  if "checkpoint_path" not in {line[2:].split("=", 1)[0] for line in base_flags}:
    kept.append(replaced["checkpoint_path"])
  lines += kept + [f"# The searched settings, trial {trial.number}'s sample:"]
  lines += [replaced[name] for name in trial.params]
  path = os.path.join(study_dir, BEST_FLAGFILE)
  text = "\n".join(lines) + "\n"
  atomic.atomic_write(path, lambda f: f.write(text.encode()))
  return path


def _slice_figure(study: optuna.Study, settings: Sequence[space_lib.Setting], score_label: str):
  """The score against each searched setting: completed trials filled, pruned ones hollow at
  their best reported score; colour = trial number. A grid of up to 4 panels a row."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
  percent = score_label == "accuracy"
  trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                TrialState.PRUNED))
            if _best_reported(t, maximize) is not None]
  columns = min(4, len(settings))
  rows = -(-len(settings) // columns)
  figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows + 0.6),
                              squeeze=False, sharey=True, layout="constrained")
  last = max([t.number for t in trials] + [1])
  for ax, s in zip(axes.flat, settings):
    for state, face in ((TrialState.COMPLETE, True), (TrialState.PRUNED, False)):
      chosen = [t for t in trials if t.state == state and s.name in t.params]
      x = [t.params[s.name] for t in chosen]
      y = [(100 if percent else 1) * _best_reported(t, maximize) for t in chosen]
      colours = plt.cm.viridis([t.number / last for t in chosen])
      ax.scatter(x, y, s=30, c=colours if face else "none", edgecolors=colours,
                 label="completed" if face else "pruned (best report)")
    if s.log:  # the range's ends, with a margin so that points there show whole
      ax.set_xscale("log")
      ax.set_xlim(s.low / 1.25, s.high * 1.25)
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
      if s.integer:  # n_z: 16, 32, 64, ... rather than 10^2
        ax.xaxis.set_major_locator(ticker.LogLocator(base=2))
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    else:
      ax.set_xlim(s.low - 0.03 * (s.high - s.low), s.high + 0.03 * (s.high - s.low))
    ax.set_xlabel(s.name)
    ax.grid(alpha=0.3)
  for ax in axes[:, 0]:
    ax.set_ylabel(f"meta-valid {score_label}{' (%)' if percent else ''}")
  for ax in list(axes.flat)[len(settings):]:
    ax.set_visible(False)
  axes.flat[0].legend(fontsize=7, loc="best")
  figure.colorbar(plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, last)),
                  ax=axes, label="trial", shrink=0.8,
                  ticks=ticker.MaxNLocator(integer=True))
  return figure


def write_plots(study: optuna.Study, settings: Sequence[space_lib.Setting], study_dir: str,
                score_label: str) -> list[str]:
  """Writes the PNG plots that the study's trials allow; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  from optuna.visualization import matplotlib as optuna_plots  # pylint: disable=g-import-not-at-top
  completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
  if not completed:
    return []
  target_name = f"meta-valid {score_label}"
  title = (f"Study {study.study_name}: {len(completed)} completed of {len(study.trials)} trials")

  def history():
    ax = optuna_plots.plot_optimization_history(study, target_name=target_name)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_title(f"{title} (pruned ones not drawn)")
    ax.figure.set_size_inches(8, 4.5)
    ax.figure.tight_layout()
    return ax.figure

  def importances():
    ax = optuna_plots.plot_param_importances(study, target_name=target_name)
    ax.set_title("", loc="left")  # Optuna's own title sits there
    ax.set_title(f"{title}: share of the score's variance (fANOVA)")
    ax.figure.set_size_inches(8, 4.5)
    ax.figure.tight_layout()
    return ax.figure

  def slices():
    figure = _slice_figure(study, settings, score_label)
    figure.suptitle(title)
    return figure

  makers = [(PLOTS[0], history), (PLOTS[1], slices)]
  if len(completed) >= 2:
    makers.append((PLOTS[2], importances))
  written = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    for name, make in makers:
      figure = make()
      path = os.path.join(study_dir, name)
      atomic.atomic_write(path, lambda f, fig=figure: fig.savefig(f, format="png", dpi=100,
                                                               bbox_inches="tight"))
      plt.close(figure)
      written.append(path)
  return written


def write_all(study: optuna.Study, settings: Sequence[space_lib.Setting], study_dir: str,
              base_flags: Sequence[str], base_source: str, score_label: str) -> dict[str, Any]:
  """The leaderboard, best.flags and the plots; returns where they are."""
  write_leaderboard(study, settings, study_dir, score_label)
  return {"leaderboard": os.path.join(study_dir, LEADERBOARD_MD),
          "best_flagfile": write_best_flagfile(study, base_flags, study_dir, base_source),
          "plots": write_plots(study, settings, study_dir, score_label)}
