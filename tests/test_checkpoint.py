import json

import pytest
import torch
from torch.testing import assert_close

from textgan.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint


def _model():
    return torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))


def test_roundtrip_restores_weights_optimizer_and_rng(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        loss = model(torch.tensor([1, 2])).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(123)
    path = save_checkpoint(tmp_path, 3, {"m": model}, {"m": opt}, {"note": "hi"})
    after_save = torch.rand(3)

    other = _model()
    other_opt = torch.optim.Adam(other.parameters(), lr=0.5)
    torch.manual_seed(999)
    state = load_checkpoint(path, {"m": other}, {"m": other_opt})
    assert state["step"] == 3 and state["note"] == "hi"
    assert_close(torch.rand(3), after_save)  # torch RNG restored
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other_opt.param_groups[0]["lr"] == 0.01
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], other_opt.state[q]["exp_avg"])
    # no pickle: the state is JSON and the tensors are safetensors
    json.loads((path / "state.json").read_text())
    assert (path / "tensors.safetensors").read_bytes()[:8] != b"\x80\x02"


def test_gpu_generator_states_are_saved_and_restored(tmp_path, monkeypatch):
    """A GPU run samples from the GPUs' generators; a checkpoint keeps each one's state and
    restores it on the GPUs the resuming machine has (the CUDA calls stood in for on a CPU)."""
    states = [torch.randint(0, 255, (16,), dtype=torch.uint8) for _ in range(2)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device, state.clone()))
    model = _model()
    path = save_checkpoint(tmp_path, 1, {"m": model}, {}, {})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # resumed on a machine with one GPU
    load_checkpoint(path, {"m": _model()}, {})
    assert list(restored) == [0] and torch.equal(restored[0], states[0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # and on a CPU: nothing to restore
    restored.clear()
    load_checkpoint(path, {"m": _model()}, {})
    assert restored == {}


def test_tied_weights_roundtrip(tmp_path, tiny_generator):
    path = save_checkpoint(tmp_path, 1, {"g": tiny_generator}, {}, {})
    from copy import deepcopy

    other = deepcopy(tiny_generator)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_checkpoint(path, {"g": other}, {})
    for a, b in zip(tiny_generator.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert other.lm_head.weight.data_ptr() == other.model.embed_tokens.weight.data_ptr()


def test_keeps_the_newest_and_ignores_partial(tmp_path):
    model = _model()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"m": model}, {}, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    (tmp_path / ".tmp_step_00000005").mkdir()  # a crash mid-write leaves only a temporary folder
    (tmp_path / "step_00000006").mkdir()  # or a folder without its files
    assert list_checkpoints(tmp_path)[-1].name == "step_00000004"


def _saved_run(tmp_path, steps=(1, 2, 3)):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    weights = {}
    for step in steps:
        with torch.no_grad():
            model[0].weight.add_(1.0)
        save_checkpoint(tmp_path, step, {"m": model}, {"m": opt}, {}, keep=5)
        weights[step] = model[0].weight.clone()
    return weights


def _restore(tmp_path, capsys):
    from types import SimpleNamespace

    from textgan.training import restore

    run = SimpleNamespace(config=SimpleNamespace(resume=True), checkpoints=tmp_path, truncate_log=lambda step: None,
                          start=lambda: None, writes=True)
    model = _model()
    state = restore(run, {"m": model}, {"m": torch.optim.Adam(model.parameters())}, "cpu")
    return state, model, capsys.readouterr().err


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    weights = _saved_run(tmp_path)
    newest = list_checkpoints(tmp_path)[-1] / "tensors.safetensors"
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in the weights: still a valid safetensors file, wrong checksum
    newest.write_bytes(bytes(data))
    state, model, err = _restore(tmp_path, capsys)
    assert state["step"] == 2 and torch.equal(model[0].weight, weights[2])
    assert "checksum" in err and "step_00000003" in err


def test_truncated_and_garbled_checkpoints_are_skipped(tmp_path, capsys):
    weights = _saved_run(tmp_path)
    third, second = list_checkpoints(tmp_path)[-1], list_checkpoints(tmp_path)[-2]
    tensors = third / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40])  # cut short by a crash
    (second / "state.json").write_text("{not json")
    state, model, err = _restore(tmp_path, capsys)
    assert state["step"] == 1 and torch.equal(model[0].weight, weights[1])
    assert err.count("skipping checkpoint") == 2


def test_no_usable_checkpoint_starts_from_scratch_with_a_warning(tmp_path, capsys):
    _saved_run(tmp_path, steps=(1,))
    (list_checkpoints(tmp_path)[0] / "tensors.safetensors").write_bytes(b"")
    state, _, err = _restore(tmp_path, capsys)
    assert state is None and "no usable checkpoint" in err


def test_mismatched_checkpoint_changes_nothing(tmp_path):
    import pytest

    from textgan.checkpoint import CheckpointError

    _saved_run(tmp_path, steps=(1,))
    other = torch.nn.Sequential(torch.nn.Embedding(7, 4), torch.nn.Linear(4, 7))
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(list_checkpoints(tmp_path)[0], {"m": other}, {})
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(list_checkpoints(tmp_path)[0], {"generator": other}, {})


@pytest.mark.skipif(not hasattr(__import__("os"), "pwrite"), reason="flock folder locks are POSIX only")
def test_a_lock_file_this_user_cannot_write_still_locks(tmp_path, monkeypatch):
    """Another user's .lock (mode 644) cannot be opened for writing, but flock needs only to read it: the run
    takes the lock through a read-only descriptor, where os.open used to end it with a PermissionError."""
    import errno
    import fcntl
    import os

    from textgan.checkpoint import LOCK, lock_folder

    (tmp_path / LOCK).write_text("123\n")
    real_open = os.open

    def open_(path, flags, *args):
        if str(path).endswith(LOCK) and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_)
    let_go = lock_folder(tmp_path, lambda folder, owner: AssertionError(owner))
    monkeypatch.undo()
    assert let_go is not None
    probe = os.open(tmp_path / LOCK, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):  # held
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        let_go()
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go of
    finally:
        os.close(probe)
    assert (tmp_path / LOCK).read_text() == "123\n"  # not its to rewrite
