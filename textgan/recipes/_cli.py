"""Running a recipe from the command line: parse the config, turn known errors into one line."""

from __future__ import annotations

import sys


def run_recipe(config_cls, main, prog: str, argv: list[str] | None = None) -> int:
    from ..config import ConfigError, parse_args
    from ..data import DataError
    from ..models.generator import ModelError
    from ..training import Interrupted, NonFiniteError, graceful_stop

    try:
        config = parse_args(config_cls, argv, prog=prog)
        with graceful_stop():
            main(config)
    except (ConfigError, DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # before the training loop: nothing to save
        print("interrupted; nothing was saved", file=sys.stderr)
        return 130
    return 0
