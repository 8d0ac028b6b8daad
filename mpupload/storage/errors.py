"""What a store's errors mean: the one place that reads them, by error code and HTTP status.

A store adapter raises its own exceptions: botocore's (``ClientError`` and the connection errors) from
:class:`~mpupload.storage.boto3_store.Boto3Store`, :class:`StoreError` from the in-memory store and any adapter
that is not boto3. :func:`error_code`, :func:`http_status`, :func:`error_message`, :func:`is_retryable`,
:func:`is_gone` and :func:`classify` understand both, so callers never look inside an exception themselves.
:func:`classify` maps one to mpupload's error tree (``mpupload.errors``), with what to do next.
"""

from __future__ import annotations

from typing import Any

from .. import errors as E

__all__ = ["classify", "is_retryable", "is_gone", "error_code", "http_status", "error_message", "GONE_CODES",
           "CHECKSUM_REJECTED", "gone_error", "StoreError"]

_AUTH_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "Forbidden", "403",
    "AuthorizationHeaderMalformed", "InvalidClientTokenId", "UnrecognizedClientException",
}
#: the request itself is wrong (an option the store does not accept): bad input, exit 2
_BAD_REQUEST_CODES = {
    "InvalidStorageClass", "InvalidEncryptionAlgorithmError", "InvalidArgument", "KeyTooLongError",
    "MetadataTooLarge", "InvalidTag", "KMS.NotFoundException", "KMS.DisabledException",
}
#: what a retry can fix: throttling, a server-side hiccup, a body damaged or cut short in transit
_RETRYABLE_CODES = {
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
    "Throttling", "ThrottlingException", "500", "502", "503", "504", "BadDigest", "XAmzContentSHA256Mismatch",
    "InvalidDigest", "IncompleteBody", "RequestTimeoutException",
}
#: error codes of an upload-scoped request (UploadPart, ListParts, Complete, Abort) that mean "this multipart
#: upload does not exist (any more)": Ceph RGW answers ListParts of an aborted upload with NoSuchKey. A bare 404
#: counts too (a HEAD-like answer without a body). Not every store says it this way: moto answers UploadPart and
#: Complete of an aborted upload with a plain 500, Ceph its Complete with 500 InternalError; ask ListParts then.
GONE_CODES = frozenset({"NoSuchUpload", "NoSuchKey", "404"})
#: codes with which a store says "the checksum you sent does not match the bytes"
CHECKSUM_REJECTED = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch",
                               "XAmzContentSHA256Mismatch"})


class StoreError(Exception):
    """An error answer of a store that is not reached through botocore (the in-memory store, later a brokered
    one): S3's error ``code`` (``NoSuchUpload``, ``BadDigest``, ...), the HTTP ``status`` and the message."""

    def __init__(self, code: str, status: int, message: str = "", operation: str | None = None) -> None:
        self.code = code
        self.status = status
        self.message = message or code
        self.operation = operation
        super().__init__(code, status, self.message, operation)

    def __str__(self) -> str:
        where = f" when calling the {self.operation} operation" if self.operation else ""
        return f"An error occurred ({self.code}){where}: {self.message}"


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, StoreError):
        return exc.code or str(exc.status)
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return None


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, StoreError):
        return exc.status
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return int(status)
    return None


def error_message(exc: BaseException) -> str:
    """The store's own message for an error answer (empty when it gave none)."""
    if isinstance(exc, StoreError):
        return exc.message
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message") or "")
    return ""


def _answered(exc: BaseException) -> bool:
    """Whether ``exc`` is the store's error answer (as opposed to a network or local failure)."""
    if isinstance(exc, StoreError):
        return True
    from botocore import exceptions as bx

    return isinstance(exc, bx.ClientError)


def is_gone(exc: BaseException) -> bool:
    """Whether an upload-scoped request failed because the multipart upload does not exist."""
    return isinstance(exc, E.UploadGone) or (error_code(exc) or "") in GONE_CODES


def is_retryable(exc: BaseException) -> bool:
    """Whether sending the same request again may succeed: network faults, throttling, a 5xx, a body damaged
    in transit. Decided by the error code and the HTTP status, never by "it is some upload error": an upload
    that is gone, a refused part or an unknown 4xx code fails at once."""
    if isinstance(exc, E.MpuploadError):
        return exc.retryable
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if not isinstance(exc, StoreError):
        from botocore import exceptions as bx

        if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ReadTimeoutError)):
            return True
    if _answered(exc):
        if (error_code(exc) or "") in _RETRYABLE_CODES:
            return True
        status = http_status(exc)
        return status is not None and status >= 500 and status != 501
    return False


def classify(
    exc: BaseException,
    *,
    bucket: str | None = None,
    key: str | None = None,
    upload_id: str | None = None,
    part_number: int | None = None,
    endpoint: str | None = None,
) -> E.MpuploadError:
    """The mpupload error for a store's (or an OS) exception; its message says what to do next."""
    ctx: dict[str, Any] = {"bucket": bucket, "key": key, "upload_id": upload_id, "part_number": part_number}
    if isinstance(exc, E.MpuploadError):
        return exc
    where = f"s3://{bucket}/{key}" if bucket and key else (f"s3://{bucket}" if bucket else "the store")
    if isinstance(exc, StoreError):
        return _classify_answer(exc, where, bucket, key, upload_id, part_number, ctx)
    from botocore import exceptions as bx

    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return E.AuthError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use --profile", **ctx
        )
    if isinstance(exc, bx.ProfileNotFound):
        return E.UsageError(f"{exc}: check --profile / AWS_PROFILE and ~/.aws/config", **ctx)
    if isinstance(exc, bx.SSLError):
        return E.UsageError(
            f"TLS certificate check failed for {endpoint or 'the endpoint'}: pass --ca-bundle FILE "
            "(or set AWS_CA_BUNDLE), or --no-verify-ssl for a test endpoint",
            **ctx,
        )
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError)):
        return E.StoreUnreachable(
            f"cannot reach {endpoint or 'the S3 endpoint'} ({type(exc).__name__}): check the network and "
            "--endpoint-url", advice=", then run the same command again",
            **ctx,
        )
    if isinstance(exc, (bx.ReadTimeoutError, bx.HTTPClientError, bx.ConnectionError)):
        return E.StoreUnreachable(
            f"the connection to {endpoint or 'the store'} failed ({exc})", advice=": run the same command again", **ctx
        )
    if isinstance(exc, bx.ClientError):
        return _classify_answer(exc, where, bucket, key, upload_id, part_number, ctx)
    if isinstance(exc, OSError):
        return E.UploadFailed(f"{exc.strerror or exc} ({getattr(exc, 'filename', '') or 'I/O'})", **ctx)
    return E.UploadFailed(f"{type(exc).__name__}: {exc}", **ctx)


def _classify_answer(exc: BaseException, where: str, bucket: str | None, key: str | None, upload_id: str | None,
                     part_number: int | None, ctx: dict[str, Any]) -> E.MpuploadError:
    """The mpupload error for a store's error answer, by its code."""
    code = error_code(exc) or "?"
    message = error_message(exc) or str(exc)
    if code in ("NoSuchBucket",):
        return E.BucketNotFound(f"bucket {bucket!r} does not exist: create it first or check the name", **ctx)
    if code in _AUTH_CODES:
        return E.AuthError(
            f"the store denied access to {where} ({code}): check the credentials and their permissions", **ctx
        )
    if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
        return E.ObjectExists(f"{where} already exists and --no-overwrite was given", **ctx)
    if code == "NoSuchUpload":
        return gone_error(bucket=bucket, key=key, upload_id=upload_id, part_number=part_number)
    if code in _BAD_REQUEST_CODES:
        return E.UsageError(f"the store refused the request for {where} ({code}): {message}; "
                            "check the options (storage class, encryption, metadata, key)", **ctx)
    if code in ("InvalidBucketName",):
        return E.UsageError(f"invalid bucket name {bucket!r}: {message}", **ctx)
    return E.UploadFailed(f"the store refused the request for {where}: {code}: {message}", **ctx)


def gone_error(*, bucket: str | None, key: str | None, upload_id: str | None,
               part_number: int | None = None) -> E.UploadGone:
    """The one message for "the multipart upload no longer exists"."""
    return E.UploadGone(
        f"the multipart upload {upload_id} of s3://{bucket}/{key} no longer exists on the store: someone aborted "
        "it (mpupload cleanup, a lifecycle rule, another user) or it expired, and its parts went with it; "
        "nothing was kept: run the command again to upload from the start",
        bucket=bucket, key=key, upload_id=upload_id, part_number=part_number)
