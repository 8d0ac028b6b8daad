"""Map botocore exceptions to mpupload's error tree (``mpupload.errors``), with what to do next."""

from __future__ import annotations

from typing import Any

from .. import errors as E

__all__ = ["classify", "is_retryable", "error_code"]

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
_RETRYABLE_CODES = {
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
    "Throttling", "ThrottlingException", "500", "502", "503", "504", "BadDigest", "XAmzContentSHA256Mismatch",
    "InvalidDigest", "IncompleteBody", "RequestTimeoutException",
}


def error_code(exc: BaseException) -> str | None:
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return None


def is_retryable(exc: BaseException) -> bool:
    """Whether sending the same request again may succeed (network faults, throttling, corruption)."""
    from botocore import exceptions as bx

    if isinstance(exc, E.MpuploadError):
        return isinstance(exc, E.UploadFailed) and not isinstance(exc, E.IntegrityError)
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ReadTimeoutError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, bx.ClientError):
        return (error_code(exc) or "") in _RETRYABLE_CODES
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
    """The mpupload error for a botocore (or OS) exception; its message says what to do next."""
    from botocore import exceptions as bx

    ctx: dict[str, Any] = {"bucket": bucket, "key": key, "upload_id": upload_id, "part_number": part_number}
    if isinstance(exc, E.MpuploadError):
        return exc
    where = f"s3://{bucket}/{key}" if bucket and key else (f"s3://{bucket}" if bucket else "the store")
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
            "--endpoint-url, then run the same command again",
            **ctx,
        )
    if isinstance(exc, (bx.ReadTimeoutError, bx.HTTPClientError, bx.ConnectionError)):
        return E.StoreUnreachable(
            f"the connection to {endpoint or 'the store'} failed ({exc}): run the same command again", **ctx
        )
    if isinstance(exc, bx.ClientError):
        code = error_code(exc) or "?"
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        if code in ("NoSuchBucket",):
            return E.BucketNotFound(f"bucket {bucket!r} does not exist: create it first or check the name", **ctx)
        if code in _AUTH_CODES:
            return E.AuthError(
                f"the store denied access to {where} ({code}): check the credentials and their permissions", **ctx
            )
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return E.ObjectExists(f"{where} already exists and --no-overwrite was given", **ctx)
        if code == "NoSuchUpload":
            return E.UploadFailed(
                f"the multipart upload {upload_id} no longer exists on the store (aborted or expired): "
                "start the upload again",
                **ctx,
            )
        if code in _BAD_REQUEST_CODES:
            return E.UsageError(f"the store refused the request for {where} ({code}): {message}; "
                                "check the options (storage class, encryption, metadata, key)", **ctx)
        if code in ("InvalidBucketName",):
            return E.UsageError(f"invalid bucket name {bucket!r}: {message}", **ctx)
        return E.UploadFailed(f"the store refused the request for {where}: {code}: {message}", **ctx)
    if isinstance(exc, OSError):
        return E.UploadFailed(f"{exc.strerror or exc} ({getattr(exc, 'filename', '') or 'I/O'})", **ctx)
    return E.UploadFailed(f"{type(exc).__name__}: {exc}", **ctx)
