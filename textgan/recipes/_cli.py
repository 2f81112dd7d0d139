"""Running a recipe from the command line: parse the config, turn known errors into one line."""

from __future__ import annotations

import sys


def run_recipe(config_cls, main, prog: str, argv: list[str] | None = None) -> int:
    from ..config import ConfigError, parse_args
    from ..data import DataError
    from ..models.generator import ModelError

    try:
        config = parse_args(config_cls, argv, prog=prog)
        main(config)
    except (ConfigError, DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with resume=true", file=sys.stderr)
        return 130
    return 0
