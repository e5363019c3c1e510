"""Config: presets are valid and differ, TOML sections and flags layer in order, bad
input reads clearly, and ``meshd config show`` says where every value came from."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import tomllib
from pathlib import Path

import msgspec
import pytest

from meshd import config
from meshd.adapters.drivers.firecracker_host import FirecrackerOptions
from meshd.adapters.drivers.process import ProcessDriver
from meshd.adapters.drivers.qemu import QemuDriver
from meshd.adapters.drivers.qemu_args import QemuTuning
from meshd.adapters.drivers.registry import driver_options, make_drivers
from meshd.cli.main import main
from meshd.config import files as config_files
from meshd.core.spec import WorkloadSpec
from meshd.errors import ConfigError


@pytest.mark.parametrize("name", config.PRESETS)
def test_every_preset_validates(name: str) -> None:
    cfg = config.preset(name).validate()
    assert cfg.preset == name


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="lan, local, sim"):
        config.preset("wan")


def test_presets_differ_where_the_deployment_does() -> None:
    lan, local, sim = config.lan(), config.local(), config.sim()
    assert lan.listen.startswith("0.0.0.0:") and local.listen.startswith("127.0.0.1:")
    assert lan.auction.host_telemetry and not local.auction.host_telemetry
    assert not sim.auction.host_telemetry
    assert local.security.enrol_timeout_s < lan.security.enrol_timeout_s
    assert local.dht.bootstrap_max_s < lan.dht.bootstrap_max_s
    assert local.membership.push_pull_interval_s < lan.membership.push_pull_interval_s
    assert local.store.events_keep < lan.store.events_keep
    # Failure detection is not made more eager on a shared machine.
    for name in ("probe_interval_s", "probe_timeout_s", "suspicion_mult", "indirect_probes"):
        assert getattr(local.membership, name) == getattr(lan.membership, name)
    # The simulator speaks for the LAN: every protocol timer is lan's.
    assert sim.membership == lan.membership and sim.dht == lan.dht
    assert sim.auction == lan.auction.replace(host_telemetry=False)


def test_layering_preset_then_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text(
        'preset = "local"\nlisten = "127.0.0.1:9000"\nmemory = "2GiB"\n'
        '[security]\ntoken_ttl_s = "30m"\n[auction]\nwindow_s = "300ms"\n'
        '[drivers.qemu]\nbinary = "/opt/qemu/bin/qemu-system-x86_64"\ntool_timeout_s = "1m"\n'
    )
    cfg = config_files.load(
        f,
        None,
        {"listen": "127.0.0.1:9100", "cpus": 4, "seeds": None, "auction.max_rounds": 3},
    )
    assert cfg.preset == "local"
    assert cfg.listen == "127.0.0.1:9100"  # the flag wins over the file
    assert cfg.memory == 2 * 1024**3
    assert cfg.security.token_ttl_s == 1800.0
    assert cfg.auction.window_s == 0.3
    assert cfg.auction.max_rounds == 3
    assert cfg.drivers.qemu.binary == "/opt/qemu/bin/qemu-system-x86_64"
    assert cfg.drivers.qemu.tool_timeout_s == 60.0
    assert cfg.cpus == 4.0
    assert cfg.seeds == ()
    assert cfg.auction.host_telemetry is False  # untouched: the local preset's


def test_the_file_meshd_init_writes_still_loads(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text(
        "# Written by `meshd init`; flags to `meshd run` override these.\n"
        'listen = "127.0.0.1:7421"\nseeds = ["127.0.0.1:7420"]\n'
    )
    cfg = config_files.load(f)
    assert (cfg.listen, cfg.seeds) == ("127.0.0.1:7421", ("127.0.0.1:7420",))


def test_preset_flag_wins_over_file_preset(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text('preset = "local"\n')
    assert config_files.load(f, "lan").preset == "lan"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("auction_window_s = 0.3\n", r"^auction_window_s moved to \[auction\] window_s in "),
        ("probe_interval_s = 1\n", r"probe_interval_s moved to \[membership\] probe_interval_s"),
        ("dht_ksize = 8\n", r"dht_ksize moved to \[dht\] ksize"),
        ("token_ttl_s = 60\n", r"token_ttl_s moved to \[security\] token_ttl_s"),
        ("api_request_timeout_s = 1\n", r"moved to \[api\] request_timeout_s"),
        ("host_telemetry = false\n", r"host_telemetry moved to \[auction\] host_telemetry"),
        ("[auction]\nauction_window_s = 0.3\n", r"unknown key 'auction_window_s' in \[auction\]"),
        ("[auctions]\nwindow_s = 0.3\n", r"unknown section \[auctions\]"),
        ("[drivers.vmware]\nbinary = 'x'\n", r"unknown section \[drivers.vmware\]"),
        ("[drivers]\nbinary = 'x'\n", r"unknown key 'binary' in \[drivers\].*\[drivers.qemu\]"),
        ("auction = 1\n", r"auction is a section: write it as \[auction\]"),
        ("[listen]\nhost = 'x'\n", "listen must be a value, not a table"),
        ('data_dir = "/srv"\n', "data_dir can't be set in the config file"),
        ("listen = 7420\n", "listen must be a string"),
        ('listen = "nohostport"\n', "listen must be HOST:PORT"),
        ('memory = "lots"\n', "memory must be a size"),
        ('[security]\ntoken_ttl_s = "soon"\n', r"security\.token_ttl_s must be a duration"),
        ("[security]\ntoken_ttl_s = 0\n", r"security\.token_ttl_s must be positive"),
        ("[security]\nreplay_cache_size = 1.5\n", "replay_cache_size must be an integer"),
        ("witness = 1\n", "witness must be true or false"),
        ('seeds = "10.0.0.1:7420"\n', "seeds must be a list"),
        ('seeds = ["10.0.0.1"]\n', "seed must be HOST:PORT"),
        ('log_level = "chatty"\n', "log_level must be one of"),
        ("[security]\ncert_validity_days = 4000\n", "can't exceed security.ca_validity_days"),
        ('advertise = "0.0.0.0:7420"\n', "advertise must be a concrete"),
        ("[membership]\nprobe_timeout_s = 1\n", "must be shorter than membership.probe_interval"),
        ('[drivers.firecracker]\nboot = "pxe"\n', r"drivers\.firecracker\.boot must be one of"),
        ("[drivers.qemu]\nkill_timeout_s = 0\n", r"drivers\.qemu\.kill_timeout_s must be positive"),
        ("[dht]\nmax_value_bytes = '8KiB'\n", r"dht\.max_value_bytes can be at most"),
        ("[addresses]\ngrant_ttl_s = 10\n", r"addresses\.grant_ttl_s must exceed the longest"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config_files.load(f)


@pytest.mark.parametrize(
    "text",
    [
        "cpus = nan\n",
        "cpus = inf\n",
        "[auction]\nsample_d = nan\n",
        "[auction]\nwindow_s = inf\n",
        "[membership]\nsuspicion_mult = -inf\n",
        "[dht]\nrepublish_fraction = nan\n",
        "memory = inf\n",
        "[dht]\nmax_value_bytes = nan\n",
    ],
)
def test_nan_and_infinity_are_refused_everywhere(tmp_path: Path, text: str) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="must be a finite number"):
        config_files.load(f)


def test_nan_is_refused_from_flags_and_from_code() -> None:
    with pytest.raises(ConfigError, match="cpus must be a finite number"):
        config_files.load(None, "lan", {"cpus": math.nan})  # argparse's type=float takes "nan"
    cfg = config.lan()
    broken = cfg.replace(auction=cfg.auction.replace(cpu_overcommit=math.inf))
    with pytest.raises(ConfigError, match=r"auction\.cpu_overcommit must be a finite number"):
        broken.validate()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config_files.load(tmp_path / "nope.toml")


def test_float_knobs_accept_numbers_and_refuse_text(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text("[auction]\ncpu_overcommit = 2\n[membership]\nsuspicion_mult = 3.5\n")
    cfg = config_files.load(f)
    assert cfg.auction.cpu_overcommit == 2.0 and cfg.membership.suspicion_mult == 3.5
    f.write_text('[auction]\ncpu_overcommit = "lots"\n')
    with pytest.raises(ConfigError, match=r"auction\.cpu_overcommit must be a number"):
        config_files.load(f)


def test_unknown_or_moved_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        config_files.load(None, "lan", {"colour": "blue"})
    with pytest.raises(ConfigError, match=r"auction_window_s moved to \[auction\] window_s"):
        config_files.load(None, "lan", {"auction_window_s": 0.3})
    with pytest.raises(ConfigError, match=r"unknown key 'window' in \[auction\]"):
        config_files.load(None, "lan", {"auction.window": 0.3})


def test_set_assignments_are_typed_as_in_the_file() -> None:
    assert config_files.parse_assignment("auction.window_s=300ms") == ("auction.window_s", "300ms")
    assert config_files.parse_assignment("auction.max_rounds=3") == ("auction.max_rounds", 3)
    assert config_files.parse_assignment("auction.host_telemetry=false") == (
        "auction.host_telemetry",
        False,
    )
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config_files.parse_assignment("auction.window_s")


def test_config_and_its_sections_are_frozen() -> None:
    cfg = config.lan()
    with pytest.raises(AttributeError):
        cfg.listen = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.auction.window_s = 1.0  # type: ignore[misc]


def test_override_rebuilds_only_the_touched_sections() -> None:
    cfg = config.lan()
    new = cfg.override({"auction.window_s": "100ms", "drivers.qemu.tool_timeout_s": 5})
    assert new.auction.window_s == 0.1 and new.drivers.qemu.tool_timeout_s == 5.0
    assert new.membership is cfg.membership and new.drivers.process is cfg.drivers.process
    assert cfg.auction.window_s == 0.25


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHD_DATA_DIR", str(tmp_path))
    assert config.lan().data_dir == tmp_path
    assert config.lan().socket_path == tmp_path / "meshd.sock"


def test_every_value_knows_its_layer(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text('listen = "127.0.0.1:9000"\n[auction]\nwindow_s = "300ms"\n')
    r = config_files.resolve(f, "local", {"cpus": 2, "memory": None}, {"cpus": "env:TEST"})
    assert r.sources["preset"] == "flag"
    assert r.sources["listen"] == f"file:{f}"
    assert r.sources["auction.window_s"] == f"file:{f}"
    assert r.sources["cpus"] == "env:TEST"
    assert r.sources["memory"] == "preset:local"  # None: the flag was not given
    assert r.sources["membership.probe_interval_s"] == "preset:local"
    assert set(r.sources) == set(config.KEYS)
    f.write_text('preset = "sim"\n')
    assert config_files.resolve(f).sources["preset"] == f"file:{f}"
    assert config_files.resolve().sources["preset"] == "preset:lan"


def test_the_shown_toml_loads_back_as_the_same_config(tmp_path: Path) -> None:
    f = tmp_path / "meshd.toml"
    f.write_text('seeds = ["10.0.0.2:7420"]\n[drivers.qemu]\nbridge = "br0"\n')
    r = config_files.resolve(f, "local", {"cpus": 2, "auction.window_s": "300ms"})
    text = config_files.as_toml(r)
    assert "window_s = 0.3" in text and "# flag" in text and f"# file:{f}" in text
    assert "# advertise is not set" in text and "[drivers.qemu]" in text
    again = tmp_path / "again.toml"
    again.write_text(text)
    tomllib.loads(text)
    assert config_files.load(again) == r.config


def test_the_json_form_has_every_key_with_value_and_source() -> None:
    doc = config_files.as_json(config_files.resolve(None, "sim"))
    assert list(doc) == list(config.KEYS)
    assert doc["auction.window_s"] == {"value": 0.25, "source": "preset:sim"}
    assert doc["seeds"]["value"] == [] and isinstance(doc["data_dir"]["value"], str)
    json.dumps(doc)


def test_driver_sections_match_the_drivers_own_defaults() -> None:
    """The drivers keep defaults for direct use (tests, benchmarks); they must agree."""
    d = config.DriversConfig()
    assert d.stop_timeout_s == 30.0  # the API's default before it was a knob
    qemu = dataclasses.asdict(d.qemu)
    del qemu["binary"], qemu["bridge"]
    assert QemuTuning(**qemu) == QemuTuning()
    assert FirecrackerOptions(**dataclasses.asdict(d.firecracker)) == FirecrackerOptions()
    params = inspect.signature(ProcessDriver.__init__).parameters
    for name, value in dataclasses.asdict(d.process).items():
        assert params[name].default == value, name


def test_the_registry_hands_each_driver_its_section(tmp_path: Path) -> None:
    cfg = config.lan().override(
        {
            "drivers.process.poll_interval_s": "2s",
            "drivers.qemu.tool_timeout_s": "7s",
            "drivers.qemu.boot_timeout_s": "2m",
            "drivers.firecracker.boot_timeout_s": "9s",
        }
    )
    drivers = make_drivers(tmp_path, lambda wid, status: None, cfg.drivers)
    process = drivers["process"]
    assert isinstance(process, ProcessDriver) and process.poll_interval_s == 2.0
    qemu = QemuDriver(tmp_path, lambda wid, status: None, **driver_options("qemu", cfg.drivers))
    assert qemu.tuning.tool_timeout_s == 7.0
    spec = WorkloadSpec(name="w1", driver="qemu", cpus=1.0, memory=64 * 1024**2)
    assert qemu.boot_timeout(spec) == 120.0  # the spec names none: the config's
    assert qemu.boot_timeout(msgspec.structs.replace(spec, boot_timeout_s=5.0)) == 5.0
    fc = driver_options("firecracker", cfg.drivers)["options"]
    assert fc.boot_timeout_s == 9.0 and fc.binary is None


def test_config_show_needs_no_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHD_DATA_DIR", raising=False)
    (tmp_path / "meshd.toml").write_text(
        'listen = "127.0.0.1:7421"\n[membership]\nprobe_interval_s = "1s"\n'
    )
    ddir = ["--data-dir", str(tmp_path)]
    argv = ["config", "show", *ddir, "--json", "--preset", "local", "--cpus", "3"]
    assert main([*argv, "--set", "auction.window_s=300ms"]) == 0
    doc = json.loads(capsys.readouterr().out)
    where = f"file:{tmp_path / 'meshd.toml'}"
    assert doc["listen"] == {"value": "127.0.0.1:7421", "source": where}
    assert doc["membership.probe_interval_s"] == {"value": 1.0, "source": where}
    assert doc["cpus"] == {"value": 3.0, "source": "flag"}
    assert doc["auction.window_s"] == {"value": 0.3, "source": "flag"}
    assert doc["auction.host_telemetry"] == {"value": False, "source": "preset:local"}
    assert doc["data_dir"] == {"value": str(tmp_path), "source": "flag"}
    assert doc["preset"] == {"value": "local", "source": "flag"}

    monkeypatch.setenv("MESHD_DATA_DIR", str(tmp_path))
    assert main(["config", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data_dir"] == {"value": str(tmp_path), "source": "env:MESHD_DATA_DIR"}
    assert doc["listen"]["source"] == where  # the file in the environment's data dir

    assert main(["config", "show", *ddir]) == 0
    text = capsys.readouterr().out
    assert "[membership]" in text and "probe_interval_s = 1.0" in text
    assert tomllib.loads(text)["membership"]["probe_interval_s"] == 1.0

    (tmp_path / "meshd.toml").write_text("auction_window_s = 1\n")
    assert main(["config", "show", *ddir]) == 1
    err = capsys.readouterr().err
    assert "auction_window_s moved to [auction] window_s" in err


def test_guests_announcements_may_be_turned_off_but_not_below_zero() -> None:
    cfg = config.lan()
    cfg.replace(guests=cfg.guests.replace(announce_count=0)).validate()
    with pytest.raises(ConfigError, match=r"guests\.announce_count must not be negative"):
        cfg.replace(guests=cfg.guests.replace(announce_count=-1)).validate()
    with pytest.raises(ConfigError, match=r"guests\.announce_interval_s must be positive"):
        cfg.replace(guests=cfg.guests.replace(announce_interval_s=0.0)).validate()
