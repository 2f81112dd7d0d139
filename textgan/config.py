"""Recipe configuration: a dataclass with one-line help per field, YAML presets, key=value overrides.

    python -m textgan.recipes.scratchgan                         # the dataclass defaults
    python -m textgan.recipes.scratchgan recipes/coco_scratchgan.yaml steps=2000 seed=1
    python -m textgan.recipes.scratchgan --help                  # every field, its type and default

Later sources win: defaults, then the YAML preset, then ``key=value`` pairs in order.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import sys
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


def arg(default: Any, help: str) -> Any:
    """A config field with a one-line description."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check_choice(name: str, value: str, allowed) -> None:
    """Raise a ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def env_choice(variable: str, choices: tuple[str, ...]) -> str:
    """The environment variable ``variable``, one of ``choices`` (case and surrounding spaces ignored; the first
    when unset or blank), or a :class:`ConfigError` that names the choices: textgan's process-wide settings
    (``TEXTGAN_CPU_MATMUL``, ``TEXTGAN_MALLOC``), read by the entry points before anything else."""
    choice = os.environ.get(variable, "").strip().lower() or choices[0]
    if choice not in choices:
        raise ConfigError(f"{variable}={os.environ[variable]!r} is not a choice: set it to {', '.join(choices)}, "
                          "or unset it")
    return choice


def check_bounds(config, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Raise a ConfigError unless the named fields are > 0 (``positive``) or >= 0 (``non_negative``)."""
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be zero or positive, got {getattr(config, name)}")


def check_unit_interval(config, names: tuple[str, ...], closed: bool = False) -> None:
    """Raise a ConfigError unless each named field is in [0, 1) (dropout rates, decays), or in
    [0, 1] with ``closed`` (fractions, discounts)."""
    for name in names:
        value = getattr(config, name)
        if not (0 <= value <= 1 if closed else 0 <= value < 1):
            raise ConfigError(f"{name} must be in [0, 1{']' if closed else ')'}, got {value}")


def check_types(config) -> None:
    """Raise a ConfigError unless every field of the dataclass ``config`` holds a value of its declared type (a
    finite number for a float): what parsing a command line or preset guarantees, checked for a config made in
    Python, where ``steps="100"`` would fail as a TypeError deep inside and ``steps=1.5`` or a nan rate would run.
    A numpy number or bool (``steps=np.int64(500)``, a rate from ``np.linspace``) is replaced by Python's of the
    same value, which transformers' model configs and YAML require."""
    for name, typ in _types(type(config)).items():
        value = getattr(config, name)
        if typ is bool:
            numpy = sys.modules.get("numpy")  # a numpy bool exists only once numpy is imported: no import here
            ok, what = isinstance(value, (bool, numpy.bool_) if numpy else bool), "true or false (a bool)"
        elif typ is int:
            ok, what = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
        elif typ is float:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            what = "a finite number"
        elif typ is str:
            ok, what = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise ConfigError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
        if typ in (bool, int, float) and type(value) is not typ:
            setattr(config, name, typ(value))


def check_sentences(value, name: str = "", items: str = "sentences") -> None:
    """A TypeError for one string (or bytes) given where a list of sentences belongs: iterated, it would be taken
    a character a sentence, and the call would return a plausible number or vocabulary that means nothing.
    ``name``: the argument's, for the message; ``items``: what the list holds, if not sentences."""
    if isinstance(value, (str, bytes)):
        what = f"{name} must be" if name else "expected"
        raise TypeError(f"{what} a list of {items}, got one {type(value).__name__}; wrap it in a list")


def check_vocab_size(config) -> None:
    """Raise a ConfigError unless ``config.vocab_size`` is 0 (every word) or leaves room for a word beside the
    tokenizer's special tokens (with 1-4 every word was <unk>)."""
    from .tokenization import SPECIAL_TOKENS

    if 0 < config.vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size must be 0 (every word) or more than the {len(SPECIAL_TOKENS)} special tokens "
                          f"({', '.join(SPECIAL_TOKENS)}), got {config.vocab_size}")


def check_heads(config) -> None:
    """Raise a ConfigError unless ``config.d_model`` splits evenly into ``config.n_heads`` heads."""
    if config.d_model % config.n_heads:
        raise ConfigError(f"d_model ({config.d_model}) must be a multiple of n_heads ({config.n_heads})")


def parse_betas(text: str) -> tuple[float, float]:
    """Adam betas written as ``0.5,0.999``."""
    try:
        b1, b2 = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"betas must be two numbers like 0.5,0.999, got {text!r}") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ConfigError(f"betas must each be in [0, 1), like 0.5,0.999, got {text!r}")
    return b1, b2


def _types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a YAML value) to ``typ``."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value) if not isinstance(value, str) else int(value.replace("_", ""))
        except (ValueError, TypeError, OverflowError):  # TypeError: a YAML list or mapping; OverflowError: inf
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # nan or inf would train on silently, or crash steps later
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else "; run with --help to list the keys"
    return ConfigError(f"unknown config key {key!r}{hint}")


def apply_overrides(config, overrides: dict[str, Any]):
    """Return a copy of ``config`` with ``overrides`` applied, each checked and converted."""
    types = _types(type(config))
    valid = [f.name for f in dataclasses.fields(config)]
    values = {}
    for key, value in overrides.items():
        if key not in types:
            raise _unknown(key, valid)
        values[key] = _coerce(key, value, types[key])
    return dataclasses.replace(config, **values)


def preset_folder() -> Path | None:
    """The presets that ship with textgan: ``textgan/presets`` in an installed wheel, ``recipes/`` in a
    source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "presets", here.parent / "recipes"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    return None


def find_preset(path: str | Path) -> Path:
    """``path`` if it is a file; else the shipped preset of that file name, so that the README's
    ``recipes/pure_scratchgan.yaml`` works from any folder after ``pip install textgan``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a YAML preset file")
    shipped = preset_folder()
    if shipped is not None and (shipped / path.name).is_file():
        return shipped / path.name
    names = ", ".join(sorted(p.name for p in shipped.glob("*.yaml"))) if shipped is not None else "none found"
    raise ConfigError(f"{path}: no such preset file; give a YAML file or one of the shipped presets ({names})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = find_preset(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start}); re-encode it as UTF-8") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not a valid YAML file ({type(e).__name__}{at}); fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of config keys to values")
    return data


def _unreadable(item: str, following: str | None, cls) -> ConfigError:
    """The error for ``item``, an argument that is neither key=value nor a leading preset: where it names a
    field, or nearly (``--steps=3``, ``--steps 3``, ``--stpes=3``, ``steps``), how to write it."""
    name, _, value = item.lstrip("-").partition("=")
    if item.startswith("-") and not value and following is not None and "=" not in following:
        value = following  # --steps 3
    valid = [f.name for f in dataclasses.fields(cls)]
    key = name.replace("-", "_")
    close = [key] if key in valid else difflib.get_close_matches(key, valid, n=1)
    if close:
        return ConfigError(f"cannot read argument {item!r}; write it as {close[0]}={value or 'VALUE'} (key=value pairs, "
                           "after an optional preset .yaml)")
    return ConfigError(f"cannot read argument {item!r}; give key=value pairs (and optionally a preset .yaml first)")


def help_text(cls, prog: str) -> str:
    lines = [f"usage: {prog} [PRESET.yaml] [key=value ...]", "", (cls.__doc__ or "").strip(), "", "fields:"]
    types = _types(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        typ = getattr(types[f.name], "__name__", str(types[f.name]))
        lines.append(f"  {f.name:<24} {typ:<6} default {default!r:<14} {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_args(cls, argv: list[str] | None = None, prog: str = "recipe"):
    """Build a ``cls`` config from ``argv``: an optional YAML preset then key=value pairs.

    Prints help and exits 0 on ``-h``/``--help``. Raises :class:`ConfigError` on bad input.
    """
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(cls, prog))
        raise SystemExit(0)
    config = cls()
    overrides: dict[str, Any] = {}
    for position, item in enumerate(argv):
        if "=" in item and not item.startswith("-"):
            key, value = item.split("=", 1)
            overrides[key.strip()] = value
        elif position == 0 and item.endswith((".yaml", ".yml")):
            preset = load_yaml(item)
            try:
                config = apply_overrides(config, preset)
            except ConfigError as e:  # which file holds the bad key or value
                raise ConfigError(f"{item}: {e}") from None
        else:
            raise _unreadable(item, argv[position + 1] if position + 1 < len(argv) else None, cls)
    config = apply_overrides(config, overrides)
    check = getattr(config, "check", None)
    if check is not None:
        check()
    return config


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)
