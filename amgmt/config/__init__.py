"""Settings: layering (flags > MGMT_* environment > config file > defaults), validation, the config file.

Owns every setting's name, default and parser; must not open the network, the database or any entry."""

from amgmt.config.file import (
    config_home,
    default_config_path,
    nearest_key,
    own_config_path,
    parse_config_file,
    write_config_values,
)
from amgmt.config.load import load_settings
from amgmt.config.locations import LAYOUT_RULES, Layout, layout_problem
from amgmt.config.settings import ENV_PREFIX, SETTING_NAMES, Settings, env_key
from amgmt.config.values import (
    ADDRESSING_STYLES,
    CHECKSUM_ALGORITHMS,
    DUPLICATE_MODES,
    STORAGE_CLASSES,
    format_size,
    parse_size,
)

__all__ = [
    "ADDRESSING_STYLES",
    "CHECKSUM_ALGORITHMS",
    "DUPLICATE_MODES",
    "ENV_PREFIX",
    "LAYOUT_RULES",
    "SETTING_NAMES",
    "STORAGE_CLASSES",
    "Layout",
    "Settings",
    "config_home",
    "default_config_path",
    "env_key",
    "format_size",
    "layout_problem",
    "load_settings",
    "nearest_key",
    "own_config_path",
    "parse_config_file",
    "parse_size",
    "write_config_values",
]
