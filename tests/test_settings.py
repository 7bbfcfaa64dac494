"""One configuration for both faces: defaults, environment, command line, all from dhtcart.settings."""

from __future__ import annotations

import argparse

import pytest

from dhtcart.cli import SERVE_OPTIONS, build_parser
from dhtcart.errors import InvalidInput
from dhtcart.settings import OPTIONS, Settings, add_options


def test_every_option_has_one_variable_one_flag_and_a_default() -> None:
    names = [o.name for o in OPTIONS]
    assert len(set(names)) == len(names) and set(names) == set(Settings.__dataclass_fields__)
    assert len({o.env for o in OPTIONS}) == len(OPTIONS) and all(o.env.startswith("DHTCART_") for o in OPTIONS)
    assert set(SERVE_OPTIONS) == set(names)  # `dhtcart serve` offers every one


def test_environment_round_trip() -> None:
    custom = Settings(
        host="0.0.0.0",
        port=9001,
        data="/srv/carts",
        shards=7,
        workers=3,
        log_level="debug",
        access_log=False,
        max_body_bytes=1000,
        thread_pool=True,
        graceful_timeout=2.5,
        compat="seed",
        request_timeout=3.0,
        keep_alive_timeout=9,
        max_connections=50,
        backlog=64,
        metrics=False,
    )
    assert Settings.from_env(custom.to_env()) == custom
    assert Settings.from_env({}) == Settings()
    assert "DHTCART_SHARDS" not in Settings().to_env()  # not asked for: an existing store keeps its own


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DHTCART_PORT": "eighty"}, "DHTCART_PORT: must be an integer"),
        ({"DHTCART_PORT": "70000"}, "DHTCART_PORT: must be between 0 and 65535"),
        ({"DHTCART_THREAD_POOL": "perhaps"}, "DHTCART_THREAD_POOL: must be one of"),
        ({"DHTCART_COMPAT": "flask"}, "DHTCART_COMPAT: must be one of default, seed"),
        ({"DHTCART_REQUEST_TIMEOUT": "0"}, "DHTCART_REQUEST_TIMEOUT: must be between 0.1 and 3600"),
    ],
)
def test_bad_variables_name_themselves(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        Settings.from_env(env)
    assert str(exc.value).startswith(message)
    assert isinstance(exc.value, ValueError)  # callers catching ValueError keep working


def test_bool_variables() -> None:
    for text, value in (("1", True), ("true", True), ("ON", True), ("0", False), ("no", False)):
        assert Settings.from_env({"DHTCART_THREAD_POOL": text}).thread_pool is value


def test_direct_construction_is_checked() -> None:
    with pytest.raises(InvalidInput, match="workers: must be between 1 and 512"):
        Settings(workers=0)
    with pytest.raises(InvalidInput, match="port: must be int"):
        Settings(port="80")  # type: ignore[arg-type]
    assert Settings().replace(port=1).port == 1 and Settings().new_store_shards == 5


def test_flags_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHTCART_PORT", "9001")
    monkeypatch.setenv("DHTCART_METRICS", "1")
    monkeypatch.setenv("DHTCART_COMPAT", "seed")
    args = build_parser().parse_args(["serve", "--port", "80", "--no-metrics", "--request-timeout", "2"])
    settings = Settings.from_namespace(args)
    assert (settings.port, settings.metrics, settings.compat, settings.request_timeout) == (80, False, "seed", 2.0)


def test_a_bad_variable_is_reported_when_the_settings_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHTCART_MAX_CONNECTIONS", "lots")
    args = build_parser().parse_args(["serve"])  # parsing alone does not fail
    with pytest.raises(InvalidInput, match="DHTCART_MAX_CONNECTIONS: must be an integer"):
        Settings.from_namespace(args)


def test_out_of_range_flags_name_flag_and_variable() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, "port")
    with pytest.raises(InvalidInput, match=r"--port \(or DHTCART_PORT\): must be between 0 and 65535"):
        Settings.from_namespace(parser.parse_args(["--port", "99999"]))


# -- the location and the shards of a new store ----------------------------------------------------


@pytest.mark.parametrize("location", ["./carts", "lmdb:///srv/carts", "lmdb://carts?durability=power", "memory://",
                                      "redis://h:6379/0", "rediss://h:6380/1?prefix=x:"])  # fmt: skip
def test_every_location_form_is_accepted(location: str) -> None:
    assert Settings(data=location).data == location
    assert Settings.from_env({"DHTCART_DATA": location}).data == location


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("http://shop/carts", "unknown scheme 'http'"),
        ("lmdb://", "names no directory"),
        ("memory://x", "memory:// takes no path"),
        ("lmdb:///x?sync=no", "unknown option 'sync'"),
    ],
)
def test_a_bad_location_is_refused_wherever_it_is_read(location: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^data: .*{message}"):
        Settings(data=location)
    with pytest.raises(InvalidInput, match=f"^DHTCART_DATA: .*{message}"):
        Settings.from_env({"DHTCART_DATA": location})
    with pytest.raises(SystemExit):  # argparse: a usage error naming --data
        build_parser().parse_args(["stats", "--data", location])


def test_shard_urls_from_the_environment_and_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"DHTCART_SHARD_URLS": "a=redis://h:6380/0, b=redis://h:6381/0"}
    settings = Settings.from_env(env)
    assert settings.shard_urls == (("a", "redis://h:6380/0"), ("b", "redis://h:6381/0"))
    assert settings.new_store_shards == {"a": "redis://h:6380/0", "b": "redis://h:6381/0"}
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings().new_store_shards == 5 and Settings(shards=3).new_store_shards == 3

    monkeypatch.setenv("DHTCART_SHARD_URLS", "z=redis://h:6390/0")
    assert Settings.from_namespace(build_parser().parse_args(["init"])).shard_urls == (("z", "redis://h:6390/0"),)
    args = build_parser().parse_args(["init", "--shard", "a=redis://h:6380/0", "--shard", "b=lmdb:///srv/b"])
    assert Settings.from_namespace(args).shard_urls == (("a", "redis://h:6380/0"), ("b", "lmdb:///srv/b"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", "'a' is not NAME=URL"),
        ("=redis://h:1/0", "a shard name must be"),
        ("a b=redis://h:1/0", "'a' is not NAME=URL"),
        ("a=redis://h:1/0,a=redis://h:2/0", "shard 'a' is named twice"),
        ("a=h:6379", "shard 'a': 'h:6379' is not a backend URL"),
        (" , ", "give each shard as NAME=URL"),
    ],
)
def test_bad_shard_urls(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^DHTCART_SHARD_URLS: {message}"):
        Settings.from_env({"DHTCART_SHARD_URLS": text})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["init", "--shard", text])


def test_a_count_and_named_shards_exclude_each_other() -> None:
    with pytest.raises(InvalidInput, match="either a number of shards or each shard's NAME=URL"):
        Settings(shards=2, shard_urls=(("a", "redis://h:1/0"),))
    args = build_parser().parse_args(["init", "--shards", "2", "--shard", "a=redis://h:1/0"])
    with pytest.raises(InvalidInput, match=r"--shards \(or DHTCART_SHARDS\) and --shard \(or DHTCART_SHARD_URLS\)"):
        Settings.from_namespace(args)
