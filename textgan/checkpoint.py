"""Checkpoints: safetensors for every tensor, JSON for everything else. Never pickle.

A checkpoint is a folder ``checkpoints/step_00001234/`` with

- ``tensors.safetensors``: module weights (``model/<name>/<param>``), optimizer moments
  (``optim/<name>/<index>/<key>``) and the torch RNG states (CPU, and each GPU in use);
- ``state.json``: step, config, optimizer hyper-parameters, baselines, Python RNG state, and
  anything else the recipe passes.

It is written into a temporary folder, flushed, and renamed into place, so a crash never
leaves a half-written checkpoint under a final name. ``state.json`` records the SHA-256 of the
tensor file, and loading verifies it before touching any module, so a checkpoint damaged
afterwards (a full disk, a bad copy) is detected and the caller can fall back to an older one.
The last ``keep`` are kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

try:
    import fcntl  # the run-folder lock (lock_folder); POSIX only
except ImportError:
    fcntl = None

PREFIX = "step_"


LOCK = ".lock"  # in a run (or sweep) folder: held, by flock, by the process writing there
_HELD: dict[str, list] = {}  # resolved folder -> [descriptor of its LOCK, holders in this process]


def _owner(fd: int) -> str:
    """The process id the lock's holder wrote into it, or '' where it has not (yet)."""
    owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return owner if owner.isdigit() else ""


def _flock(fd: int, folder: Path, in_use: Callable[[Path, str], Exception]) -> bool:
    """Take ``fd``'s exclusive lock without waiting: True; False where the file system has no locks. Where another
    process holds it, ``fd`` is closed and ``in_use(folder, its holder's process id or '')`` raised."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        error = in_use(folder, _owner(fd))
        os.close(fd)
        raise error from None
    except OSError:
        return False


def lock_folder(folder: Path, in_use: Callable[[Path, str], Exception]) -> Callable[[], None] | None:
    """Take ``folder``'s lock for this process (:data:`LOCK`, an exclusive ``flock``, with the process id written
    into it), or add to this process's hold on it; return the function that lets go (once per take), or None where
    there are no such locks (not POSIX, a file system without them). Another process's hold raises
    ``in_use(folder, its process id or '')``. The kernel drops a lock with its process, so a process killed by
    SIGKILL or a crash leaves none behind to clear; and a holder in this process that stopped with an exception
    (alive in a traceback) does not lock out the next take in the same process."""
    if fcntl is None:
        return None
    key = str(folder.resolve())
    held = _HELD.get(key)
    if held is None:
        try:
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # another user's lock file: flock needs only to read it
            try:
                fd = os.open(folder / LOCK, os.O_RDONLY)
            except OSError:
                return None
        except OSError:
            return None
        if not _flock(fd, folder, in_use):  # no locks on this file system: go on unguarded
            os.close(fd)
            return None
        with contextlib.suppress(OSError):  # the holder's id, for another process's message (not on a read-only file)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held = _HELD[key] = [fd, 0]
    held[1] += 1

    def let_go():
        held[1] -= 1
        if held[1] == 0 and _HELD.get(key) is held:
            del _HELD[key]
            os.close(held[0])  # closing the descriptor drops the lock
    return let_go


def check_not_in_use(folder: Path, in_use: Callable[[Path, str], Exception]) -> None:
    """Raise ``in_use(folder, owner)`` at once where another process holds ``folder``'s lock (:func:`lock_folder`):
    before a run loads its data and builds its models. Creates nothing and keeps nothing."""
    if fcntl is None:
        return
    if str(folder.resolve()) in _HELD:  # this process's own (or one it has not let go of yet)
        return
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return
    _flock(fd, folder, in_use)
    os.close(fd)  # and with it the lock this check took


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete, corrupted or does not match the run."""


class CheckpointMismatch(CheckpointError):
    """An intact checkpoint of another model or recipe: its weights or optimizers do not fit the run's."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _optimizer_split(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{name}/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_join(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix):].split("/", 1)
            state.setdefault(int(index), {})[field] = value
    for key, value in meta["scalars"].items():
        index, field = key.split("/", 1)
        state.setdefault(int(index), {})[field] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# errno values of a write that failed for the disk's sake, not the program's: full, over quota, read-only, failing
DISK_ERRORS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EIO", "EFBIG")
                        if hasattr(errno, name))


def write_failure(error: BaseException, path: Path) -> OSError | None:
    """``error``, raised while writing ``path``, as an OSError naming ``path`` where the disk refused the write
    (:data:`DISK_ERRORS`), or None. safetensors reports such a failure as its own error whose message holds the
    errno ("No space left on device (os error 28)")."""
    if isinstance(error, OSError):
        code, reason = error.errno, error.strerror or str(error)
    else:
        found = re.search(r"\(os error (\d+)\)", str(error))
        code = int(found.group(1)) if found else None
        reason = os.strerror(code) if code is not None else str(error)
    return OSError(code, reason, str(path)) if code in DISK_ERRORS else None


@contextlib.contextmanager
def writing(path: Path):
    """Inside it, a write that the disk refuses (:func:`write_failure`) is raised as an OSError naming ``path``,
    whatever library wrote it (tokenizers and safetensors raise errors of their own); other errors pass as they are."""
    try:
        yield
    except Exception as e:
        failed = write_failure(e, path)
        if failed is None:
            raise
        raise failed from None


def write_folder_atomic(final: Path, tmp: Path, write) -> Path:
    """Write the folder ``final`` whole or not at all: ``write(tmp)`` fills ``tmp``, a sibling cleared of
    what a crash left there, whose files are then flushed to disk before it takes ``final``'s place. A crash
    leaves the earlier ``final`` or none (and perhaps ``tmp``), never part of one."""
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(final):
            write(tmp)
            for path in tmp.rglob("*"):
                if path.is_file():
                    with open(path, "rb") as f:
                        os.fsync(f.fileno())
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)  # what was written of it: a full disk keeps none of its space
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def save_checkpoint(
    directory: str | Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write ``directory/step_<step>/`` atomically and prune to the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state(), **_cuda_rng_states()}
    optim_meta = {}
    seen: set[int] = set()
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            value = value.detach().cpu().contiguous()
            if value.data_ptr() in seen:  # tied weights (embedding = output layer): store a copy
                value = value.clone()
            seen.add(value.data_ptr())
            tensors[f"model/{name}/{key}"] = value
    for name, optimizer in optimizers.items():
        optim_tensors, optim_meta[name] = _optimizer_split(name, optimizer)
        tensors.update(optim_tensors)
    python_rng = random.getstate()
    meta = dict(state, step=step, optimizers=optim_meta,
                python_rng=[python_rng[0], list(python_rng[1]), python_rng[2]])

    def write(tmp: Path) -> None:
        tmp.mkdir()
        save_file(tensors, tmp / "tensors.safetensors")
        meta["tensors_sha256"] = _sha256(tmp / "tensors.safetensors")
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")

    final = write_folder_atomic(directory / f"{PREFIX}{step:08d}", directory / f".tmp_{PREFIX}{step:08d}", write)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and (p / "state.json").is_file() and (p / "tensors.safetensors").is_file()]
    return sorted(found, key=lambda p: p.name)


def _cuda_rng_states() -> dict[str, torch.Tensor]:
    """Each visible GPU's generator state, ``rng/cuda/<index>``: sampling on a GPU draws from these,
    so a resumed GPU run must restore them to draw what an uninterrupted run would."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {f"rng/cuda/{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}


def _set_cuda_rng_states(tensors: dict[str, torch.Tensor]) -> None:
    """Restore the GPU generators a checkpoint holds, on the GPUs this machine has (none on a CPU)."""
    if not torch.cuda.is_available():
        return
    for i in range(torch.cuda.device_count()):
        state = tensors.get(f"rng/cuda/{i}")
        if state is not None:
            torch.cuda.set_rng_state(state.cpu(), device=i)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """The verified tensors and JSON state of a checkpoint folder; :class:`CheckpointError` if damaged."""
    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        expected = meta.get("tensors_sha256")
        if expected is not None and _sha256(path / "tensors.safetensors") != expected:
            raise CheckpointError(f"{path}: tensors.safetensors fails its checksum (corrupted or truncated)")
        tensors = load_file(path / "tensors.safetensors", device=str(map_location))
    except CheckpointError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:  # missing file, bad JSON, bad safetensors header
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    except Exception as e:  # safetensors raises its own error type for damaged files
        if type(e).__module__.startswith("safetensors"):
            raise CheckpointError(f"{path}: unreadable tensors ({e})") from None
        raise
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointError(f"{path}: state.json holds no step")
    return tensors, meta


def load_checkpoint(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore modules, optimizers and RNG states in place; return the JSON state.

    Raises, before changing anything, :class:`CheckpointError` when the checkpoint is unreadable
    or fails its checksum, and :class:`CheckpointMismatch` when it lacks a module or optimizer
    that the caller restores or its weights have other names or shapes than the modules'.
    """
    path = Path(path)
    tensors, meta = read_checkpoint(path, map_location)
    for name in modules:
        if not any(k.startswith(f"model/{name}/") for k in tensors):
            raise CheckpointMismatch(f"{path} holds no weights for {name!r}")
    for name in optimizers:
        if name not in meta.get("optimizers", {}):
            raise CheckpointMismatch(f"{path} holds no state for optimizer {name!r}")
    weights = {name: {k[len(f"model/{name}/"):]: v for k, v in tensors.items() if k.startswith(f"model/{name}/")}
               for name in modules}
    for name, module in modules.items():  # every module checked before any is changed
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in weights[name].items()}
        if found != expected:
            differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
            detail = ", ".join(f"{k} {found.get(k, 'missing')} vs {expected.get(k, 'none')}" for k in differ[:2])
            raise CheckpointMismatch(f"{path}: weights of {name!r} do not fit the model ({len(differ)} differ; "
                                     f"checkpoint vs model: {detail})")
    for name, module in modules.items():
        module.load_state_dict(weights[name])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(_optimizer_join(name, tensors, meta["optimizers"][name]))
    torch.set_rng_state(tensors["rng/torch"].cpu())
    _set_cuda_rng_states(tensors)
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return meta
