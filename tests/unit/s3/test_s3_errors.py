"""amgmt.s3.errors: one translation of S3 answers into amgmt errors, the same for botocore's and the direct path."""

from __future__ import annotations

import aiohttp
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError, ReadTimeoutError

from amgmt.errors import StorageError, UploadError
from amgmt.s3.errors import (
    Answer,
    S3StorageError,
    S3UploadError,
    answer_from_body,
    answer_of,
    error_for,
    translate_errors,
)


def client_error(code: str, status: int, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


@pytest.mark.parametrize(("code", "status"), [
    ("SlowDown", 503), ("InternalError", 500), ("ServiceUnavailable", 503), ("RequestTimeout", 400),
    ("BadDigest", 400), ("IncompleteBody", 400), ("502", 502), ("Whatever", 500),
])
def test_transient_answers_are_upload_errors_worth_another_attempt(code: str, status: int) -> None:
    error = error_for("PUT", Answer(code, status), bucket="b", key="k")
    assert isinstance(error, S3UploadError) and isinstance(error, UploadError)
    assert error.transient and not error.unreachable
    assert error.answer == Answer(code, status)


@pytest.mark.parametrize(("code", "status"), [
    ("InvalidArgument", 400), ("NotImplemented", 501), ("PreconditionFailed", 412), ("NoSuchKey", 404),
    ("EntityTooSmall", 400), ("400", 400),
])
def test_permanent_answers_about_one_object_fail_that_object_once(code: str, status: int) -> None:
    error = error_for("PUT", Answer(code, status), bucket="b", key="k")
    assert isinstance(error, S3UploadError) and not error.transient
    assert "PUT s3://b/k failed" in str(error) and code in str(error)


@pytest.mark.parametrize(("code", "status"), [
    ("AccessDenied", 403), ("403", 403), ("InvalidAccessKeyId", 403), ("SignatureDoesNotMatch", 403),
    ("NoSuchBucket", 404), ("ExpiredToken", 400), ("Anything", 403),
])
def test_run_wide_answers_stop_the_run(code: str, status: int) -> None:
    error = error_for("PUT", Answer(code, status), bucket="b", key="k")
    assert isinstance(error, S3StorageError) and isinstance(error, StorageError)
    assert not error.transient


def test_a_404_is_the_bucket_when_no_key_was_asked_for_and_the_key_otherwise() -> None:
    on_bucket = error_for("access", Answer("404", 404), bucket="b")
    assert isinstance(on_bucket, StorageError) and "bucket 'b' does not exist" in str(on_bucket)
    on_key = error_for("HEAD", Answer("404", 404), bucket="b", key="k")
    assert isinstance(on_key, S3UploadError) and not on_key.transient


def test_a_403_says_to_check_the_credentials() -> None:
    assert "check the AWS credentials" in str(error_for("HEAD", Answer("403", 403), bucket="b", key="k"))


def test_a_bare_400_with_no_body_takes_its_status_as_the_code() -> None:
    answer = answer_from_body(400, b"")
    assert answer == Answer("400", 400, "")
    error = error_for("access", answer, bucket="b")
    assert isinstance(error, S3UploadError) and not error.transient and "400 (HTTP 400)" in str(error)


def test_an_xml_error_body_gives_code_and_message() -> None:
    body = b"<Error><Code>SlowDown</Code><Message>Please &amp; reduce</Message></Error>"
    assert answer_from_body(503, body) == Answer("SlowDown", 503, "Please & reduce")


def test_botocore_and_direct_answers_translate_alike() -> None:
    with pytest.raises(S3UploadError) as botocore_way:
        with translate_errors("PUT", bucket="b", key="k"):
            raise client_error("SlowDown", 503, "Please reduce")
    direct_way = error_for("PUT", answer_from_body(503, b"<Code>SlowDown</Code><Message>Please reduce</Message>"),
                           bucket="b", key="k")
    assert str(botocore_way.value) == str(direct_way)
    assert botocore_way.value.transient == direct_way.transient
    assert answer_of(botocore_way.value) == answer_of(direct_way)
    assert isinstance(botocore_way.value.__cause__, ClientError)


def test_amgmt_errors_pass_through_unchanged() -> None:
    mine = S3UploadError("mine", transient=True)
    with pytest.raises(S3UploadError) as raised, translate_errors("PUT", bucket="b", key="k"):
        raise mine
    assert raised.value is mine


def test_a_failure_to_connect_is_run_wide_and_unreachable() -> None:
    refused = aiohttp.ClientConnectorError(aiohttp.client_reqrep.ConnectionKey(
        "h", 1, False, True, None, None, None), OSError(111, "refused"))
    for exc in (EndpointConnectionError(endpoint_url="http://h:1", error=refused), refused):
        with pytest.raises(S3StorageError) as raised, translate_errors("PUT", bucket="b", key="k"):
            raise exc
        assert raised.value.unreachable and raised.value.transient
        assert "cannot reach the S3 endpoint" in str(raised.value)


def test_a_connection_lost_mid_request_is_transient_for_this_object() -> None:
    lost = EndpointConnectionError(endpoint_url="http://h:1", error=aiohttp.ServerDisconnectedError())
    with pytest.raises(S3UploadError) as raised, translate_errors("upload part 1 of", bucket="b", key="k"):
        raise lost
    assert raised.value.transient and "connection lost" in str(raised.value)


@pytest.mark.parametrize("exc", [ReadTimeoutError(endpoint_url="http://h"), TimeoutError(), ConnectionResetError()])
def test_timeouts_and_resets_are_transient(exc: BaseException) -> None:
    with pytest.raises(S3UploadError) as raised, translate_errors("HEAD", bucket="b", key="k"):
        raise exc
    assert raised.value.transient


def test_a_parameter_botocore_refuses_is_not_sent_again() -> None:
    with pytest.raises(S3UploadError) as raised, translate_errors("list objects in", bucket="b"):
        raise ParamValidationError(report="unknown parameter")
    assert not raised.value.transient
