"""The object options and --bwlimit from the command line: what reaches S3, and bad values refused in one line
(exit 2) before anything is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_options_reach_the_object_and_the_record(amgmt, local_dir: Path, s3_client, bucket) -> None:
    (local_dir / "clip.mp4").write_bytes(b"clip" * 1000)

    run = amgmt("upload", "clip.mp4", "--sse", "AES256", "--tag", "project=gopro", "--tag", "card=2",
                "--metadata", "camera=HERO12", "--acl", "bucket-owner-full-control", "--json")

    assert run.code == 0, run
    [op] = json.loads(run.stdout)["operations"]
    assert op["metadata"]["object_options"] == {"sse": "AES256", "acl": "bucket-owner-full-control",
                                                "tags": {"project": "gopro", "card": "2"},
                                                "metadata": {"camera": "HERO12"}}
    assert op["command_args"]["tags"] == ["project=gopro", "card=2"]
    head = s3_client.head_object(Bucket=bucket, Key="clip.mp4.tar.gz")
    assert head["ServerSideEncryption"] == "AES256" and head["Metadata"]["camera"] == "HERO12"
    tags = s3_client.get_object_tagging(Bucket=bucket, Key="clip.mp4.tar.gz")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("card", "2"), ("project", "gopro")]


def test_settings_in_the_environment(amgmt, local_dir: Path, s3_client, bucket) -> None:
    (local_dir / "clip.mp4").write_bytes(b"clip" * 1000)

    run = amgmt("upload", "clip.mp4", env={"MGMT_SSE": "aws:kms", "MGMT_TAGS": "a=1,b=2"})

    assert run.code == 0, run
    assert s3_client.head_object(Bucket=bucket, Key="clip.mp4.tar.gz")["ServerSideEncryption"] == "aws:kms"
    tags = s3_client.get_object_tagging(Bucket=bucket, Key="clip.mp4.tar.gz")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("a", "1"), ("b", "2")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sse", "aes128"), "MGMT_SSE=aes128 (from flag): expected one of AES256, aws:kms"),
        (("--sse-kms-key-id", "k1"), "MGMT_SSE_KMS_KEY_ID=k1 (from flag): a KMS key needs MGMT_SSE=aws:kms"),
        (("--tag", "novalue"), "MGMT_TAGS="),
        (("--tag", "aws:x=1"), "the aws: prefix is reserved"),
        (("--metadata", "amgmt-source-sha256=0"), "the amgmt- prefix is amgmt's own"),
        (("--metadata", "k=caf\u00e9"), "printable ASCII"),
        (("--acl", "everyone"), "MGMT_ACL=everyone (from flag): expected one of private, public-read"),
        (("--bwlimit", "10X"), "MGMT_BWLIMIT=10X (from flag): expected a rate such as 10M"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(amgmt, local_dir: Path, keys, args, message) -> None:
    (local_dir / "clip.mp4").write_bytes(b"clip")

    run = amgmt("upload", "clip.mp4", *args)

    assert run.code == 2, run
    assert run.stderr.startswith("amgmt: error: ") and run.stderr.count("\n") == 1, run
    assert message in run.stderr, run
    assert keys() == [] and (local_dir / "clip.mp4").exists()
