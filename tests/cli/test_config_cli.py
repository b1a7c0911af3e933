"""`amgmt config`: every MGMT_ key with its source; the config file honoured, the environment over it; and no
command ever prints the AWS secret (the `amgmt` fixture checks every run; this test runs them all)."""

from __future__ import annotations

import json
from pathlib import Path

from amgmt.config import SETTING_NAMES, env_key
from clikit import SECRET

ALL_KEYS = sorted(env_key(name) for name in SETTING_NAMES)


def test_config_shows_every_key_and_its_source(amgmt, bucket: str) -> None:
    run = amgmt("config")
    assert run.code == 0, run
    rows = {line.split()[0]: line for line in run.stdout.splitlines()[1:] if line.startswith("MGMT_")}
    assert sorted(rows) == ALL_KEYS
    assert bucket in rows["MGMT_BUCKET"] and rows["MGMT_BUCKET"].endswith("env MGMT_BUCKET")
    assert rows["MGMT_CONCURRENCY"].split()[-1] == "default"

    run = amgmt("config", "--json")
    assert run.code == 0, run
    data = json.loads(run.stdout)
    assert sorted(data) == ALL_KEYS
    assert data["MGMT_BUCKET"] == {"value": bucket, "source": "env MGMT_BUCKET"}
    assert data["MGMT_CONCURRENCY"] == {"value": "8", "source": "default"}


def test_config_file_is_honoured_and_env_overrides_it(amgmt, tmp_path: Path) -> None:
    config = tmp_path / "xdg" / "amgmt" / "config"
    config.parent.mkdir(parents=True)
    config.write_text(
        "# amgmt settings\n"
        "MGMT_OBJECT_PREFIX=from-file\n"
        "export MGMT_CONCURRENCY=3\n"
        f"AWS_SECRET_ACCESS_KEY={SECRET}\n"
    )

    data = json.loads(amgmt("config", "--json", env={"MGMT_CONCURRENCY": "5"}).stdout)

    assert data["MGMT_OBJECT_PREFIX"] == {"value": "from-file", "source": f"config {config}"}
    assert data["MGMT_CONCURRENCY"] == {"value": "5", "source": "env MGMT_CONCURRENCY"}
    assert json.loads(amgmt("config", "--json").stdout)["MGMT_CONCURRENCY"]["value"] == "3"


def test_no_command_prints_the_secret(amgmt, make_media, tmp_path: Path, s3_client, bucket) -> None:
    """The secret is in the environment and in the config file. Every CLI test's runs are checked for it by the
    `amgmt` fixture; this one adds the outputs that carry the most: JSON reports, records, errors."""
    config = tmp_path / "xdg" / "amgmt" / "config"
    config.parent.mkdir(parents=True)
    config.write_text(f"AWS_SECRET_ACCESS_KEY={SECRET}\nMGMT_CONCURRENCY=2\n")
    make_media({"a.mp4": 1000, "taken.mov": 10})
    s3_client.put_object(Bucket=bucket, Key="taken.mov.tar.gz", Body=b"other")

    runs = [amgmt("config", "--json"), amgmt("upload", "all", "--json")]
    operation_id = json.loads(runs[-1].stdout)["operations"][0]["operation_id"]
    runs += [
        amgmt("history", "--json"),
        amgmt("show", operation_id, "--json"),
        amgmt("upload", "all", env={"MGMT_BUCKET": "amgmt-missing-bucket-0"}),
    ]

    assert [r.code for r in runs] == [0, 1, 0, 0, 3]
    assert json.loads(runs[0].stdout)["MGMT_CONCURRENCY"]["source"] == f"config {config}"
    assert all(SECRET not in r.stdout + r.stderr for r in runs)


# -- config set / init --------------------------------------------------------------------------------------------


def test_config_set_writes_replaces_and_keeps_comments(amgmt, tmp_path: Path) -> None:
    config = tmp_path / "xdg" / "amgmt" / "config"
    run = amgmt("config", "set", "concurrency", "4")
    assert run.code == 0, run
    assert config.read_text() == "MGMT_CONCURRENCY=4\n"
    assert config.stat().st_mode & 0o777 == 0o600 and config.parent.stat().st_mode & 0o777 == 0o700

    config.write_text(f"# mine\nexport MGMT_CONCURRENCY=4\nAWS_SECRET_ACCESS_KEY={SECRET}\nMGMT_REGION=eu-west-1\n")
    assert amgmt("config", "set", "MGMT_CONCURRENCY", "6").code == 0
    assert amgmt("config", "set", "MGMT_OBJECT_PREFIX", "a b").code == 0
    assert config.read_text() == (
        f"# mine\nexport MGMT_CONCURRENCY=6\nAWS_SECRET_ACCESS_KEY={SECRET}\nMGMT_REGION=eu-west-1\n"
        "MGMT_OBJECT_PREFIX=a b\n"
    )
    data = json.loads(amgmt("config", "show", "--json").stdout)
    assert data["MGMT_CONCURRENCY"] == {"value": "6", "source": f"config {config}"}
    assert data["MGMT_OBJECT_PREFIX"]["value"] == "a b"


def test_config_set_starts_amgmts_file_from_the_origins_and_leaves_the_origins_alone(amgmt, tmp_path: Path) -> None:
    origin = tmp_path / "xdg" / "mgmt" / "config"
    origin.parent.mkdir(parents=True)
    origin.write_text("# the older tool's\nMGMT_REGION=eu-west-1\nMGMT_LEGACY_ONLY=1\n")
    config = tmp_path / "xdg" / "amgmt" / "config"
    run = amgmt("config", "set", "concurrency", "4")
    assert run.code == 0, run
    assert run.stdout == f"MGMT_CONCURRENCY=4 written to {config} (started from a copy of {origin})\n"
    assert config.read_text() == "# the older tool's\nMGMT_REGION=eu-west-1\nMGMT_LEGACY_ONLY=1\nMGMT_CONCURRENCY=4\n"
    assert origin.read_text() == "# the older tool's\nMGMT_REGION=eu-west-1\nMGMT_LEGACY_ONLY=1\n"
    data = json.loads(amgmt("config", "show", "--json").stdout)
    assert data["MGMT_REGION"] == {"value": "eu-west-1", "source": f"config {config}"}

    run = amgmt("config", "set", "concurrency", "5")  # amgmt's own file now exists: no second copy
    assert run.stdout == f"MGMT_CONCURRENCY=5 written to {config}\n"


def test_config_set_rejects_bad_values_unknown_keys_and_secrets(amgmt, tmp_path: Path) -> None:
    config = tmp_path / "xdg" / "amgmt" / "config"
    config.parent.mkdir(parents=True)
    config.write_text("# keep\nMGMT_CONCURRENCY=2\n")
    for args in (("concurrency", "lots"), ("AWS_SECRET_ACCESS_KEY", "x"), ("aws_access_key_id", "x"),
                 ("MGMT_NO_SUCH_KEY", "1"), ("local_dir", str(tmp_path / "missing"))):
        run = amgmt("config", "set", *args)
        assert run.code == 2, run
        assert run.stderr.startswith("amgmt: error: ") and len(run.stderr.splitlines()) == 1, run
        assert config.read_text() == "# keep\nMGMT_CONCURRENCY=2\n"
    assert "credential" in amgmt("config", "set", "AWS_SECRET_ACCESS_KEY", "x").stderr


def test_config_init_checks_the_bucket_and_writes(amgmt, tmp_path: Path, bucket: str, local_dir: Path) -> None:
    config = tmp_path / "xdg" / "amgmt" / "config"
    run = amgmt("config", "init", "--bucket", "amgmt-missing-bucket-0", "--prefix", "p", "--local-dir", str(local_dir))
    assert run.code == 3, run
    assert not config.exists()

    run = amgmt("config", "init", "--bucket", bucket, "--prefix", "media/", "--local-dir", str(local_dir))
    assert run.code == 0, run
    assert config.read_text() == (
        f"MGMT_BUCKET={bucket}\nMGMT_OBJECT_PREFIX=media\nMGMT_LOCAL_DIR={local_dir}\n"
    )
    data = json.loads(amgmt("config", "--json", drop=("MGMT_BUCKET", "MGMT_LOCAL_DIR")).stdout)
    assert data["MGMT_BUCKET"] == {"value": bucket, "source": f"config {config}"}


def test_config_init_asks_on_stdin_and_writes_the_answers(cli_env: dict[str, str], tmp_path: Path, bucket: str,
                                                          local_dir: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "xdg" / "amgmt" / "config"
    env = {k: v for k, v in cli_env.items() if k not in ("MGMT_BUCKET", "MGMT_LOCAL_DIR")}
    env.update(AWS_SECRET_ACCESS_KEY=SECRET, XDG_CONFIG_HOME=str(tmp_path / "xdg"),
               XDG_STATE_HOME=str(tmp_path / "state"))
    done = subprocess.run([sys.executable, "-m", "amgmt", "config", "init"], env=env, cwd=tmp_path,
                          input=f"{bucket}\nmedia/2026/\n{local_dir}\n", capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done
    assert "coroutine" not in done.stdout + done.stderr and "Traceback" not in done.stderr, done
    assert "S3 bucket:" in done.stdout and "Key prefix (empty for none)" in done.stdout, done
    assert "Local dir [" in done.stdout, done  # the current value is offered as the default
    assert config.read_text() == f"MGMT_BUCKET={bucket}\nMGMT_OBJECT_PREFIX=media/2026\nMGMT_LOCAL_DIR={local_dir}\n"
    assert SECRET not in done.stdout + done.stderr
