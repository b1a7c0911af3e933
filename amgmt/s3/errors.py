"""The one boundary where S3 failures become amgmt errors: botocore's and aiohttp's exceptions (`translate_errors`)
and the direct transport's raw answers (`answer_error`), both through `error_for` keyed on (code, status).

Must not retry (that is retry.py) and must not forge another library's errors. Every error raised here is an
`S3UploadError` (this object only) or an `S3StorageError` (the run), carrying the server's `Answer` when there was
one and whether the same request may succeed if sent again (`transient`).
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import anyio
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)

from amgmt.errors import AmgmtError, StorageError, UploadError

# S3 error codes no other entry of the batch can escape: stop the run.
RUN_WIDE_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "InvalidBucketName",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
    }
)
# Errors worth another attempt of the same request: throttling, server hiccups, a body corrupted in transit.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BadDigest",
        "IncompleteBody",
        "500",
        "502",
        "503",
        "504",
    }
)
# What a store answers to a storage class it does not offer (AWS; radosgw says InvalidArgument, with no message).
STORAGE_CLASS_CODES = frozenset({"InvalidStorageClass", "InvalidArgument"})
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# radosgw answers NoSuchKey (404), not NoSuchUpload, for an upload id it does not know (aborted).
NO_UPLOAD_CODES = frozenset({"NoSuchUpload", "NoSuchKey", "404"})
_ERROR_FIELD = re.compile(r"<(Code|Message)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class Answer:
    """What the server answered to a failed request: its S3 error code (the status as text when the answer had no
    body, as for a HEAD) and HTTP status."""

    code: str
    status: int
    message: str = ""

    def describe(self) -> str:
        return f"{self.code} (HTTP {self.status}){': ' + self.message if self.message else ''}"


class S3Failure(AmgmtError):
    """What the S3 errors add to amgmt's: the server's answer (None: no answer, e.g. a connection lost), whether
    sending the same request again may help, and whether the endpoint could not be reached at all."""

    answer: Answer | None = None
    transient: bool = False
    unreachable: bool = False

    def _set(self, answer: Answer | None, transient: bool, unreachable: bool) -> None:
        self.answer, self.transient, self.unreachable = answer, transient, unreachable


class S3UploadError(S3Failure, UploadError):
    """A request for one object failed; the other entries of the batch go on."""

    def __init__(self, message: str, *, answer: Answer | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self._set(answer, transient, False)


class S3StorageError(S3Failure, StorageError):
    """A failure no entry can escape (bucket, credentials, endpoint); `unreachable` ones are tried again first."""

    def __init__(self, message: str, *, answer: Answer | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self._set(answer, unreachable, unreachable)


def answer_of(exc: BaseException | None) -> Answer | None:
    """The server's answer behind an amgmt error raised here (None for any other error, or without one)."""
    return exc.answer if isinstance(exc, S3Failure) else None


def has_code(exc: BaseException | None, codes: frozenset[str] | set[str], status: int | None = None) -> bool:
    answer = answer_of(exc)
    return answer is not None and (answer.code in codes or (status is not None and answer.status == status))


def error_for(action: str, answer: Answer, *, bucket: str, key: str | None = None) -> S3UploadError | S3StorageError:
    """The amgmt error for a failed request, from the server's answer alone: the same for botocore's and ours."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    code, status = answer.code, answer.status
    text = f"{action} {where} failed: {answer.describe()}"
    if code in RUN_WIDE_CODES or status == 403 or (code == "404" and key is None):
        if code in ("NoSuchBucket", "404"):
            text = f"bucket {bucket!r} does not exist (or is not visible with these credentials)"
        elif status == 403 or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            text += " (check the AWS credentials or profile, and the bucket's permissions)"
        return S3StorageError(text, answer=answer)
    transient = code in TRANSIENT_CODES or (status >= 500 and code != "NotImplemented")
    return S3UploadError(text, answer=answer, transient=transient)


def answer_from_body(status: int, body: bytes) -> Answer:
    """The answer of a raw response: the code and message of its XML error body, or (a HEAD, or a bare 400 with no
    body) the status as the code, as botocore does."""
    fields = {name: html.unescape(value) for name, value in _ERROR_FIELD.findall(body.decode("utf-8", "replace"))}
    return Answer(fields.get("Code") or str(status), status, fields.get("Message", ""))


def answer_from_client_error(exc: ClientError) -> Answer:
    err = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return Answer(str(err.get("Code") or status or "Unknown"), status, str(err.get("Message") or ""))


def _lost(action: str, where: str, detail: str) -> S3UploadError:
    return S3UploadError(f"{action} {where} failed: {detail}", transient=True)


@contextlib.contextmanager
def translate_errors(action: str, *, bucket: str, key: str | None = None) -> Iterator[None]:
    """Turn botocore/aiohttp errors into S3StorageError (run-wide) or S3UploadError (this object only), `from exc`.
    amgmt's own errors (the direct transport's included) pass through unchanged."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    try:
        yield
    except AmgmtError:
        raise
    except ClientError as exc:
        raise error_for(action, answer_from_client_error(exc), bucket=bucket, key=key) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise S3StorageError(
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (--profile), "
            "or another source of the standard AWS chain"
        ) from exc
    except ProfileNotFound as exc:
        raise S3StorageError(f"AWS profile not found: {exc.kwargs.get('profile')}") from exc
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        # aiobotocore raises EndpointConnectionError for any aiohttp connection error, a connection reset while
        # the body was being sent included: only a failure to connect means the endpoint is unreachable.
        cause = exc.kwargs.get("error")
        if (
            isinstance(exc, EndpointConnectionError)
            and isinstance(cause, aiohttp.ClientConnectionError)
            and not (isinstance(cause, aiohttp.ClientConnectorError))
        ):
            raise _lost(action, where, f"connection lost: {cause}") from exc
        raise S3StorageError(f"cannot reach the S3 endpoint for {where}: {exc}", unreachable=True) from exc
    except aiohttp.ClientConnectorError as exc:  # the direct transport could not connect
        raise S3StorageError(f"cannot reach the S3 endpoint for {where}: {exc}", unreachable=True) from exc
    except TimeoutError as exc:  # the direct transport's read timeout
        raise _lost(action, where, f"read timeout on {where}") from exc
    except ParamValidationError as exc:  # refused by botocore before anything was sent: no request to repeat
        raise S3UploadError(f"{action} {where} failed: {exc}") from exc
    except BotoCoreError as exc:  # read timeouts, connections closed mid-request, ...
        raise _lost(action, where, str(exc) or type(exc).__name__) from exc
    except (OSError, anyio.BrokenResourceError, aiohttp.ClientError) as exc:
        raise _lost(action, where, f"{type(exc).__name__}: {exc}") from exc
