# The home's config file, <home>/config.toml: the same settings as `p2pnode run`'s flags, named as the flags
# are without their dashes (`listen = "0.0.0.0:8765"`, `no-lan = true`). A flag given on the command line wins
# over the file, except `--seed`, which adds to the file's `seed` list; the file wins over the built-in defaults.
# Unknown names and wrong types are one-line errors.
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.toml"

# file name -> (the run command's parameter name, accepted type, what the value must be)
SETTINGS: dict[str, tuple[str, type | tuple[type, ...], str]] = {
    "listen": ("listen", str, "a string HOST:PORT"),
    "advertise": ("advertise", str, "a host string"),
    "seed": ("seed_options", list, "a list of address strings"),
    "seeds": ("seeds_file", str, "a file path string"),
    "hops": ("hops", int, "an integer from 0 to 6"),
    "relay": ("relay", bool, "true or false"),
    "keep-distant": ("keep_distant", int, "a whole number from 0"),
    "log-level": ("log_level", str, "one of debug, info, warning, error"),
    "no-lan": ("no_lan", bool, "true or false"),
    "proxy": ("proxy", str, "a string socks5://HOST:PORT"),
    "no-upnp": ("no_upnp", bool, "true or false"),
    "tor-control": ("tor_control", int, "a port number"),
    "min-free": ("min_free", str, "a size string such as \"300M\", \"1G\" or \"0\""),
    "web": ("web_option", str, "a string HOST:PORT or \"off\""),
    "web-public": ("web_public", bool, "true or false"),
}


# list settings that flags add to rather than replace: every seed given once stays in the peer book as a seed
# anyway (spec/peers.md, "Seeds"), so a --seed that replaced the file's list would only seem to
ADDING = {"seed_options"}


class ConfigFileError(Exception):
    """The config file cannot be used, worded for the user (one line, naming the file)."""


def config_path(home: Path) -> Path:
    return home / CONFIG_FILE


def load_config(home: Path) -> dict[str, Any]:
    """The settings in <home>/config.toml keyed by the run command's parameter names ({} without a file)."""
    path = config_path(home)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    values: dict[str, Any] = {}
    for name, value in document.items():
        if name not in SETTINGS:
            raise ConfigFileError(f"{path}: unknown setting {name!r} (known: {', '.join(SETTINGS)})")
        param, kind, what = SETTINGS[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigFileError(f"{path}: {name} must be {what}")
        if name == "seed":
            if not all(isinstance(item, str) for item in value):
                raise ConfigFileError(f"{path}: {name} must be {what}")
            value = tuple(value)
        if name == "hops" and not 0 <= value <= 6:
            raise ConfigFileError(f"{path}: {name} must be {what}")
        if name == "keep-distant" and value < 0:
            raise ConfigFileError(f"{path}: {name} must be {what}")
        if name == "log-level" and value not in ("debug", "info", "warning", "error"):
            raise ConfigFileError(f"{path}: {name} must be {what}")
        if name == "seeds":
            value = Path(value)
        values[param] = value
    return values


def merge_config(home: Path, params: Mapping[str, Any], given: set[str]) -> dict[str, Any]:
    """The settings to run with: `params` (the command's values, defaults included), where each one not in
    `given` (not on the command line) is replaced by the config file's value when the file has one."""
    merged = dict(params)
    for param, value in load_config(home).items():
        if param not in given:
            merged[param] = value
        elif param in ADDING:  # a list setting: the flags' items come after the file's
            merged[param] = tuple(dict.fromkeys([*value, *merged[param]]))
    return merged
