r"""The whole three-stage method on Omniglot, in one command (appendix B.7).

    python -m leo_tf.images.omniglot_pipeline --data_dir=../shared/data/omniglot

  stage 1   leo_tf.images.pretrain: a conv4 trained by supervised classification of
            the 4,112 meta-training classes (the epoch chosen on
            meta-validation classes), then embeddings of every split written in
            the published LEO format to <embeddings_path>/omniglot/center/.
  stage 2   leo_tf.train with omniglot_<N>way<K>shot.flags for the four settings
            (5-/20-way, 1-/5-shot): LEO, and on the same features the baselines
            Meta-SGD (--model=metasgd) and the nearest class mean
            (--model=prototypes); early stopping on meta-validation; each run's
            best checkpoint on meta-test tasks (every remaining image of a class
            as a query) with 95% intervals; figure 4 for 5-way and 20-way 1-shot
            (<output_dir>/latents_<setting>.png).
  stage 3   leo_tf.reproduce with the same flags: each run trained again from
            scratch for stage3_seeds seeds on the meta-training and
            meta-validation classes together (train_on_val: stage 1 never saw
            the validation classes, so their features look like the test
            classes'), each meta-tested on stage3_metatest_tasks tasks; mean and
            sd over seeds (<output_dir>/<setting>/<model>/stage3/results.json).
            Both tables, stage 2's and stage 3's, beside the published Omniglot
            numbers in <output_dir>/results.md and results.json.
  export    the 20-way 1-shot LEO with the stage-1 backbone, a SavedModel for TF
            Serving that classifies images (<output_dir>/models/omniglot_20way1shot/1;
            export/README.md).

Every stage-2 run is a `python -m leo_tf.train` subprocess with the setting's
flagfile (printed before it starts), and every stage-3 study a `python -m
leo_tf.reproduce` one with the same flags, so the tables' numbers come from
exactly the documented commands. Finished runs are skipped when the command is
repeated (their results_test.json, or stage3/results.json, exists); stage 1 is
skipped when its embeddings exist (--overwrite_embeddings to redo it).

`quick_config()` (the test suite's configuration, `--quick` on the command
line) pre-trains for a short time on a subset of classes, runs LEO on 5-way
1-shot only and draws figure 4 on 100 tasks: a few minutes instead of 50.

    python -m leo_tf.images.omniglot_pipeline --data_dir=../shared/data/omniglot --quick \
        --output_dir=/tmp/omniglot_quick
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import flags

from leo_tf.images import backbones
from leo_tf.data import atomic
from leo_tf.images import pretrain
from leo_tf.core.config import ABLATIONS
from leo_tf.outer import progress

SETTINGS = ("5way1shot", "5way5shot", "20way1shot", "20way5shot")
MODELS = ("prototypes", "metasgd", "leo")

# Published meta-test accuracies (%) on Omniglot, in the order of SETTINGS.
PUBLISHED = {
    "MAML (Finn et al. 2017)": (98.7, 99.9, 95.8, 98.9),
    "Prototypical Networks (Snell et al. 2017)": (98.8, 99.7, 96.0, 98.9),
    "Meta-SGD (Li et al. 2017)": (99.53, 99.93, 95.93, 98.97),
    "Relation Network (Sung et al. 2018)": (99.6, 99.8, 97.6, 99.1),
}
# Stage 1 of the pipeline: conv4 with wider last blocks (256-d features), which
# gave clearly better meta-validation NCM than 64 channels throughout for 1.4x
# the compute (BUILD_NOTES.md); 12 epochs (6 gave 92.98% val NCM and 8 93.83%, still
# rising; 12 took 29 minutes and keep the whole pipeline, 50 minutes, under an hour on 2
# cores).
OMNIGLOT_PRETRAIN = pretrain.PretrainConfig(
    backbone=backbones.BackboneConfig(conv4_channels=(64, 64, 128, 256)), epochs=12)
# Goals of the project's issue: LEO accuracy (%) per setting.
GOALS = {"20way1shot": 97.5, "20way5shot": 99.3}

# Flags that turn a LEO flagfile into a Meta-SGD run on the same tasks: one
# adaptation step (as Li et al.) from a learned classifier with learned
# per-parameter rates starting at 10 (the features are unit vectors).
MODEL_FLAGS = {
    "leo": (),
    "metasgd": ("--model=metasgd", "--finetuning_unroll_length=1", "--finetuning_lr_init=10",
                "--dropout_rate=0.0"),
    "prototypes": ("--model=prototypes",),
}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What the one command runs."""

  data_dir: str = "../shared/data/omniglot"  # the shared Omniglot folder
  embeddings_path: str = "data/embeddings"  # stage 1 output, stage 2 data_path
  output_dir: str = "runs/omniglot"  # runs, results table, figure
  flagfile_dir: str = "."  # where omniglot_<setting>.flags are
  pretrain: pretrain.PretrainConfig = OMNIGLOT_PRETRAIN
  settings: tuple[str, ...] = SETTINGS
  models: tuple[str, ...] = MODELS
  ablations: tuple[str, ...] = ABLATIONS[1:]  # table 2 rows to run as well (all by default)
  ablation_settings: tuple[str, ...] = ("5way1shot",)  # settings the ablations run on
  figure_settings: tuple[str, ...] = ("5way1shot", "20way1shot")  # LEO runs figure 4 shows
  figure_tasks: int = 1000  # meta-validation tasks in figure 4 (0: no figures)
  # The LEO run exported with stage 1's backbone for TF Serving (images in, classes out),
  # to <output_dir>/models/omniglot_<setting>/<version>; "" for none.
  export_setting: str = "20way1shot"
  overwrite_embeddings: bool = False  # redo stage 1 even if its embeddings exist
  extra_flags: tuple[str, ...] = ()  # appended to every stage-2 command (e.g. fewer steps)
  stage3_seeds: int = 5  # stage 3: seeds per run, trained on train + val (0: no stage 3)
  stage3_metatest_tasks: int = 50_000  # stage 3: meta-test tasks per seed (the paper's)
  stage3_flags: tuple[str, ...] = ()  # appended to every stage-3 command, after extra_flags
  python: str = sys.executable  # the interpreter of the subprocesses

  def __post_init__(self):
    for name, values, allowed in (("settings", self.settings, SETTINGS),
                                  ("figure_settings", self.figure_settings, SETTINGS),
                                  ("models", self.models, MODELS),
                                  ("ablation_settings", self.ablation_settings, SETTINGS)):
      unknown = [v for v in values if v not in allowed]
      if unknown:
        raise ValueError(f"{name}: unknown {unknown}; choose from {allowed}.")
    if self.export_setting and self.export_setting not in SETTINGS:
      raise ValueError(f"export_setting: unknown {self.export_setting!r}; choose from "
                       f"{SETTINGS} or ''.")
    if self.stage3_seeds < 0 or self.stage3_metatest_tasks < 1:
      raise ValueError(f"stage3_seeds must be >= 0 (0: no stage 3) and stage3_metatest_tasks "
                       f">= 1, got {self.stage3_seeds} and {self.stage3_metatest_tasks}.")
    unknown = [a for a in self.ablations if a not in ABLATIONS or a == "leo"]
    if unknown:
      raise ValueError(f"ablations: unknown {unknown}; choose from {ABLATIONS[1:]}.")
    if self.pretrain.dataset_name != "omniglot" or self.pretrain.image_dir:
      raise ValueError("The Omniglot pipeline pre-trains on Omniglot: keep "
                       "pretrain.dataset_name='omniglot' and pretrain.image_dir=None.")


def quick_config(data_dir: str, work_dir: str, flagfile_dir: str = ".") -> PipelineConfig:
  """The reduced configuration of the test suite and of --quick: a few minutes on 2 CPU cores.

  Stage 1 on 1,200 of the 4,112 meta-training classes (evenly spaced over the
  split file, so over its alphabets) for 2 epochs of a conv4 with (32, 32, 64,
  128) channels, 200 validation and 200 test classes; LEO on 5-way 1-shot for
  800 steps; 500 meta-test tasks; stage 3 with 2 seeds of 200 steps and 200
  meta-test tasks each; figure 4 on 100 meta-validation tasks; that
  LEO exported with its backbone. Everything is written under work_dir:
  embeddings/ (stage 1) and runs/ (stage 2, results.md, results.json,
  latents_5way1shot.png, models/omniglot_5way1shot/1).
  """
  backbone = backbones.BackboneConfig(conv4_channels=(32, 32, 64, 128))
  return PipelineConfig(
      data_dir=data_dir, embeddings_path=os.path.join(work_dir, "embeddings"),
      output_dir=os.path.join(work_dir, "runs"), flagfile_dir=flagfile_dir,
      pretrain=pretrain.PretrainConfig(
          data_dir=data_dir, output_path=os.path.join(work_dir, "embeddings"),
          backbone=backbone, epochs=2, max_classes=1200, max_eval_classes=200,
          num_eval_tasks=200, eval_num_classes=5, progress=False),
      settings=("5way1shot",), models=("leo",), ablations=(), figure_settings=("5way1shot",),
      figure_tasks=100, export_setting="5way1shot",
      extra_flags=("--num_steps_limit=800", "--checkpoint_steps=400", "--num_metavalid_tasks=200",
                   "--num_metatest_tasks=500", "--progress=false", "--jit_compile=false"),
      stage3_seeds=2, stage3_metatest_tasks=200,
      stage3_flags=("--num_steps_limit=200", "--checkpoint_steps=200"))


def _log(text: str) -> None:
  print(f"[omniglot_pipeline {time.strftime('%H:%M:%S')}] {text}", flush=True)


def stage1(config: PipelineConfig) -> dict[str, Any]:
  """Pre-trains and writes the embeddings, or reads the info of an earlier stage 1."""
  p = dataclasses.replace(config.pretrain, data_dir=config.data_dir,
                          output_path=config.embeddings_path)
  info_path = os.path.join(pretrain.output_folder(p), pretrain.INFO_FILE)
  done = all(os.path.isfile(os.path.join(pretrain.output_folder(p), "center",
                                         f"{s}_embeddings.pkl")) for s in ("train", "val", "test"))
  if done and os.path.isfile(info_path) and not config.overwrite_embeddings:
    with open(info_path) as f:
      info = json.load(f)
    _log(f"stage 1: using the embeddings in {pretrain.output_folder(p)} (written by an earlier "
         "run; overwrite_embeddings to redo)")
    return info
  _log(f"stage 1: pre-training {p.backbone.name} on the meta-training classes")
  return pretrain.pretrain(p)


def run_command(config: PipelineConfig, setting: str, model: str, embedding_dim: int,
                ablation: str = "leo") -> tuple[list[str], str]:
  """The `python -m leo_tf.train` command of one run, and its checkpoint_path."""
  name = model if ablation == "leo" else f"leo_{ablation}"
  checkpoint_path = os.path.join(config.output_dir, setting, name)
  command = [config.python, "-m", "leo_tf.train",
             f"--flagfile={os.path.join(config.flagfile_dir, f'omniglot_{setting}.flags')}",
             f"--data_path={config.embeddings_path}", f"--embedding_dim={embedding_dim}",
             f"--checkpoint_path={checkpoint_path}", *MODEL_FLAGS[model]]
  if ablation != "leo":
    command.append(f"--ablation={ablation}")
  command.extend(config.extra_flags)
  return command, checkpoint_path


def stage2(config: PipelineConfig, embedding_dim: int) -> list[dict[str, Any]]:
  """Runs (or reuses) every stage-2 run; returns their meta-test results."""
  plan = [(s, m, "leo") for s in config.settings for m in config.models]
  plan += [(s, "leo", a) for s in config.ablation_settings if s in config.settings
           for a in config.ablations]
  results = []
  for i, (setting, model, ablation) in enumerate(plan, start=1):
    command, checkpoint_path = run_command(config, setting, model, embedding_dim, ablation)
    results_file = os.path.join(checkpoint_path, "results_test.json")
    label = model if ablation == "leo" else f"leo --ablation={ablation}"
    if not os.path.isfile(results_file):
      _log(f"stage 2/3, run {i}/{len(plan)}: {setting} {label}\n  "
           + " ".join(shlex.quote(c) for c in command))
      t0 = time.time()
      completed = subprocess.run(command, check=False)
      if completed.returncode != 0:
        raise RuntimeError(f"{setting} {label} failed (exit {completed.returncode}); command: "
                           + " ".join(shlex.quote(c) for c in command))
      _log(f"  finished in {time.time() - t0:.0f}s")
    else:
      _log(f"stage 2/3, run {i}/{len(plan)}: {setting} {label}: reusing {results_file}")
    with open(results_file) as f:
      result = json.load(f)
    val_file = os.path.join(checkpoint_path, "results_val.json")
    if os.path.isfile(val_file):
      with open(val_file) as f:
        result["metavalid_results"] = json.load(f)
    result.update(setting=setting, model=model, ablation=ablation,
                  command=" ".join(shlex.quote(c) for c in command))
    results.append(result)
  return results


def stage3(config: PipelineConfig, embedding_dim: int) -> list[dict[str, Any]]:
  """Runs (or reuses) the stage-3 study of every run of stage 2; returns their results.json."""
  if not config.stage3_seeds:
    return []
  plan = [(s, m) for s in config.settings for m in config.models]
  studies = []
  for i, (setting, model) in enumerate(plan, start=1):
    command, checkpoint_path = run_command(config, setting, model, embedding_dim)
    command[2] = "leo_tf.reproduce"  # the same flags, then stage 3's
    command += [f"--num_seeds={config.stage3_seeds}",
                f"--stage3_metatest_tasks={config.stage3_metatest_tasks}", *config.stage3_flags]
    results_file = os.path.join(checkpoint_path, "stage3", "results.json")
    if not os.path.isfile(results_file):
      _log(f"stage 3, study {i}/{len(plan)}: {setting} {model}, {config.stage3_seeds} seeds on "
           "train + val\n  " + " ".join(shlex.quote(c) for c in command))
      t0 = time.time()
      completed = subprocess.run(command, check=False)
      if completed.returncode != 0:
        raise RuntimeError(f"stage 3 of {setting} {model} failed (exit {completed.returncode}); "
                           "command: " + " ".join(shlex.quote(c) for c in command))
      _log(f"  finished in {time.time() - t0:.0f}s")
    else:
      _log(f"stage 3, study {i}/{len(plan)}: {setting} {model}: reusing {results_file}")
    with open(results_file) as f:
      study = json.load(f)
    study.update(setting=setting, model=model, command=" ".join(shlex.quote(c) for c in command))
    studies.append(study)
  return studies


def stage3_table(studies: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of stage 3: per model and setting, mean ± sd (%) over the seeds."""
  by_key = {(s["setting"], s["model"]): s for s in studies}
  lines = ["| method (stage 3: train + val, mean ± sd over seeds) | " + " | ".join(
      f"{s.split('way')[0]}-way {s.split('way')[1][0]}-shot" for s in SETTINGS) + " |",
           "|---" * (len(SETTINGS) + 1) + "|"]
  for model, label in (("leo", "LEO, ours"), ("metasgd", "Meta-SGD, ours"),
                       ("prototypes", "Nearest class mean, ours")):
    if not any((s, model) in by_key for s in SETTINGS):
      continue
    cells = []
    for setting in SETTINGS:
      study = by_key.get((setting, model))
      if study is None:
        cells.append("not run")
        continue
      over = study["over_seeds"][model]
      cells.append(f"{100 * over['mean']:.2f} ± {100 * over['sd']:.2f} ({study['num_seeds']} "
                   f"seeds, {study['num_metatest_tasks']:,} tasks each)")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _cell(result: dict[str, Any] | None) -> str:
  if result is None:
    return "not run"
  return f"{100 * result['mean_accuracy']:.2f} ± {100 * result['ci95']:.2f}"


def export_served_model(config: PipelineConfig, embedding_dim: int) -> list[str]:
  """Exports the export_setting LEO run with stage 1's backbone; returns [its version folder].

  The SavedModel takes images (leo_tf.serving.classification: images, image_bytes and
  their batched forms) as well as embeddings. A repeated command keeps the version that
  already holds the run's best checkpoint. [] when there is nothing to export.
  """
  setting = config.export_setting
  if not setting or setting not in config.settings or "leo" not in config.models:
    return []
  from leo_tf.serving import export  # pylint: disable=g-import-not-at-top
  from leo_tf.serving import images  # pylint: disable=g-import-not-at-top
  from leo_tf.serving import publish  # pylint: disable=g-import-not-at-top
  _, checkpoint_path = run_command(config, setting, "leo", embedding_dim)
  export_dir = os.path.join(config.output_dir, "models", f"omniglot_{setting}")
  backbone_dir = pretrain.output_folder(dataclasses.replace(
      config.pretrain, output_path=config.embeddings_path))
  try:
    version_dir = export.export_checkpoint(
        checkpoint_path, export_dir,
        front_end=images.FrontEnd(*pretrain.load_embedding_function(backbone_dir)))
  except FileExistsError:  # exported by an earlier run of the command
    version_dir = os.path.join(export_dir, str(publish.versions(export_dir)[-1]))
    _log(f"export: {version_dir} already holds {setting} LEO's best checkpoint")
    return [version_dir]
  _log(f"export: {setting} LEO with its stage-1 backbone -> {version_dir} (serve with TF "
       f"Serving's --model_base_path={os.path.abspath(export_dir)}; export/README.md)")
  return [version_dir]


def results_table(results: Sequence[dict[str, Any]], settings: Sequence[str] = SETTINGS) -> str:
  """A Markdown table: published rows, then ours (mean ± 95% half-width, %)."""
  header = "| method | " + " | ".join(
      f"{s.split('way')[0]}-way {s.split('way')[1][0]}-shot" for s in SETTINGS) + " |"
  lines = [header, "|---" * (len(SETTINGS) + 1) + "|"]
  for name, values in PUBLISHED.items():
    lines.append(f"| {name} | " + " | ".join(f"{v}" for v in values) + " |")
  by_key = {(r["setting"], r["model"], r["ablation"]): r for r in results}
  rows = [("leo", "leo", "LEO, ours (conv4 features)"),
          ("metasgd", "leo", "Meta-SGD, ours (same features)"),
          ("prototypes", "leo", "Nearest class mean, ours (same features)")]
  rows += [("leo", a, f"LEO ablation: {a}, ours") for a in
           sorted({r["ablation"] for r in results if r["ablation"] != "leo"})]
  for model, ablation, label in rows:
    if not any((s, model, ablation) in by_key for s in settings):
      continue
    lines.append(f"| {label} | " + " | ".join(_cell(by_key.get((s, model, ablation)))
                                                for s in SETTINGS) + " |")
  return "\n".join(lines)


def goals_report(results: Sequence[dict[str, Any]]) -> list[str]:
  """One line per goal of the issue: met, missed or not run, with the numbers."""
  by_key = {(r["setting"], r["model"], r["ablation"]): r for r in results}
  lines = []
  for setting, goal in GOALS.items():
    r = by_key.get((setting, "leo", "leo"))
    if r is None:
      lines.append(f"LEO >= {goal}% on {setting}: not run")
      continue
    acc = 100 * r["mean_accuracy"]
    lines.append(f"LEO >= {goal}% on {setting}: {'met' if acc >= goal else 'MISSED'} "
                 f"({acc:.2f}%)")
  leo, msgd = by_key.get(("20way1shot", "leo", "leo")), by_key.get(("20way1shot", "metasgd", "leo"))
  if leo is None or msgd is None:
    lines.append("LEO above Meta-SGD on 20way1shot, disjoint 95% intervals: not run")
  else:
    disjoint = leo["mean_accuracy"] - leo["ci95"] > msgd["mean_accuracy"] + msgd["ci95"]
    lines.append(
        f"LEO above Meta-SGD on 20way1shot, disjoint 95% intervals: "
        f"{'met' if disjoint else 'MISSED'} (LEO {_cell(leo)}, Meta-SGD {_cell(msgd)})")
  return lines


def run(config: PipelineConfig) -> dict[str, Any]:
  """Runs the three stages; returns and writes the results (results.json, results.md)."""
  t0 = time.time()
  info = stage1(config)
  embedding_dim = int(info["embedding_dim"])
  _log(f"stage 1 done [{time.time() - t0:.0f}s]: {embedding_dim}-d features, NCM "
       f"{info['ncm_setting']} val {100 * info['ncm']['val']['accuracy']:.2f}%, test "
       f"{100 * info['ncm']['test']['accuracy']:.2f}%")
  results = stage2(config, embedding_dim)
  studies = stage3(config, embedding_dim)
  figures = []
  for setting in config.figure_settings:
    if not config.figure_tasks or "leo" not in config.models or setting not in config.settings:
      continue
    from leo_tf.classification import latent_figure  # pylint: disable=g-import-not-at-top
    path = os.path.join(config.output_dir, f"latents_{setting}.png")
    _log(f"figure 4: codes of {config.figure_tasks} meta-validation tasks -> {path}")
    figures.append(latent_figure.make_figure(os.path.join(config.output_dir, setting, "leo"),
                                             path, config.figure_tasks))
  exports = export_served_model(config, embedding_dim)
  table = results_table(results, config.settings)
  goals = goals_report(results)
  if studies:
    table = (f"Stage 2 (meta-trained on the meta-training classes; ± is the 95% interval over "
             f"tasks):\n\n{table}\n\nStage 3 (trained again on the meta-training and "
             f"meta-validation classes, {config.stage3_seeds} seeds):\n\n{stage3_table(studies)}")
  summary = {"results": results, "stage1": {k: info[k] for k in
                                            ("embedding_dim", "ncm", "ncm_setting", "best_epoch")},
             "figures": figures, "exports": exports, "goals": goals, "seconds": time.time() - t0,
             "config": dataclasses.asdict(config), "stage3": studies}
  os.makedirs(config.output_dir, exist_ok=True)
  # Readers (and a repeated command) see complete files or none.
  atomic.write_json_atomically(os.path.join(config.output_dir, "results.json"), summary)
  markdown = table + "\n\n" + "\n".join(f"- {g}" for g in goals) + "\n"
  atomic.atomic_write(os.path.join(config.output_dir, "results.md"),
                   lambda f: f.write(markdown.encode("utf-8")))
  _log(f"done in {time.time() - t0:.0f}s\n{table}\n" + "\n".join(goals))
  return summary


# The flags whose values --quick sets itself (it keeps --data_dir, --output_dir,
# --flagfile_dir and --overwrite_embeddings).
_QUICK_SETS = ("embeddings_path", "pretrain_epochs", "settings", "models", "ablations",
               "ablation_settings", "figure_tasks", "extra_flags", "stage3_seeds",
               "stage3_metatest_tasks", "stage3_flags")
QUICK_OUTPUT_DIR = "runs/omniglot_quick"  # --output_dir of --quick when none is given


def define_flags(flag_values: flags.FlagValues | None = None) -> None:
  """Defines the command's flags in flag_values (absl's FLAGS by default)."""
  d = PipelineConfig()
  fv = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)
  flags.DEFINE_boolean("quick", False,
                       "Run quick_config(), the test suite's reduced run (a few minutes: a small "
                       "stage 1, LEO on 5-way 1-shot, figure 4 on 100 tasks), under "
                       f"--output_dir (default {QUICK_OUTPUT_DIR}); only --data_dir, "
                       "--flagfile_dir and --overwrite_embeddings go with it.", **fv)
  flags.DEFINE_string("data_dir", d.data_dir, "The shared Omniglot folder.", **fv)
  flags.DEFINE_string("embeddings_path", d.embeddings_path, "Stage-1 output (stage-2 data_path).",
                      **fv)
  flags.DEFINE_string("output_dir", d.output_dir,
                      "Runs, results table and figure (with --quick: embeddings/ and runs/ "
                      f"under it, default {QUICK_OUTPUT_DIR}).", **fv)
  flags.DEFINE_string("flagfile_dir", d.flagfile_dir, "Folder of omniglot_<setting>.flags.", **fv)
  flags.DEFINE_integer("pretrain_epochs", d.pretrain.epochs, "Stage-1 epochs.", **fv)
  flags.DEFINE_list("settings", list(d.settings), f"Settings to run, of {SETTINGS}.", **fv)
  flags.DEFINE_list("models", list(d.models), f"Models to run, of {MODELS}.", **fv)
  flags.DEFINE_list("ablations", list(d.ablations),
                    "LEO table-2 ablations to run as well (empty: none).", **fv)
  flags.DEFINE_list("ablation_settings", list(d.ablation_settings), "Where the ablations run.",
                    **fv)
  flags.DEFINE_integer("figure_tasks", d.figure_tasks, "Tasks in figure 4 (0: none).", **fv)
  flags.DEFINE_boolean("overwrite_embeddings", False, "Redo stage 1.", **fv)
  flags.DEFINE_list("extra_flags", [], "Flags appended to every leo_tf.train command.", **fv)
  flags.DEFINE_integer("stage3_seeds", d.stage3_seeds,
                       "Stage 3: seeds per run, trained on train + val (0: no stage 3).", **fv)
  flags.DEFINE_integer("stage3_metatest_tasks", d.stage3_metatest_tasks,
                       "Stage 3: meta-test tasks per seed.", **fv)
  flags.DEFINE_list("stage3_flags", [], "Flags appended to every leo_tf.reproduce command.",
                    **fv)


def config_from_flags(flag_values: flags.FlagValues) -> PipelineConfig:
  """The PipelineConfig the parsed flags ask for (the flags of define_flags).

  With --quick: quick_config(--data_dir, --output_dir, --flagfile_dir), with
  --overwrite_embeddings; --output_dir defaults to QUICK_OUTPUT_DIR.

  Raises:
    ValueError: --quick with a flag it sets itself (named), or a bad setting
      (see PipelineConfig).
  """
  f = flag_values
  if f.quick:
    clashing = [f"--{name}" for name in _QUICK_SETS if f[name].present]
    if clashing:
      them = "it" if len(clashing) == 1 else "them"
      raise ValueError(
          f"--quick runs quick_config(), which sets {', '.join(clashing)} itself; drop {them}, "
          f"or drop --quick to choose {them}.")
    work_dir = f.output_dir if f["output_dir"].present else QUICK_OUTPUT_DIR
    config = quick_config(f.data_dir, work_dir, flagfile_dir=f.flagfile_dir)
    return dataclasses.replace(config, overwrite_embeddings=f.overwrite_embeddings)
  return PipelineConfig(
      data_dir=f.data_dir, embeddings_path=f.embeddings_path, output_dir=f.output_dir,
      flagfile_dir=f.flagfile_dir,
      pretrain=dataclasses.replace(OMNIGLOT_PRETRAIN, epochs=f.pretrain_epochs),
      settings=tuple(f.settings), models=tuple(f.models), ablations=tuple(f.ablations),
      ablation_settings=tuple(f.ablation_settings), figure_tasks=f.figure_tasks,
      overwrite_embeddings=f.overwrite_embeddings, extra_flags=tuple(f.extra_flags),
      stage3_seeds=f.stage3_seeds, stage3_metatest_tasks=f.stage3_metatest_tasks,
      stage3_flags=tuple(f.stage3_flags))


def main(argv):
  progress.start_command(argv, "leo_tf.images.omniglot_pipeline")
  try:
    config = config_from_flags(flags.FLAGS)
  except ValueError as e:
    progress.command_error("leo_tf.images.omniglot_pipeline", str(e))
  try:
    run(config)
  except (ValueError, RuntimeError, FileNotFoundError) as e:
    sys.exit(f"leo_tf.images.omniglot_pipeline: error: {e}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=progress.flags_parser("leo_tf.images.omniglot_pipeline"))
