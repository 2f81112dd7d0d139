import json

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
