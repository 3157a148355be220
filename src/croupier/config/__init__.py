"""TOML config -> validated model; errors name the file, the key and the reason."""

from croupier.config.load import ConfigError, LoadedConfig, MemberSpec, load_config, validate_config
from croupier.config.schema import parse_duration, parse_size

__all__ = ["ConfigError", "LoadedConfig", "MemberSpec", "load_config", "parse_duration",
           "parse_size", "validate_config"]
