"""The store: how workers and the coordinator reach S3 (or a compatible store) through boto3.

``StoreConfig`` is plain, picklable data; each process builds its own client from it with
``StoreConfig.make_client()`` (clients never cross a process boundary). ``classify`` turns botocore's
exceptions into mpupload's error tree.
"""

from __future__ import annotations

from .config import StoreConfig
from .errors import classify, is_retryable

__all__ = ["StoreConfig", "classify", "is_retryable"]
