"""Running a recipe from the command line: parse the config, turn known errors into one line."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def run_recipe(config_cls, main, prog: str, argv: list[str] | None = None) -> int:
    from .. import distributed, memory
    from ..checkpoint import DISK_ERRORS
    from ..config import ConfigError, parse_args
    from ..data import DataError
    from ..models import onednn
    from ..models.generator import ModelError
    from ..training import Interrupted, NonFiniteError, graceful_stop

    created = None  # the run folder, when this invocation creates it
    alike = True  # what could go wrong so far (arguments, environment) goes wrong alike in every torchrun process
    try:
        config = parse_args(config_cls, argv, prog=prog)
        onednn.setting()  # a bad TEXTGAN_CPU_MATMUL stops the run here, as a bad key would
        memory.keep_freed_memory()  # (or a bad TEXTGAN_MALLOC) before the run allocates anything large
        out_dir = Path(config.out_dir).absolute()  # never empty: every recipe's config checks it
        while not out_dir.parent.exists():  # the outermost folder this run would create
            out_dir = out_dir.parent
        created = None if out_dir.exists() else out_dir
        alike = False  # from here on an error can be one process's own (its GPU, say): each says its own
        distributed.init(getattr(config, "device", "auto"))
        with graceful_stop():
            main(config)
    except (ConfigError, DataError, ModelError) as e:
        if alike:  # a bad key under torchrun: one line, not one a process
            distributed.say_for_all(str(e))
        else:
            print(f"error: {e}", file=sys.stderr)
        if created is not None and distributed.is_main():  # nothing half-made is left behind
            shutil.rmtree(created, ignore_errors=True)
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
    except BrokenPipeError:  # the reader of its output has gone (`| head`): stop as a SIGPIPE would, no traceback
        return distributed.reader_gone()  # (a run keeps its checkpoints: resume=true goes on from the last)
    except OSError as e:  # after BrokenPipeError, one of them
        if e.errno not in DISK_ERRORS:
            raise
        print(f"error: cannot write {e.filename or 'to the run folder'}: {e.strerror}; the run stopped with its "
              "checkpoints as they were: free space (or fix the disk), then run the same command with resume=true",
              file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    return 0
