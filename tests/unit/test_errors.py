"""The exception tree (mpupload.errors): exit codes, abort policy, context, and its docstring."""

from __future__ import annotations

import pickle
import re

import pytest

from mpupload import errors
from mpupload.errors import (
    AuthError,
    BucketNotFound,
    Cancelled,
    ClusterUnavailable,
    FilesFailed,
    IntegrityError,
    MpuploadError,
    ObjectExists,
    PartCorrupted,
    SourceChanged,
    SourceMismatch,
    SourceUnreadable,
    StoreUnreachable,
    UploadFailed,
    UploadGone,
    UsageError,
    WorkerCrashed,
)

# class, parent, exit code, abort the multipart upload?, does the upload still exist?, retry?
TREE: list[tuple[type[MpuploadError], type[Exception], int, bool, bool, bool]] = [
    (MpuploadError, Exception, 1, True, True, False),
    (UsageError, MpuploadError, 2, True, True, False),
    (BucketNotFound, UsageError, 2, True, True, False),
    (ObjectExists, UsageError, 2, True, True, False),
    (SourceChanged, UsageError, 2, True, True, False),
    (SourceUnreadable, UsageError, 2, True, True, False),
    (SourceMismatch, UsageError, 2, True, True, False),
    (AuthError, MpuploadError, 3, True, True, False),
    (UploadFailed, MpuploadError, 1, False, True, False),
    (StoreUnreachable, UploadFailed, 1, False, True, True),
    (PartCorrupted, UploadFailed, 1, False, True, True),
    (UploadGone, UploadFailed, 1, False, False, False),
    (IntegrityError, UploadFailed, 1, True, True, False),
    (WorkerCrashed, UploadFailed, 1, False, True, False),
    (ClusterUnavailable, UploadFailed, 1, False, True, False),
    (FilesFailed, UploadFailed, 1, False, True, False),
    (Cancelled, MpuploadError, 130, True, True, False),
]


def test_table_covers_all() -> None:
    assert {cls.__name__ for cls, *_ in TREE} == set(errors.__all__)


@pytest.mark.parametrize(("cls", "parent", "exit_code", "abort", "exists", "retry"), TREE,
                         ids=[c.__name__ for c, *_ in TREE])
def test_class(cls: type[MpuploadError], parent: type[Exception], exit_code: int, abort: bool, exists: bool,
               retry: bool) -> None:
    assert cls.__bases__ == (parent,)
    err = cls("boom: do this next")
    assert err.exit_code == exit_code
    assert cls.exit_code == exit_code
    assert err.abort_upload is abort
    assert err.upload_exists is exists
    assert err.retryable is retry
    assert isinstance(err, MpuploadError)


def test_cancel_and_failure_are_different_types() -> None:
    assert not issubclass(Cancelled, UploadFailed)
    assert not issubclass(UploadFailed, Cancelled)
    assert not issubclass(Cancelled, UsageError)
    with pytest.raises(Cancelled):
        try:
            raise Cancelled("stopped")
        except UploadFailed:  # pragma: no cover - must not catch a cancel
            pytest.fail("a cancel was caught as a failure")


@pytest.mark.parametrize("cls", [cls for cls, *_ in TREE], ids=[c.__name__ for c, *_ in TREE])
def test_context_and_message(cls: type[MpuploadError]) -> None:
    message = "part 7 was refused: run mpupload upload --resume to try again"
    err = cls(message, bucket="bkt", key="a/b.bin", upload_id="UPID", part_number=7)
    assert str(err) == message
    assert err.message == message
    assert err.args == (message,)
    assert (err.bucket, err.key, err.upload_id, err.part_number) == ("bkt", "a/b.bin", "UPID", 7)


def test_context_defaults_to_none() -> None:
    err = StoreUnreachable("cannot reach the store: check the network")
    assert (err.bucket, err.key, err.upload_id, err.part_number) == (None, None, None, None)
    assert str(err) == "cannot reach the store: check the network"


def test_context_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        UploadFailed("msg", "bucket")  # type: ignore[misc]


@pytest.mark.parametrize("cls", [cls for cls, *_ in TREE], ids=[c.__name__ for c, *_ in TREE])
def test_pickle_roundtrip_keeps_context(cls: type[MpuploadError]) -> None:
    # errors may cross a process boundary (worker -> parent)
    err = cls("msg", bucket="bkt", key="k", upload_id="U", part_number=3)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "msg"
    assert (back.bucket, back.key, back.upload_id, back.part_number) == ("bkt", "k", "U", 3)


def _docstring_tree() -> dict[str, int | None]:
    """Class name -> exit code shown in the module docstring's tree."""
    doc = errors.__doc__ or ""
    found: dict[str, int | None] = {}
    for line in doc.splitlines():
        match = re.search(r"([├└]── |^\s{4})([A-Z]\w+)\s+(?:\((\d+)\))?", line)
        if match:
            found[match.group(2)] = int(match.group(3)) if match.group(3) else None
    return found


def test_every_class_is_in_the_docstring_tree() -> None:
    tree = _docstring_tree()
    assert set(errors.__all__) <= set(tree)


@pytest.mark.parametrize("name", errors.__all__)
def test_docstring_exit_codes_match(name: str) -> None:
    shown = _docstring_tree()[name]
    cls = getattr(errors, name)
    if name == "MpuploadError":
        assert shown is None  # the base shows no code
    else:
        assert shown == cls.exit_code


def test_all_is_exact() -> None:
    defined = {
        name for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)
