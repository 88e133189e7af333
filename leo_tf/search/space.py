"""The search space: which training settings a search samples, over what range, on what scale.

A space file has one setting per line, named as its training flag, with its
range and scale; `#` starts a comment (search_space.txt at the repository's
root is the default, the six settings of the paper's table 6 and n_z):

    # setting                     low     high    scale
    outer_lr                      1e-5    1e-2    log      # eta
    dropout_rate                  0.0     0.7     linear
    num_latents                   16      256     log      # an integer flag: integers

Integer flags are sampled as integers. Every setting is checked against the
run configuration before any trial starts: an unknown name, an empty or
inverted range, a log range that reaches 0, or a bound the configuration
refuses (dropout_rate 1.0) is a ValueError naming the file and line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Mapping, Sequence

SCALES = ("linear", "log")
# Settings of the outer loop a search may sample (beside every numeric field of
# the model's configuration, but the features' size).
OUTER_SETTINGS = ("outer_lr", "num_steps_limit", "metatrain_batch_size", "gradient_threshold",
                  "gradient_norm_threshold")
NOT_SEARCHABLE = ("embedding_dim",)  # fixed by the features


@dataclasses.dataclass(frozen=True)
class Setting:
  """One searched setting: its flag, its range [low, high] and its scale."""

  name: str  # the training flag, e.g. "kl_weight"
  low: float
  high: float
  log: bool  # sampled uniformly in log(value) (else in value)
  integer: bool  # an integer flag: sampled as an integer
  where: str = ""  # "search_space.txt, line 4" for messages


@dataclasses.dataclass(frozen=True)
class Field:
  """Where a setting lives in a run configuration: config.<section>.<field>."""

  section: str  # "model" or "outer"
  field: str  # the configuration's name (the flag's, but where FLAG_NAMES says otherwise)
  integer: bool


def searchable(config, flag_names: Mapping[str, str]) -> dict[str, Field]:
  """flag name -> Field, for every setting of `config` (a run configuration) a space may name.

  flag_names maps a configuration field to its flag where the two differ
  (command_line.FLAG_NAMES[problem], e.g. num_samples -> regression_num_samples).
  """
  fields = {}
  for section, names in (("model", None), ("outer", OUTER_SETTINGS)):
    for f in dataclasses.fields(getattr(config, section)):
      if names is not None and f.name not in names:
        continue
      if f.name in NOT_SEARCHABLE or f.type not in ("int", "float"):
        continue
      fields[flag_names.get(f.name, f.name)] = Field(section, f.name, f.type == "int")
  return fields


def _number(token: str, what: str, where: str) -> float:
  try:
    return float(token)
  except ValueError:
    raise ValueError(f"{where}: {what} must be a number, got {token!r}.") from None


def parse_space(text: str, source: str, fields: Mapping[str, Field]) -> tuple[Setting, ...]:
  """The settings of a space file's text (see the module docstring), checked line by line.

  Args:
    text: the file's contents.
    source: its name, for messages.
    fields: what searchable() returns for the base run configuration.
  """
  settings: list[Setting] = []
  for number, line in enumerate(text.splitlines(), start=1):
    where = f"{source}, line {number}"
    tokens = line.split("#", 1)[0].split()
    if not tokens:
      continue
    if len(tokens) != 4:
      raise ValueError(f"{where}: expected `setting low high scale` (e.g. `kl_weight 1e-4 10 "
                       f"log`), got {line.strip()!r}.")
    name, low_text, high_text, scale = tokens
    if name not in fields:
      close = difflib.get_close_matches(name, list(fields), n=1)
      hint = f" Did you mean {close[0]}?" if close else ""
      raise ValueError(f"{where}: unknown setting {name!r}.{hint} Settings a search can sample: "
                       f"{', '.join(sorted(fields))}.")
    if any(s.name == name for s in settings):
      raise ValueError(f"{where}: {name} is listed twice; keep one line per setting.")
    if scale not in SCALES:
      raise ValueError(f"{where}: scale must be one of {SCALES}, got {scale!r}.")
    low, high = _number(low_text, "low", where), _number(high_text, "high", where)
    if not (math.isfinite(low) and math.isfinite(high)):
      raise ValueError(f"{where}: {name}'s range must be finite, got [{low}, {high}].")
    if low >= high:
      raise ValueError(f"{where}: {name}'s range [{low_text}, {high_text}] is "
                       f"{'empty' if low == high else 'inverted'}: low must be below high "
                       f"(to fix a setting, put it in the base flagfile instead).")
    integer = fields[name].integer
    if integer and not (low.is_integer() and high.is_integer()):
      raise ValueError(f"{where}: --{name} is an integer flag; its range must be integers, got "
                       f"[{low_text}, {high_text}].")
    if scale == "log" and low <= 0:
      raise ValueError(f"{where}: {name}'s log range [{low_text}, {high_text}] reaches "
                       f"{'0' if low == 0 else 'below 0'}; a log scale needs low > 0 (e.g. 1e-8), "
                       f"or use the linear scale.")
    settings.append(Setting(name, low, high, scale == "log", integer, where))
  if not settings:
    raise ValueError(f"{source}: no setting to search; list at least one, e.g. `kl_weight 1e-4 "
                     f"10 log`.")
  return tuple(settings)


def read_space(path: str, fields: Mapping[str, Field]) -> tuple[Setting, ...]:
  """parse_space of the file at `path`."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as e:
    raise ValueError(f"cannot read the search space {path!r} ({e.strerror}); pass --space=<file> "
                     f"(search_space.txt at the repository's root is the default).") from None
  return parse_space(text, path, fields)


def apply(config, params: Mapping[str, Any], fields: Mapping[str, Field], **top_level):
  """`config` with the sampled settings (flag name -> value) and top-level fields replaced.

  The configuration's own checks run (dataclasses.replace), so a value it
  refuses is a ValueError.
  """
  sections: dict[str, dict[str, Any]] = {}
  for name, value in params.items():
    field = fields[name]
    sections.setdefault(field.section, {})[field.field] = int(value) if field.integer else value
  replaced = {section: dataclasses.replace(getattr(config, section), **changes)
              for section, changes in sections.items()}
  return dataclasses.replace(config, **replaced, **top_level)


def values(config, settings: Sequence[Setting], fields: Mapping[str, Field]) -> dict[str, Any]:
  """The base configuration's own value of each searched setting (flag name -> value).

  Raises:
    ValueError: a value outside its setting's range (it could not be a trial
      of this space), naming the setting and the range.
  """
  found = {}
  for s in settings:
    field = fields[s.name]
    value = getattr(getattr(config, field.section), field.field)
    if not s.low <= value <= s.high:
      raise ValueError(
          f"--base_first: the base's {s.name}={value} is outside the space's range "
          f"[{s.low:g}, {s.high:g}] ({s.where}); widen the range or leave --base_first out.")
    found[s.name] = value
  return found


def check_against(config, settings: Sequence[Setting], fields: Mapping[str, Field]) -> None:
  """Builds `config` with each setting at each end of its range; a refused end is a ValueError.

  (The base's other settings stay as they are: e.g. max_weights_stddev's lower
  bound depends on embedding_dim.)
  """
  for s in settings:
    for end, value in (("low", s.low), ("high", s.high)):
      try:
        apply(config, {s.name: value}, fields)
      except ValueError as e:
        raise ValueError(f"{s.where}: {s.name}'s {end} end {value:g} is not a valid value: {e}") \
            from None


def suggest(trial, settings: Sequence[Setting]) -> dict[str, Any]:
  """Samples every setting in an Optuna trial: flag name -> value (int for integer flags)."""
  params = {}
  for s in settings:
    if s.integer:
      params[s.name] = trial.suggest_int(s.name, int(s.low), int(s.high), log=s.log)
    else:
      params[s.name] = trial.suggest_float(s.name, s.low, s.high, log=s.log)
  return params


def describe(settings: Sequence[Setting]) -> list[dict[str, Any]]:
  """The settings as JSON-able records (stored with the study, compared on resume)."""
  return [{"name": s.name, "low": s.low, "high": s.high, "scale": "log" if s.log else "linear",
           "integer": s.integer} for s in settings]
