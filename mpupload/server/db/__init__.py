"""Database layer: models, the async engine (with SQLite pragmas) and migrations."""

from __future__ import annotations

from .engine import make_engine, make_sessionmaker
from .migrate import upgrade
from .models import Base, Sample, Token, Upload, UploadStatus, User

__all__ = ["Base", "Sample", "Token", "Upload", "UploadStatus", "User", "make_engine", "make_sessionmaker",
           "upgrade"]
