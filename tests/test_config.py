import re

import pytest

from textgan.config import ConfigError, help_text, parse_args
from textgan.recipes.mle import MLEConfig
from textgan.recipes.scratchgan import ScratchGANConfig


def test_defaults_and_overrides():
    config = parse_args(ScratchGANConfig, ["steps=7", "normalize_advantages=true", "discount=0.5", "data=my.txt"])
    assert config.steps == 7 and config.normalize_advantages is True and config.discount == 0.5
    assert config.data == "my.txt"
    assert parse_args(ScratchGANConfig, []) == ScratchGANConfig()


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match="unknown config key 'stpes' \\(did you mean 'steps'\\?\\)"):
        parse_args(MLEConfig, ["stpes=3"])


@pytest.mark.parametrize("argv, bad, written", [
    (["--steps=3"], "--steps=3", "steps=3"),
    (["--steps", "3"], "--steps", "steps=3"),  # argparse's way
    (["--stpes=3"], "--stpes=3", "steps=3"),
    (["steps=2", "--gen-lr", "1e-4"], "--gen-lr", "gen_lr=1e-4"),
    (["steps=2", "disc_steps"], "disc_steps", "disc_steps=VALUE"),
    (["--steps", "lr=1"], "--steps", "steps=VALUE"),  # the next word is an argument of its own
])
def test_an_option_written_another_way_is_shown_as_key_value(argv, bad, written):
    with pytest.raises(ConfigError, match=f"^cannot read argument '{re.escape(bad)}'; write it as {re.escape(written)} "):
        parse_args(ScratchGANConfig, argv)
    with pytest.raises(ConfigError, match="^cannot read argument '--bogus'; give key=value pairs"):  # nothing like a key
        parse_args(ScratchGANConfig, ["--bogus"])


@pytest.mark.parametrize("item, message", [
    ("steps=ten", "steps: expected an integer"),
    ("lr=fast", "lr: expected a number"),
    ("resume=maybe", "resume: expected true or false"),
    ("batch_size=-4", "batch_size must be positive"),
    ("temperature=0", "temperature must be positive"),
    ("tokenizer=chars", "tokenizer must be one of"),
    ("lr=nan", "lr: expected a finite number"),
    ("lr=inf", "lr: expected a finite number"),
    ("steps=inf", "steps: expected an integer"),
    ("lr=-0.001", "lr must be positive"),
    ("grad_clip=0", "grad_clip must be positive"),  # clip_grad_norm_ with 0 would zero every gradient
    ("weight_decay=-1", "weight_decay must be zero or positive"),
    ("d_model=30", r"d_model \(30\) must be a multiple of n_heads \(4\)"),  # else a ValueError when the model is built
    ("vocab_size=3", "vocab_size must be 0 \\(every word\\) or more than the 4 special tokens"),  # was every word <unk>
])
def test_ill_typed_and_out_of_range_values(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(MLEConfig, [item])


@pytest.mark.parametrize("field, value, message", [
    ("steps", "100", r"steps must be an integer, got '100' \(str\)"),  # was a TypeError from a comparison
    ("steps", 1.5, "steps must be an integer"),  # was accepted, and range() failed once training began
    ("steps", None, "steps must be an integer"),
    ("batch_size", True, "batch_size must be an integer"),
    ("lr", "1e-3", "lr must be a finite number"),
    ("lr", float("nan"), "lr must be a finite number"),  # was accepted: nan <= 0 is False
    ("resume", "yes", r"resume must be true or false"),  # was accepted, and read as true
    ("data", 3, "data must be a string"),
])
def test_a_config_made_in_python_is_type_checked(field, value, message):
    """A config made in Python meets its check with what the command line's parsing guarantees: each field
    of its declared type, a float finite; a ConfigError naming the field, not a TypeError deep inside."""
    with pytest.raises(ConfigError, match=message):
        MLEConfig(**{field: value}).check()


def test_numpy_numbers_in_a_config_become_plain_ones():
    """``steps=np.int64(...)`` or a rate from ``np.linspace`` passes the check and becomes Python's int or float of
    the same value: transformers' model configs refuse numpy's int64 and yaml.safe_dump its numbers."""
    import numpy as np
    import yaml

    from textgan.config import to_dict

    rate = np.linspace(1e-4, 1e-3, 3)[1]
    config = MLEConfig(steps=np.int64(7), lr=rate, temperature=np.float32(0.5), grad_clip=2, resume=np.bool_(False))
    config.check()
    values = (config.steps, config.lr, config.temperature, config.grad_clip, config.resume)
    assert values == (7, float(rate), 0.5, 2.0, False)
    assert [type(v) for v in values] == [int, float, float, float, bool]
    assert yaml.safe_load(yaml.safe_dump(to_dict(config))) == to_dict(config)


def test_recipe_specific_checks():
    with pytest.raises(ConfigError, match="baseline must be one of"):
        parse_args(ScratchGANConfig, ["baseline=median"])
    with pytest.raises(ConfigError, match="discount must be in"):
        parse_args(ScratchGANConfig, ["discount=2"])
    for item, message in (("gen_lr=0", "gen_lr must be positive"), ("disc_lr=-1", "disc_lr must be positive"),
                          ("grad_clip=-1", "grad_clip must be positive"), ("disc_dropout=1", "disc_dropout must be in"),
                          ("baseline_decay=1.5", "baseline_decay must be in"), ("betas=0.5,1.0", "betas must each be in"),
                          ("disc_steps=0", "disc_steps must be positive")):
        with pytest.raises(ConfigError, match=message):
            parse_args(ScratchGANConfig, [item])


def test_yaml_preset_then_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("steps: 11\nlr: 0.01\n")
    config = parse_args(MLEConfig, [str(preset), "steps=12"])
    assert config.steps == 12 and config.lr == 0.01
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 1\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{bad}: unknown config key 'stepz' (did you mean 'steps'?)")):
        parse_args(MLEConfig, [str(bad)])  # the error names the preset that holds the key
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match="is a folder; give a YAML preset file"):
        parse_args(MLEConfig, [str(tmp_path / "folder.yaml")])
    with pytest.raises(ConfigError, match="no such preset"):
        parse_args(MLEConfig, [str(tmp_path / "missing.yaml")])
    bad.write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="not a valid YAML file \\(ParserError at line 2, column 1\\)"):
        parse_args(MLEConfig, [str(bad)])
    bad.write_bytes(b"steps: \xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8 \\(byte 7\\)"):
        parse_args(MLEConfig, [str(bad)])
    with pytest.raises(ConfigError, match="cannot read argument"):
        parse_args(MLEConfig, ["--steps", "3"])
    for text, message in (("steps: [1, 2]\n", "steps: expected an integer"), ("lr: {a: 1}\n", "lr: expected a number"),
                          ("lr: .nan\n", "lr: expected a finite number")):
        bad.write_text(text)  # YAML's lists, mappings and .nan: one-line errors, not TypeErrors
        with pytest.raises(ConfigError, match=message):
            parse_args(MLEConfig, [str(bad)])


def test_shipped_presets_are_found_from_any_folder(tmp_path, monkeypatch):
    """After pip install there is no recipes/ folder beside the user: the README's preset paths still work."""
    monkeypatch.chdir(tmp_path)
    for name in ("recipes/pure_scratchgan.yaml", "pure_scratchgan.yaml"):
        config = parse_args(ScratchGANConfig, [name])
        assert config.pretrain_steps == 0 and config.gen_lr == 5e-4
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "pure_scratchgan.yaml").write_text("steps: 7\n")  # a file that exists wins
    assert parse_args(ScratchGANConfig, ["recipes/pure_scratchgan.yaml"]).steps == 7
    with pytest.raises(ConfigError, match="shipped presets .*pure_scratchgan.yaml"):
        parse_args(ScratchGANConfig, ["recipes/pure_scratchgann.yaml"])


def test_every_field_has_help():
    text = help_text(ScratchGANConfig, "prog")
    for line in text.splitlines():
        if line.startswith("  "):
            assert len(line.split("default", 1)[1].split()) >= 2, line


def test_presets_in_repository_are_valid():
    from pathlib import Path

    from textgan.recipes import mle, scratchgan, seqgan, style_transfer

    configs = {
        "mle": mle.MLEConfig,
        "scratchgan": scratchgan.ScratchGANConfig,
        "seqgan": seqgan.SeqGANConfig,
        "transfer": style_transfer.StyleTransferConfig,
    }
    presets = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert presets
    for preset in presets:
        recipe = next(name for name in configs if preset.stem.endswith(name))
        parse_args(configs[recipe], [str(preset)])
