"""Config: presets are valid, TOML and flags layer in order, bad input reads clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd import config
from meshd.errors import ConfigError


@pytest.mark.parametrize("name", config.PRESETS)
def test_every_preset_validates(name: str) -> None:
    cfg = config.preset(name).validate()
    assert cfg.preset == name


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="lan, local, sim"):
        config.preset("wan")


def test_layering_preset_then_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text(
        'preset = "local"\nlisten = "127.0.0.1:9000"\nmemory = "2GiB"\ntoken_ttl_s = "30m"\n'
    )
    cfg = config.load(f, None, {"listen": "127.0.0.1:9100", "cpus": 4, "seeds": None})
    assert cfg.preset == "local"
    assert cfg.listen == "127.0.0.1:9100"  # the flag wins over the file
    assert cfg.memory == 2 * 1024**3
    assert cfg.token_ttl_s == 1800.0
    assert cfg.cpus == 4.0
    assert cfg.seeds == ()


def test_preset_flag_wins_over_file_preset(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text('preset = "local"\n')
    assert config.load(f, "lan").preset == "lan"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("listen = 7420\n", "listen must be a string"),
        ('listen = "nohostport"\n', "listen must be HOST:PORT"),
        ('memory = "lots"\n', "memory must be a size"),
        ('token_ttl_s = "soon"\n', "token_ttl_s must be a duration"),
        ("token_ttl_s = 0\n", "token_ttl_s must be positive"),
        ("replay_cache_size = 1.5\n", "replay_cache_size must be an integer"),
        ("witness = 1\n", "witness must be true or false"),
        ('seeds = "10.0.0.1:7420"\n', "seeds must be a list"),
        ('seeds = ["10.0.0.1"]\n', "seed must be HOST:PORT"),
        ('log_level = "chatty"\n', "log_level must be one of"),
        ("cert_validity_days = 4000\n", "can't exceed ca_validity_days"),
        ('advertise = "0.0.0.0:7420"\n', "advertise must be a concrete"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(f)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def test_float_knobs_accept_numbers_and_refuse_text(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text("cpu_overcommit = 2\nsuspicion_mult = 3.5\n")
    cfg = config.load(f)
    assert cfg.cpu_overcommit == 2.0 and cfg.suspicion_mult == 3.5
    f.write_text('cpu_overcommit = "lots"\n')
    with pytest.raises(ConfigError, match="cpu_overcommit must be a number"):
        config.load(f)


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        config.load(None, "lan", {"colour": "blue"})


def test_config_is_frozen() -> None:
    cfg = config.lan()
    with pytest.raises(AttributeError):
        cfg.listen = "x"  # type: ignore[misc]


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHD_DATA_DIR", str(tmp_path))
    assert config.lan().data_dir == tmp_path
    assert config.lan().socket_path == tmp_path / "meshd.sock"
