"""Settings: precedence of flags > env > config file > defaults, every validation rule, the config file format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import socket
import pytest

from amgmt.errors import ConfigError
from amgmt.parts import GiB, MiB
from amgmt.config import (
    Settings,
    default_config_path,
    load_settings,
    own_config_path,
    parse_config_file,
    write_config_values,
)


@dataclass
class Env:
    """A sandbox: a fake HOME (so no real config file is ever read), a working dir and a media dir."""

    home: Path
    cwd: Path
    media: Path

    @property
    def environ(self) -> dict[str, str]:
        return {"HOME": str(self.home)}

    def config(self, text: str, app: str = "amgmt") -> Path:
        path = self.home / ".config" / app / "config"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def load(
        self, *, flags: dict[str, object] | None = None, env: dict[str, str] | None = None, **kwargs: object
    ) -> Settings:
        environ = {**self.environ, **(env or {})}
        flags = {"bucket": "media-bucket", **(flags or {})}
        return load_settings(flags=flags, environ=environ, cwd=self.cwd, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def sandbox(tmp_path: Path) -> Env:
    home, cwd, media = tmp_path / "home", tmp_path / "work", tmp_path / "media"
    for path in (home, cwd, media):
        path.mkdir()
    return Env(home=home, cwd=cwd, media=media)


def config_error(sandbox: Env, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        sandbox.load(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


# --- defaults and precedence -----------------------------------------------------------------------------------


def test_defaults(sandbox: Env) -> None:
    settings = sandbox.load()
    assert settings.bucket == "media-bucket"
    assert settings.object_prefix == ""
    assert settings.local_dir == sandbox.cwd.resolve()
    assert settings.completed_dir == sandbox.cwd.resolve() / "completed"
    assert settings.db_path == settings.completed_dir / ".metadata" / "operations.db"
    assert settings.staging_dir == settings.completed_dir / ".metadata" / "staging"
    assert settings.preserve_structure is False
    assert settings.completed_enabled is True
    assert settings.duplicate_handling == "timestamp"
    assert settings.endpoint_url is None and settings.storage_class is None
    assert settings.concurrency == 8 and settings.parts_in_flight == 8
    assert settings.part_size == 8 * MiB and settings.multipart_threshold == 8 * MiB
    assert settings.checksum_algorithm == "auto"
    assert settings.addressing_style == "auto"
    assert settings.compression_level == 1
    assert settings.profile is None and settings.region is None
    assert settings.read_timeout == 60 and settings.connect_timeout == 10
    assert settings.config_file is None
    assert settings.sources["concurrency"] == "default"
    assert settings.sources["bucket"] == "flag"


@pytest.mark.parametrize(
    ("name", "flag", "env", "config", "expected_flag", "expected_env", "expected_config"),
    [
        ("concurrency", 3, "5", "7", 3, 5, 7),
        ("object_prefix", "/a/", "b", "c", "a", "b", "c"),
        ("duplicate_handling", "error", "subdirectory", "timestamp", "error", "subdirectory", "timestamp"),
        ("part_size", "16M", "32MiB", "64MB", 16 * MiB, 32 * MiB, 64 * MiB),
        ("preserve_structure", True, "yes", "on", True, True, True),
        ("region", "eu-west-1", "us-east-2", "ap-south-1", "eu-west-1", "us-east-2", "ap-south-1"),
        ("read_timeout", 2.5, "30", " 0.5 ", 2.5, 30.0, 0.5),
        ("connect_timeout", 1, "3.5", "20", 1.0, 3.5, 20.0),
    ],
)
def test_precedence_flag_env_config_default(
    sandbox: Env,
    name: str,
    flag: object,
    env: str,
    config: str,
    expected_flag: object,
    expected_env: object,
    expected_config: object,
) -> None:
    key = f"MGMT_{name.upper()}"
    path = sandbox.config(f"{key}={config}\n")

    everything = sandbox.load(flags={name: flag}, env={key: env})
    assert getattr(everything, name) == expected_flag
    assert everything.sources[name] == "flag"

    env_and_file = sandbox.load(env={key: env})
    assert getattr(env_and_file, name) == expected_env
    assert env_and_file.sources[name] == f"env {key}"

    file_only = sandbox.load()
    assert getattr(file_only, name) == expected_config
    assert file_only.sources[name] == f"config {path}"
    assert file_only.config_file == path


def test_flag_none_means_not_given(sandbox: Env) -> None:
    settings = sandbox.load(flags={"concurrency": None}, env={"MGMT_CONCURRENCY": "5"})
    assert settings.concurrency == 5
    assert settings.sources["concurrency"] == "env MGMT_CONCURRENCY"


def test_empty_value_resets_to_default_over_lower_layers(sandbox: Env) -> None:
    sandbox.config("MGMT_ENDPOINT_URL=http://localhost:9000\nMGMT_CONCURRENCY=4\n")
    settings = sandbox.load(env={"MGMT_ENDPOINT_URL": "", "MGMT_CONCURRENCY": " "})
    assert settings.endpoint_url is None
    assert settings.concurrency == 8
    assert settings.sources["endpoint_url"] == "env MGMT_ENDPOINT_URL"


def test_the_hook_its_timeout_and_an_empty_flag_that_turns_a_configured_hook_off(sandbox: Env) -> None:
    sandbox.config("MGMT_HOOK='curl -fsS -d \"$AMGMT_STATUS\" https://chat.example.com/h'\n")
    configured = sandbox.load(env={"MGMT_HOOK_TIMEOUT": "2.5"})
    off = sandbox.load(flags={"hook": ""})
    assert configured.hook == 'curl -fsS -d "$AMGMT_STATUS" https://chat.example.com/h'
    assert configured.hook_timeout == 2.5 and off.hook_timeout == 30.0
    assert off.hook is None and off.sources["hook"] == "flag"
    with pytest.raises(ConfigError, match=r"MGMT_HOOK_TIMEOUT=0 \(from env\): expected a number of seconds"):
        sandbox.load(env={"MGMT_HOOK_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="MGMT_HOOK.*control characters"):
        sandbox.load(flags={"hook": "echo a\necho b"})


def test_small_entry_size_default_off_and_bounds(sandbox: Env) -> None:
    assert sandbox.load().small_entry_size == 1024 * 1024
    assert sandbox.load(env={"MGMT_SMALL_ENTRY_SIZE": "256KiB"}).small_entry_size == 256 * 1024
    assert sandbox.load(env={"MGMT_SMALL_ENTRY_SIZE": "0"}).small_entry_size == 0  # the lane off
    with pytest.raises(ConfigError, match=r"MGMT_SMALL_ENTRY_SIZE=1GiB \(from env\): expected a size from 0"):
        sandbox.load(env={"MGMT_SMALL_ENTRY_SIZE": "1GiB"})


def test_unknown_flag_is_a_programming_error(sandbox: Env) -> None:
    with pytest.raises(TypeError, match="concurency"):
        sandbox.load(flags={"concurency": 3})


def test_bucket_required_unless_told_otherwise(sandbox: Env) -> None:
    with pytest.raises(ConfigError, match="MGMT_BUCKET is not set"):
        load_settings(environ=sandbox.environ, cwd=sandbox.cwd)
    assert load_settings(environ=sandbox.environ, cwd=sandbox.cwd, require_bucket=False).bucket is None


def test_bucket_from_env(sandbox: Env) -> None:
    settings = load_settings(environ={**sandbox.environ, "MGMT_BUCKET": "from-env.bucket"}, cwd=sandbox.cwd)
    assert settings.bucket == "from-env.bucket"


# --- paths and derived defaults -------------------------------------------------------------------------------


def test_derived_defaults_follow_the_final_local_and_completed_dirs(sandbox: Env) -> None:
    settings = sandbox.load(env={"MGMT_LOCAL_DIR": str(sandbox.media)})
    assert settings.local_dir == sandbox.media.resolve()
    assert settings.completed_dir == sandbox.media.resolve() / "completed"
    assert settings.db_path == sandbox.media.resolve() / "completed" / ".metadata" / "operations.db"
    assert settings.sources["completed_dir"] == "default"

    elsewhere = sandbox.cwd / "done"
    moved = sandbox.load(flags={"local_dir": sandbox.media, "completed_dir": str(elsewhere)})
    assert moved.completed_dir == elsewhere.resolve()
    assert moved.staging_dir == elsewhere.resolve() / ".metadata" / "staging"
    assert moved.db_path == elsewhere.resolve() / ".metadata" / "operations.db"


def test_relative_paths_are_taken_from_cwd_and_tilde_from_home(sandbox: Env) -> None:
    (sandbox.home / "films").mkdir()
    settings = sandbox.load(
        env={
            "MGMT_LOCAL_DIR": "~/films",
            "MGMT_COMPLETED_DIR": "done",
            "MGMT_DB_PATH": "meta/ops.db",
            "MGMT_STAGING_DIR": "~/stage",
        }
    )
    assert settings.local_dir == (sandbox.home / "films").resolve()
    assert settings.local_dir.is_absolute()
    assert settings.completed_dir == (sandbox.cwd / "done").resolve()
    assert settings.db_path == (sandbox.cwd / "meta" / "ops.db").resolve()
    assert settings.staging_dir == (sandbox.home / "stage").resolve()


def test_local_dir_is_resolved_through_symlinks(sandbox: Env) -> None:
    link = sandbox.cwd / "link"
    link.symlink_to(sandbox.media)
    assert sandbox.load(flags={"local_dir": "link"}).local_dir == sandbox.media.resolve()


@pytest.mark.parametrize("problem", ["missing", "file"])
def test_local_dir_must_be_an_existing_directory(sandbox: Env, problem: str) -> None:
    target = sandbox.cwd / "nope"
    if problem == "file":
        target.write_text("x")
    message = config_error(sandbox, env={"MGMT_LOCAL_DIR": str(target)})
    assert message.startswith(f"MGMT_LOCAL_DIR={target} (from env): ")
    assert ("no such directory" if problem == "missing" else "not a directory") in message


def test_completed_dir_must_not_be_a_file_or_the_local_dir(sandbox: Env) -> None:
    (sandbox.cwd / "completed").write_text("in the way")
    assert "MGMT_COMPLETED_DIR=" in config_error(sandbox)
    assert "(from default)" in config_error(sandbox)
    message = config_error(sandbox, flags={"local_dir": sandbox.media, "completed_dir": sandbox.media})
    assert message.startswith("MGMT_COMPLETED_DIR=") and "(from flag)" in message and "local dir" in message


def test_db_path_that_is_a_directory_is_refused(sandbox: Env) -> None:
    message = config_error(sandbox, env={"MGMT_DB_PATH": str(sandbox.media)})
    assert message.startswith("MGMT_DB_PATH=") and "is a directory" in message


# --- validation: each key, one line naming key, value and source ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("MGMT_BUCKET", "My_Bucket", "bucket name"),
        ("MGMT_BUCKET", "ab", "bucket name"),
        ("MGMT_BUCKET", "a" * 64, "bucket name"),
        ("MGMT_BUCKET", "-bucket", "bucket name"),
        ("MGMT_BUCKET", "bucket.", "bucket name"),
        ("MGMT_BUCKET", "my..bucket", "bucket name"),
        ("MGMT_OBJECT_PREFIX", "a/../b", "'..'"),
        ("MGMT_OBJECT_PREFIX", "./a", "'.'"),
        ("MGMT_OBJECT_PREFIX", "a\tb", "control characters"),
        ("MGMT_PRESERVE_STRUCTURE", "maybe", "true/false"),
        ("MGMT_COMPLETED_ENABLED", "2", "true/false"),
        ("MGMT_DUPLICATE_HANDLING", "overwrite", "timestamp, subdirectory, error"),
        ("MGMT_ENDPOINT_URL", "ftp://host", "http:// or https://"),
        ("MGMT_ENDPOINT_URL", "http://", "with a host"),
        ("MGMT_ENDPOINT_URL", "localhost:9000", "http:// or https://"),
        ("MGMT_ENDPOINT_URL", "http://host:port", "http://"),
        ("MGMT_STORAGE_CLASS", "cheap", "STANDARD"),
        ("MGMT_CONCURRENCY", "abc", "expected an integer from 1 to 256"),
        ("MGMT_CONCURRENCY", "0", "expected an integer from 1 to 256"),
        ("MGMT_CONCURRENCY", "257", "expected an integer from 1 to 256"),
        ("MGMT_CONCURRENCY", "2.5", "expected an integer from 1 to 256"),
        ("MGMT_PARTS_IN_FLIGHT", "1025", "from 1 to 1024"),
        ("MGMT_PART_SIZE", "4MiB", "from 5MiB to 5GiB"),
        ("MGMT_PART_SIZE", "6GiB", "from 5MiB to 5GiB"),
        ("MGMT_PART_SIZE", "8 parsecs", "expected a size"),
        ("MGMT_MULTIPART_THRESHOLD", "-1", "expected a size"),
        ("MGMT_MULTIPART_THRESHOLD", "8T", "expected a size"),
        ("MGMT_CHECKSUM_ALGORITHM", "always", "auto, crc64nvme, crc32c, sha256, md5"),
        ("MGMT_COMPRESSION_LEVEL", "4", "from 1 to 3"),
        ("MGMT_COMPRESSION_LEVEL", "-1", "from 1 to 3"),
        ("MGMT_ADDRESSING_STYLE", "dns", "auto, path, virtual"),
        ("MGMT_PROFILE", "a\x07b", "control characters"),
        ("MGMT_READ_TIMEOUT", "0", "greater than 0"),
        ("MGMT_READ_TIMEOUT", "-1", "greater than 0"),
        ("MGMT_READ_TIMEOUT", "soon", "number of seconds"),
        ("MGMT_READ_TIMEOUT", "inf", "greater than 0"),
        ("MGMT_CONNECT_TIMEOUT", "nan", "greater than 0"),
        ("MGMT_CONNECT_TIMEOUT", "10s", "number of seconds"),
    ],
)
def test_invalid_env_values(sandbox: Env, key: str, value: str, needle: str) -> None:
    message = config_error(sandbox, env={key: value}, flags={"bucket": None} if key == "MGMT_BUCKET" else None)
    assert message.startswith(f"{key}="), message
    assert "(from env)" in message
    assert needle in message


def test_the_example_message_exactly(sandbox: Env) -> None:
    assert config_error(sandbox, env={"MGMT_CONCURRENCY": "abc"}) == (
        "MGMT_CONCURRENCY=abc (from env): expected an integer from 1 to 256"
    )


def test_control_characters_in_a_bad_value_are_escaped(sandbox: Env) -> None:
    message = config_error(sandbox, env={"MGMT_DUPLICATE_HANDLING": "x\ny"})
    assert "x\\ny" in message


def test_invalid_flag_and_config_values_name_their_source(sandbox: Env) -> None:
    assert config_error(sandbox, flags={"concurrency": 0}).startswith("MGMT_CONCURRENCY=0 (from flag): ")
    assert "(from flag)" in config_error(sandbox, flags={"concurrency": True})
    path = sandbox.config("MGMT_STORAGE_CLASS=cheap\n")
    assert config_error(sandbox).startswith(f"MGMT_STORAGE_CLASS=cheap (from config {path}): ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8388608", 8 * MiB),
        ("8MiB", 8 * MiB),
        ("8M", 8 * MiB),
        ("8MB", 8 * MiB),
        ("8mb", 8 * MiB),
        ("1 GiB", GiB),
        ("5G", 5 * GiB),
        ("6144K", 6 * MiB),
    ],
)
def test_part_size_formats(sandbox: Env, text: str, expected: int) -> None:
    assert sandbox.load(env={"MGMT_PART_SIZE": text}).part_size == expected


def test_multipart_threshold_accepts_any_non_negative_size(sandbox: Env) -> None:
    assert sandbox.load(env={"MGMT_MULTIPART_THRESHOLD": "0"}).multipart_threshold == 0
    assert sandbox.load(flags={"multipart_threshold": 1}).multipart_threshold == 1
    assert sandbox.load(env={"MGMT_MULTIPART_THRESHOLD": "100GiB"}).multipart_threshold == 100 * GiB


@pytest.mark.parametrize("text", ["true", "TRUE", "1", "yes", "On"])
def test_booleans_true(sandbox: Env, text: str) -> None:
    assert sandbox.load(env={"MGMT_PRESERVE_STRUCTURE": text}).preserve_structure is True


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "OFF"])
def test_booleans_false(sandbox: Env, text: str) -> None:
    assert sandbox.load(env={"MGMT_COMPLETED_ENABLED": text}).completed_enabled is False


def test_object_prefix_normalised(sandbox: Env) -> None:
    assert sandbox.load(env={"MGMT_OBJECT_PREFIX": "//media//2024///raw/"}).object_prefix == "media/2024/raw"
    assert sandbox.load(env={"MGMT_OBJECT_PREFIX": "/"}).object_prefix == ""


def test_storage_class_upper_cased(sandbox: Env) -> None:
    assert sandbox.load(env={"MGMT_STORAGE_CLASS": "glacier_ir"}).storage_class == "GLACIER_IR"


def test_endpoint_resolves_addressing_auto_and_checksums_stay_for_the_probe(sandbox: Env) -> None:
    # MGMT_CHECKSUM_MODE gave way to MGMT_CHECKSUM_ALGORITHM: `auto` is not resolved from the endpoint's URL but
    # probed on the endpoint itself (amgmt.s3.probe), so it stays `auto` here, with an endpoint or without.
    custom = sandbox.load(env={"MGMT_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert custom.endpoint_url == "http://127.0.0.1:9000"
    assert custom.checksum_algorithm == "auto"
    assert custom.addressing_style == "path"

    explicit = sandbox.load(
        env={
            "MGMT_ENDPOINT_URL": "https://s3.example.com",
            "MGMT_CHECKSUM_ALGORITHM": "CRC32C",
            "MGMT_ADDRESSING_STYLE": "virtual",
        }
    )
    assert explicit.checksum_algorithm == "crc32c"
    assert explicit.addressing_style == "virtual"

    aws = sandbox.load(env={"MGMT_CHECKSUM_ALGORITHM": "AUTO"})
    assert aws.checksum_algorithm == "auto" and aws.addressing_style == "auto"
    for value in ("md5", "sha256", "crc64nvme"):
        assert sandbox.load(env={"MGMT_CHECKSUM_ALGORITHM": value}).checksum_algorithm == value
    with pytest.raises(
        ConfigError, match=r"MGMT_CHECKSUM_ALGORITHM=crc32 \(from env\): expected one of auto, crc64nvme"
    ):
        sandbox.load(env={"MGMT_CHECKSUM_ALGORITHM": "crc32"})


# --- config file ------------------------------------------------------------------------------------------------


def test_parse_config_file_format(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(
        "# a comment\n"
        "\n"
        "   \n"
        "MGMT_BUCKET=plain\n"
        "export MGMT_REGION=eu-west-1\n"
        "MGMT_OBJECT_PREFIX = 'single quoted # not a comment'\n"
        'MGMT_PROFILE="double quoted"\n'
        "MGMT_STORAGE_CLASS=standard_ia   # trailing comment\n"
        "MGMT_CONCURRENCY=4\n"
        "MGMT_CONCURRENCY=6\n"
        "MGMT_ENDPOINT_URL=\n"
        "OTHER_TOOL_KEY=whatever\n"
        "MGMT_SOMETHING_FROM_THE_ORIGIN=kept out\n"
    )
    assert parse_config_file(path) == {
        "MGMT_BUCKET": "plain",
        "MGMT_REGION": "eu-west-1",
        "MGMT_OBJECT_PREFIX": "single quoted # not a comment",
        "MGMT_PROFILE": "double quoted",
        "MGMT_STORAGE_CLASS": "standard_ia",
        "MGMT_CONCURRENCY": "6",
        "MGMT_ENDPOINT_URL": "",
    }


@pytest.mark.parametrize(
    "bad_line",
    ["just some words", "=value", "MGMT BUCKET=x", "MGMT_BUCKET='unterminated", 'MGMT_BUCKET="a" junk', "export"],
)
def test_parse_config_file_rejects_a_line_that_is_not_key_value(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "config"
    path.write_text(f"# header\nMGMT_BUCKET=ok\n{bad_line}\n")
    with pytest.raises(ConfigError) as info:
        parse_config_file(path)
    assert str(info.value) == f"config file {path} line 3: expected KEY=VALUE"


def test_parse_config_file_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        parse_config_file(tmp_path)  # a directory
    binary = tmp_path / "binary"
    binary.write_bytes(b"MGMT_BUCKET=\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_config_file(binary)


def test_secrets_in_the_config_file_never_reach_settings(sandbox: Env) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    path = sandbox.config(
        f"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY={secret}\n"
        f"export AWS_SESSION_TOKEN='{secret}'\nMGMT_AWS_SECRET_ACCESS_KEY={secret}\nMGMT_REGION=eu-west-1\n"
    )
    values = parse_config_file(path)
    assert secret not in repr(values)
    settings = sandbox.load()
    assert settings.region == "eu-west-1"
    assert secret not in repr(settings)
    assert secret not in repr(settings.describe())


def test_config_path_given_must_exist(sandbox: Env) -> None:
    missing = sandbox.cwd / "missing.conf"
    with pytest.raises(ConfigError, match="does not exist"):
        sandbox.load(config_path=missing)


def test_config_path_given_wins_over_the_default_one(sandbox: Env) -> None:
    sandbox.config("MGMT_CONCURRENCY=3\n")
    chosen = sandbox.cwd / "other.conf"
    chosen.write_text("MGMT_CONCURRENCY=9\n")
    settings = sandbox.load(config_path=Path("other.conf"))
    assert settings.concurrency == 9
    assert settings.config_file == chosen
    assert settings.sources["concurrency"] == f"config {chosen}"


def test_default_config_path_prefers_amgmt_then_falls_back_to_mgmt(sandbox: Env) -> None:
    assert default_config_path(sandbox.environ) is None
    origin = sandbox.config("MGMT_CONCURRENCY=2\nMGMT_LEGACY_ONLY=1\n", app="mgmt")
    assert default_config_path(sandbox.environ) == origin
    assert sandbox.load().concurrency == 2
    ours = sandbox.config("MGMT_CONCURRENCY=5\n")
    assert default_config_path(sandbox.environ) == ours
    assert sandbox.load().concurrency == 5


def test_default_config_path_honours_xdg_config_home(sandbox: Env, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "amgmt").mkdir(parents=True)
    (xdg / "amgmt" / "config").write_text("MGMT_REGION=x\n")
    sandbox.config("MGMT_REGION=home\n")
    environ = {**sandbox.environ, "XDG_CONFIG_HOME": str(xdg)}
    assert default_config_path(environ) == xdg / "amgmt" / "config"
    assert default_config_path({**sandbox.environ, "XDG_CONFIG_HOME": "relative"}) == (
        sandbox.home / ".config" / "amgmt" / "config"
    )
    assert default_config_path({}) is None


# --- writing the config file -------------------------------------------------------------------------------------


def test_write_config_values_replaces_keys_where_they_stand_and_keeps_every_other_line(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(
        "# mine\nMGMT_BUCKET=keep-me\n\n  export MGMT_CONCURRENCY = 2  # old\nAWS_PROFILE=work\n"
        "MGMT_REGION=eu-west-1\nMGMT_CONCURRENCY=3\nOTHER_TOOL=x # note"
    )
    assert write_config_values(path, {"MGMT_CONCURRENCY": "8", "MGMT_REGION": "us-east-2"}) is None
    assert path.read_text() == (
        "# mine\nMGMT_BUCKET=keep-me\n\n  export MGMT_CONCURRENCY=8\nAWS_PROFILE=work\n"
        "MGMT_REGION=us-east-2\nMGMT_CONCURRENCY=8\nOTHER_TOOL=x # note\n"
    )
    assert parse_config_file(path) == {"MGMT_BUCKET": "keep-me", "MGMT_CONCURRENCY": "8", "MGMT_REGION": "us-east-2"}
    assert [p.name for p in tmp_path.iterdir()] == ["config"]  # no temp file left


def test_write_config_values_follows_a_symlink_and_keeps_it(tmp_path: Path) -> None:
    # A config kept in a dotfiles repo and linked into ~/.config: the repo's file changes, the link stays a link.
    real = tmp_path / "dotfiles" / "amgmt.conf"
    real.parent.mkdir()
    real.write_text("# tracked\nMGMT_CONCURRENCY=2\n")
    real.chmod(0o640)
    link = tmp_path / "home" / ".config" / "amgmt" / "config"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)

    write_config_values(link, {"MGMT_CONCURRENCY": "8"})

    assert link.is_symlink() and link.resolve() == real.resolve()
    assert real.read_text() == "# tracked\nMGMT_CONCURRENCY=8\n"
    assert real.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in link.parent.iterdir()) == ["config"]  # no temp file left beside the link


def test_own_config_path_is_amgmts_file_and_needs_a_home() -> None:
    assert own_config_path({"HOME": "/h"}) == Path("/h/.config/amgmt/config")
    assert own_config_path({"HOME": "/h", "XDG_CONFIG_HOME": "/x"}) == Path("/x/amgmt/config")
    with pytest.raises(ConfigError, match="neither XDG_CONFIG_HOME nor HOME"):
        own_config_path({"XDG_CONFIG_HOME": "relative/ignored"})


def test_write_config_values_appends_missing_keys_under_the_comment(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("# mine\nMGMT_CONCURRENCY=2\n")
    write_config_values(
        path,
        {"MGMT_PART_SIZE": "16MiB", "MGMT_CONCURRENCY": "8", "MGMT_PARTS_IN_FLIGHT": "32"},
        comment="tuned on Monday",
    )
    assert path.read_text() == (
        "# mine\nMGMT_CONCURRENCY=8\n\n# tuned on Monday\nMGMT_PART_SIZE=16MiB\nMGMT_PARTS_IN_FLIGHT=32\n"
    )

    write_config_values(path, {"MGMT_CONCURRENCY": "4"}, comment="not needed: nothing is appended")
    write_config_values(path, {"MGMT_REGION": "eu-west-1"})  # no comment: appended as is
    assert path.read_text() == (
        "# mine\nMGMT_CONCURRENCY=4\n\n# tuned on Monday\nMGMT_PART_SIZE=16MiB\n"
        "MGMT_PARTS_IN_FLIGHT=32\nMGMT_REGION=eu-west-1\n"
    )


def test_write_config_values_quotes_what_needs_quotes_so_values_read_back(tmp_path: Path) -> None:
    path = tmp_path / "config"
    values = {
        "MGMT_OBJECT_PREFIX": "a b",
        "MGMT_BUCKET": " padded ",
        "MGMT_PROFILE": "x #y",
        "MGMT_REGION": "it's",
        "MGMT_STORAGE_CLASS": "'q'",
        "MGMT_ENDPOINT_URL": "",
    }
    write_config_values(path, values)
    assert path.read_text() == (
        "MGMT_OBJECT_PREFIX=a b\nMGMT_BUCKET=' padded '\nMGMT_PROFILE='x #y'\n"
        "MGMT_REGION=it's\nMGMT_STORAGE_CLASS=\"'q'\"\nMGMT_ENDPOINT_URL=\n"
    )
    assert parse_config_file(path) == values


@pytest.mark.parametrize("text", ["not a setting line\n", "MGMT_BUCKET='unterminated\n"])
def test_write_config_values_leaves_a_malformed_file_alone(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="line 1: expected KEY=VALUE"):
        write_config_values(path, {"MGMT_CONCURRENCY": "8"}, comment="tuned")
    assert path.read_text() == text
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["config"]


def test_write_config_values_refuses_bad_values_and_foreign_keys_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("MGMT_CONCURRENCY=2\n")
    with pytest.raises(ConfigError, match="control characters"):
        write_config_values(path, {"MGMT_BUCKET": "a\nMGMT_CONCURRENCY=99"})
    with pytest.raises(ConfigError, match="both kinds of quotes"):
        write_config_values(path, {"MGMT_BUCKET": ' it\'s "x"'})
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        write_config_values(path, {"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(ValueError, match="one line"):
        write_config_values(path, {"MGMT_REGION": "x"}, comment="two\nlines")
    assert path.read_text() == "MGMT_CONCURRENCY=2\n"


def test_write_config_values_keeps_the_mode_and_creates_0600_in_a_0700_dir(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.write_text("MGMT_CONCURRENCY=2\n")
    kept.chmod(0o640)
    write_config_values(kept, {"MGMT_CONCURRENCY": "3"})
    assert kept.stat().st_mode & 0o777 == 0o640

    new = tmp_path / "home" / "amgmt" / "config"
    write_config_values(new, {"MGMT_CONCURRENCY": "3"})
    assert new.read_text() == "MGMT_CONCURRENCY=3\n"
    assert new.stat().st_mode & 0o777 == 0o600
    assert new.parent.stat().st_mode & 0o777 == 0o700


def test_write_config_values_starts_a_new_file_from_the_seed_and_never_changes_the_seed(tmp_path: Path) -> None:
    origin = tmp_path / "mgmt" / "config"
    origin.parent.mkdir()
    origin_text = "# the origin's\nMGMT_BUCKET=from-origin\nMGMT_CONCURRENCY=2\nMGMT_LEGACY_ONLY=1\n"
    origin.write_text(origin_text)
    origin.chmod(0o644)
    path = tmp_path / "amgmt" / "config"

    assert (
        write_config_values(
            path, {"MGMT_CONCURRENCY": "8", "MGMT_REGION": "eu-west-1"}, comment="tuned", seed_from=origin
        )
        == origin
    )
    assert path.read_text() == (
        "# the origin's\nMGMT_BUCKET=from-origin\nMGMT_CONCURRENCY=8\nMGMT_LEGACY_ONLY=1\n"
        "\n# tuned\nMGMT_REGION=eu-west-1\n"
    )
    assert path.stat().st_mode & 0o777 == 0o600  # not the seed's mode
    assert origin.read_text() == origin_text

    # Once the file exists, the seed is not read again.
    origin.write_text("MGMT_BUCKET=changed-later\n")
    assert write_config_values(path, {"MGMT_CONCURRENCY": "9"}, seed_from=origin) is None
    assert parse_config_file(path)["MGMT_BUCKET"] == "from-origin"
    assert parse_config_file(path)["MGMT_CONCURRENCY"] == "9"


def test_write_config_values_does_not_create_a_file_from_a_malformed_seed(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.write_text("MGMT_BUCKET=ok\nbroken line\n")
    path = tmp_path / "amgmt" / "config"
    with pytest.raises(ConfigError, match="line 2: expected KEY=VALUE"):
        write_config_values(path, {"MGMT_CONCURRENCY": "8"}, seed_from=origin)
    assert not path.parent.exists()
    assert origin.read_text() == "MGMT_BUCKET=ok\nbroken line\n"


def test_write_config_values_reports_os_errors_in_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConfigError) as info:
        write_config_values(not_a_dir / "config", {"MGMT_CONCURRENCY": "8"})
    message = str(info.value)
    assert message.startswith(f"cannot write the config file {not_a_dir / 'config'}: ") and "\n" not in message
    assert isinstance(info.value.__cause__, OSError)


# --- describe -----------------------------------------------------------------------------------------------------


def test_describe_rows_values_and_sources(sandbox: Env) -> None:
    path = sandbox.config("MGMT_REGION=eu-west-1\nMGMT_PART_SIZE=16777216\n")
    settings = sandbox.load(flags={"concurrency": 3}, env={"MGMT_ENDPOINT_URL": "http://localhost:9000"})
    rows = settings.describe()
    keys = [key for key, _, _ in rows]
    assert keys[:3] == ["MGMT_BUCKET", "MGMT_OBJECT_PREFIX", "MGMT_LOCAL_DIR"]
    # MGMT_EXCLUDE, MGMT_HOOK, MGMT_HOOK_TIMEOUT, MGMT_ON_CONFLICT, MGMT_SSE, MGMT_SSE_KMS_KEY_ID, MGMT_TAGS,
    # MGMT_METADATA, MGMT_ACL, MGMT_BWLIMIT (issue 15), MGMT_SETTLE_SECONDS (13), MGMT_DB_URL, MGMT_HOST_ID (14),
    # MGMT_SMALL_ENTRY_SIZE (12), MGMT_LEASE_SECONDS (14)
    assert len(keys) == len(set(keys)) == 38
    assert all(key.startswith("MGMT_") for key in keys)
    table = {key: (value, source) for key, value, source in rows}
    assert table["MGMT_BUCKET"] == ("media-bucket", "flag")
    assert table["MGMT_CONCURRENCY"] == ("3", "flag")
    assert table["MGMT_ENDPOINT_URL"] == ("http://localhost:9000", "env MGMT_ENDPOINT_URL")
    assert table["MGMT_REGION"] == ("eu-west-1", f"config {path}")
    assert table["MGMT_PART_SIZE"] == ("16MiB", f"config {path}")
    assert table["MGMT_CHECKSUM_ALGORITHM"] == ("auto", "default")
    assert table["MGMT_ADDRESSING_STYLE"] == ("path", "default")
    assert table["MGMT_PRESERVE_STRUCTURE"] == ("false", "default")
    assert table["MGMT_PROFILE"] == ("", "default")
    assert table["MGMT_READ_TIMEOUT"] == ("60", "default")
    assert table["MGMT_LOCAL_DIR"] == (str(sandbox.cwd.resolve()), "default")
    assert rows == sandbox.load(flags={"concurrency": 3}, env={"MGMT_ENDPOINT_URL": "http://localhost:9000"}).describe()


def test_describe_values_load_back_to_the_same_settings(sandbox: Env) -> None:
    first = sandbox.load(
        env={
            "MGMT_PART_SIZE": "6MiB",
            "MGMT_MULTIPART_THRESHOLD": "1000",
            "MGMT_OBJECT_PREFIX": "a/b",
            "MGMT_STORAGE_CLASS": "GLACIER",
            "MGMT_READ_TIMEOUT": "2.5",
        }
    )
    env = {key: value for key, value, _ in first.describe()}
    second = load_settings(environ={**sandbox.environ, **env}, cwd=sandbox.cwd)
    for name in (
        "part_size",
        "multipart_threshold",
        "object_prefix",
        "storage_class",
        "local_dir",
        "db_path",
        "checksum_algorithm",
        "addressing_style",
        "concurrency",
        "completed_enabled",
        "read_timeout",
        "connect_timeout",
    ):
        assert getattr(second, name) == getattr(first, name)


def test_settings_is_frozen_and_sources_read_only(sandbox: Env) -> None:
    settings = sandbox.load()
    with pytest.raises(AttributeError):
        settings.concurrency = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.sources["concurrency"] = "flag"  # type: ignore[index]


# --- where the local, completed, metadata and staging locations may be --------------------------------------------

# (MGMT_COMPLETED_DIR, MGMT_DB_PATH, MGMT_STAGING_DIR) relative to the sandbox's tmp dir ("media" is the local dir;
# "" keeps the default), and the key the refusal names (None: allowed).
LAYOUTS = {
    "defaults": ("", "", "", None),
    "staging-is-the-local-dir": ("", "", "media", "MGMT_STAGING_DIR"),
    "staging-holds-the-local-dir": ("", "", ".", "MGMT_STAGING_DIR"),
    "staging-in-an-entry": ("", "", "media/films/staging", "MGMT_STAGING_DIR"),
    "staging-directly-in-the-local-dir": ("", "", "media/.staging", None),
    "staging-in-the-metadata-dir-elsewhere": ("", "meta/ops.db", "meta/staging", None),
    "staging-is-the-completed-dir": ("", "", "media/completed", "MGMT_STAGING_DIR"),
    "staging-holds-the-completed-dir": ("done/completed", "", "done", "MGMT_STAGING_DIR"),
    "staging-shared-folder-outside": ("", "", "shared", None),
    "staging-is-the-metadata-dir": ("", "meta/ops.db", "meta", None),
    "db-directly-in-the-local-dir": ("", "media/ops.db", "", "MGMT_DB_PATH"),
    "db-in-an-entry": ("", "media/films/meta/ops.db", "", "MGMT_DB_PATH"),
    "db-in-a-dir-of-the-local-dir": ("", "media/.amgmt/ops.db", "", "MGMT_DB_PATH"),
    "db-in-a-completed-dir-elsewhere": ("done", "done/meta/ops.db", "", None),
    "db-beside-the-local-dir": ("", "ops.db", "", None),
    "db-in-the-completed-dir": ("", "media/completed/ops.db", "", None),
    "completed-holds-the-local-dir": (".", "", "", "MGMT_COMPLETED_DIR"),
    "completed-in-an-entry": ("media/films/completed", "", "", "MGMT_COMPLETED_DIR"),
    "completed-elsewhere": ("done", "", "", None),
}


@pytest.mark.parametrize(("completed", "db", "staging", "refused"), LAYOUTS.values(), ids=LAYOUTS.keys())
def test_dangerous_overlaps_of_the_local_completed_metadata_and_staging_dirs_are_refused(
    sandbox: Env, completed: str, db: str, staging: str, refused: str | None
) -> None:
    base = sandbox.media.parent
    env = {
        key: str(base / rel)
        for key, rel in (("MGMT_COMPLETED_DIR", completed), ("MGMT_DB_PATH", db), ("MGMT_STAGING_DIR", staging))
        if rel
    }
    flags = {"local_dir": str(sandbox.media)}
    if refused is None:
        settings = sandbox.load(flags=flags, env=env)
        assert settings.local_dir == sandbox.media.resolve()
        return
    message = config_error(sandbox, flags=flags, env=env)
    assert message.startswith(f"{refused}="), message
    assert "(from env)" in message and "must not" in message


# -- the PostgreSQL store and the host id (issue 14) ---------------------------------------------------------------


def test_db_url_is_a_postgresql_url_shown_without_its_password(sandbox: Env) -> None:
    assert sandbox.load().db_url is None
    url = "postgresql://amgmt:hunter2-secret@db.example:5432/catalog"
    settings = sandbox.load(env={"MGMT_DB_URL": url})
    assert settings.db_url == url and settings.sources["db_url"] == "env MGMT_DB_URL"
    assert (
        sandbox.load(flags={"db_url": "postgres://db/amgmt"}, env={"MGMT_DB_URL": url}).db_url == "postgres://db/amgmt"
    )
    assert sandbox.load(flags={"db_url": ""}, env={"MGMT_DB_URL": url}).db_url is None  # '' resets it
    shown = {key: value for key, value, _ in settings.describe()}
    assert shown["MGMT_DB_URL"] == "postgresql://amgmt:***@db.example:5432/catalog"
    for bad in ("mysql://amgmt:hunter2-secret@db/x", "postgresql://amgmt:hunter2-secret@/x", "postgresql://h:port/x"):
        message = config_error(sandbox, env={"MGMT_DB_URL": bad})
        assert message.startswith("MGMT_DB_URL=") and "expected a postgresql://" in message, message
        assert "hunter2-secret" not in message


def test_host_id_defaults_to_the_host_name(sandbox: Env) -> None:
    settings = sandbox.load()
    assert settings.host_id == socket.gethostname() and settings.sources["host_id"] == "default"
    assert sandbox.load(env={"MGMT_HOST_ID": " ingest-2 "}).host_id == "ingest-2"
    assert sandbox.load(env={"MGMT_HOST_ID": ""}).host_id == socket.gethostname()
    assert "control characters" in config_error(sandbox, env={"MGMT_HOST_ID": "a\nb"})
    assert "1 to 255 characters" in config_error(sandbox, env={"MGMT_HOST_ID": "h" * 256})


def test_lease_seconds_default_and_bounds(sandbox: Env) -> None:
    assert sandbox.load().lease_seconds == 60.0
    assert sandbox.load(env={"MGMT_LEASE_SECONDS": "2.5"}).lease_seconds == 2.5
    for bad in ("0.5", "3601", "-1", "soon"):
        message = config_error(sandbox, env={"MGMT_LEASE_SECONDS": bad})
        assert "MGMT_LEASE_SECONDS" in message and ("1 to 3600" in message or "greater than 0" in message), message
