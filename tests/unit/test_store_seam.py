"""The Store seam holds: no module of mpupload outside ``mpupload/storage/`` calls an S3 operation itself.

The check reads the source's syntax tree. A call counts as an S3 request when it calls a boto3 S3 operation by
name and looks like a boto3 client call: keyword arguments in S3's own spelling (``Bucket=``, ``UploadId=``),
a ``**params`` expansion, or a receiver named ``client``. The Store's methods share some of those names
(``store.upload_part(bucket, key, ...)``) but take positional and lower-case arguments, so calling the Store is
not flagged. Building a client (``make_client``) and asking for a paginator count as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mpupload"

#: boto3 S3 client operations (and client plumbing) that only the storage adapter may call
S3_OPERATIONS = frozenset({
    "create_multipart_upload", "upload_part", "upload_part_copy", "complete_multipart_upload",
    "abort_multipart_upload", "list_parts", "list_multipart_uploads", "head_object", "head_bucket", "put_object",
    "delete_object", "delete_objects", "get_object", "get_object_attributes", "copy_object", "list_objects",
    "list_objects_v2", "list_object_versions", "create_bucket", "delete_bucket",
    "get_bucket_lifecycle_configuration", "put_bucket_lifecycle_configuration", "get_bucket_versioning",
    "get_paginator", "generate_presigned_url", "upload_file", "upload_fileobj", "download_file", "make_client",
})
#: calls that would always be boto3's, whatever their arguments
_ALWAYS = frozenset({"get_paginator", "generate_presigned_url", "make_client", "upload_fileobj", "download_file"})

#: modules allowed to call S3 themselves outside mpupload/storage/: none
ALLOWED: frozenset[str] = frozenset()


def _receiver_is_client(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id.endswith("client")) or (
        isinstance(node, ast.Attribute) and node.attr.endswith("client"))


def s3_calls(source: str) -> list[tuple[int, str]]:
    """The (line, operation) of every call in ``source`` that looks like a boto3 S3 request."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name = node.func.attr
        if name not in S3_OPERATIONS:
            continue
        boto_style = any(k.arg is None or k.arg[:1].isupper() for k in node.keywords)
        if name in _ALWAYS or boto_style or _receiver_is_client(node.func.value):
            found.append((node.lineno, name))
    return found


def _calls_by_module() -> dict[str, list[tuple[int, str]]]:
    calls = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("storage/"):
            continue
        found = s3_calls(path.read_text(encoding="utf-8"))
        if found:
            calls[rel] = found
    return calls


def test_only_the_storage_adapter_calls_s3() -> None:
    outside = {rel: found for rel, found in _calls_by_module().items() if rel not in ALLOWED}
    assert outside == {}, ("S3 operations called outside mpupload/storage/: call the Store "
                           f"(mpupload.storage.port.Store) instead: {outside}")


def test_the_server_calls_no_s3_operation() -> None:
    server = [rel for rel in _calls_by_module() if rel.startswith("server/")]
    assert server == []
    assert any(PACKAGE.joinpath("server").rglob("*.py"))  # the scan does see the server's modules


def test_the_storage_adapter_is_where_the_calls_are() -> None:
    adapter = s3_calls((PACKAGE / "storage" / "boto3_store.py").read_text(encoding="utf-8"))
    assert {name for _, name in adapter} >= {
        "create_multipart_upload", "upload_part", "complete_multipart_upload", "abort_multipart_upload",
        "list_parts", "list_multipart_uploads", "head_object", "head_bucket", "put_object", "delete_object",
        "get_object", "get_bucket_lifecycle_configuration"}


@pytest.mark.parametrize(("source", "flagged"), [
    ("client.upload_part(**params)", True),
    ("self.client.head_object(Bucket=b, Key=k)", True),
    ("access.client.delete_object(**kwargs)", True),
    ("client.list_parts(Bucket=b, Key=k, UploadId=u, MaxParts=1)", True),
    ("s3.get_paginator('list_parts')", True),
    ("spec.store.make_client()", True),
    ("self.store.head_object(self.bucket, self.key, checksum_mode=True)", False),
    ("store.upload_part(bucket, key, upload_id, 1, body, content_length=4)", False),
    ("store.list_parts(bucket, key, upload_id, algorithm=algorithm)", False),
    ("handle.conn.send(job)", False),
])
def test_the_check_tells_boto3_calls_from_store_calls(source: str, flagged: bool) -> None:
    assert bool(s3_calls(source)) is flagged
