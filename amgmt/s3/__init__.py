"""The S3 boundary: the only package that imports aioboto3, aiobotocore, botocore or aiohttp.

Owns the client, error translation, the retry policy, the multipart loop and the direct transport; it knows nothing
of entries, records or the completed dir, and raises only amgmt's own errors."""

from amgmt.s3.bodies import ByteBudget
from amgmt.s3.client import S3Bucket
from amgmt.s3.direct import DirectRequests, ObjectTransport
from amgmt.s3.errors import Answer, S3StorageError, S3UploadError, answer_of, translate_errors
from amgmt.s3.multipart import upload_file
from amgmt.s3.retry import RETRY_POLICY, RetryPolicy
from amgmt.s3.values import (
    ARCHIVE_STORAGE_CLASSES,
    LIST_PAGE_SIZE,
    METADATA_ARCHIVE_SHA256,
    METADATA_RESERVATION,
    METADATA_SOURCE_SHA256,
    METADATA_SOURCE_SIZE,
    RESTORE_TIERS,
    ClientOptions,
    MultipartJournal,
    ObjectHead,
    ObjectInfo,
    ObjectOptions,
    PartDone,
    ProgressCallback,
    RestoreState,
    UploadResult,
    UploadStats,
    parse_restore,
)

__all__ = [
    "ARCHIVE_STORAGE_CLASSES",
    "LIST_PAGE_SIZE",
    "METADATA_ARCHIVE_SHA256",
    "METADATA_RESERVATION",
    "METADATA_SOURCE_SHA256",
    "METADATA_SOURCE_SIZE",
    "RESTORE_TIERS",
    "RETRY_POLICY",
    "Answer",
    "ByteBudget",
    "ClientOptions",
    "DirectRequests",
    "MultipartJournal",
    "ObjectHead",
    "ObjectInfo",
    "ObjectOptions",
    "ObjectTransport",
    "PartDone",
    "ProgressCallback",
    "RestoreState",
    "RetryPolicy",
    "S3Bucket",
    "S3StorageError",
    "S3UploadError",
    "UploadResult",
    "UploadStats",
    "upload_file",
    "answer_of",
    "parse_restore",
    "translate_errors",
]
