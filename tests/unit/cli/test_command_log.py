"""Which commands the log file records, and what of their arguments it may show."""

from __future__ import annotations

import pytest

from amgmt.cli.command_log import changing_command, shown_arguments


@pytest.mark.parametrize(("words", "name"), [
    (["upload", "all"], "upload"),
    (["-v", "retry", "--failed"], "retry"),
    (["config", "set", "MGMT_CONCURRENCY=4"], "config set"),
    (["config", "init", "-y"], "config init"),
    (["watch"], "watch"),
    (["watch", "--status"], None),
    (["config"], None),
    (["config", "show"], None),
    (["history", "-n", "5"], None),
    (["download", "clip.mp4"], "download"),
    ([], None),
])
def test_changing_commands(words: list[str], name: str | None) -> None:
    assert changing_command(words) == name


def test_hooks_and_url_passwords_are_hidden() -> None:
    assert shown_arguments(["upload", "all", "--hook", "curl https://x/TOKEN", "-c", "8"]) == (
        "upload all --hook <hidden> -c 8")
    assert shown_arguments(["upload", "--hook=curl https://x/TOKEN"]) == "upload --hook=<hidden>"
    assert shown_arguments(["config", "set", "mgmt_hook=notify TOKEN"]) == "config set mgmt_hook=<hidden>"
    assert shown_arguments(["config", "set", "MGMT_HOOK", "notify TOKEN"]) == "config set MGMT_HOOK <hidden>"
    assert shown_arguments(["ls", "--endpoint-url", "https://user:pass@s3.example:9000/"]) == (
        "ls --endpoint-url https://***@s3.example:9000/")
    assert shown_arguments(["upload", "holiday 2026.mp4", "tab\there"]) == "upload 'holiday 2026.mp4' tab\\there"
