"""The routes of brokered uploads (see :mod:`..broker`): create (through ``POST /uploads`` with
``"brokered": true``), ``parts/sign``, ``parts``, ``complete`` and ``abort``. Owner only: someone else's upload is
404, as one that does not exist. Store calls block: they run in a worker thread, never on the event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from fastapi import APIRouter, HTTPException
from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .. import broker as B
from .. import uploads as svc
from ..auth import issue_worker_token
from ..db.models import Upload, UploadStatus, User, as_utc, utcnow
from ..limits import InputError, check_text
from .deps import ServerState, SessionDep, SignerDep, StateDep, TokenDep, UserDep

if TYPE_CHECKING:
    from ...checksums import Algorithm
    from ...plan import UploadPlan
    from ...storage.port import Store

__all__ = ["router", "create_brokered", "abort_on_store"]

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")
S = UploadStatus

#: a sign request records the upload's activity (for the reaper) at most this often, and at most a tenth of
#: ``--stale-after``: not a database write per request
ACTIVITY_EVERY_S = 30.0

NO_STORAGE = ("this server has no storage for brokered uploads: upload to s3://BUCKET/KEY with your own "
              "credentials, or ask the server's operator to start it with --storage")


def _not_found(upload_id: str) -> HTTPException:
    return HTTPException(404, f"no upload {upload_id!r}: check the id with mpupload list")


def _store(state: ServerState) -> tuple[Store, str, str]:
    if state.store is None or state.settings.storage is None:
        raise HTTPException(409, NO_STORAGE)
    bucket, prefix = B.parse_storage(state.settings.storage)
    return state.store, bucket, prefix


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A store call in a worker thread; a store error becomes 502 naming the store's answer."""
    from ...storage.errors import error_code, http_status

    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except HTTPException:
        raise
    except Exception as exc:
        code, status = error_code(exc), http_status(exc)
        log.warning("storage call %s failed: %s", getattr(fn, "__name__", fn), exc)
        raise HTTPException(502, f"the storage refused the request ({code or type(exc).__name__}"
                                 f"{f', HTTP {status}' if status else ''}): try again later") from None


def _record(upload: Upload, state: ServerState) -> dict[str, Any]:
    return {**svc.upload_dict(upload, state.settings.live_after_s), **B.broker_fields(upload)}


async def _brokered(session: AsyncSession, user: User, upload_id: str, *, active: bool,
                    scope: str | None = None) -> Upload:
    """The user's brokered record ``upload_id``: 404 when it is not theirs, or outside a worker token's
    ``scope`` (its record, and for a run the uploads in it); 409 when it is not brokered, or (``active``) ended."""
    try:
        upload = await svc.get_upload(session, user, upload_id)
    except svc.NotFound:
        raise _not_found(upload_id) from None
    if scope is not None and scope not in (upload.id, upload.parent_id):
        raise _not_found(upload_id)
    if not upload.brokered:
        raise HTTPException(409, f"upload {upload_id} is not brokered: its client holds the storage credentials")
    if active and upload.status not in svc.ACTIVE:
        raise HTTPException(409, f"upload {upload_id} is {upload.status.value}: start a new upload")
    return upload


@router.get("/storage")
async def storage(user: UserDep, state: StateDep) -> dict[str, Any]:
    """Where the viewer's brokered uploads go and how their parts are signed; 409 when the server has no storage
    (the CLI asks this before anything else: "no storage" is one clear line, exit 2)."""
    _, bucket, prefix = _store(state)
    try:
        space = B.confine_key(prefix, user.name, "k")[:-1]
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"bucket": bucket, "prefix": prefix, "space": space,
            "content_md5_required": state.settings.storage_content_md5, "max_sign_batch": B.MAX_SIGN_BATCH,
            "sign_expires_s": state.settings.sign_expires_s, "checksum_algorithms": list(B.CHECKSUM_ALGORITHMS)}


async def create_brokered(body: B.BrokeredCreate, user: User, state: ServerState, session: AsyncSession,
                          login_token: str) -> dict[str, Any]:
    """Check the key, plan, create the multipart upload on the store (none for a single PutObject), record it.
    A user's creates go one at a time (:class:`~..broker.UserLocks`, and the user's row locked for the
    transaction on PostgreSQL): the quota check and the record it allows cannot interleave with another's.
    ``"worker_token": true``: the answer has a worker token for the new record too (``worker_token``), made
    with ``login_token`` in the same transaction (see :func:`worker_token`)."""
    store, bucket, prefix = _store(state)
    grant = login_token if body.worker_token else None
    if body.dataset:
        return await _create_run(body, user, state, session, bucket, prefix, grant)
    try:
        full_key = B.confine_key(prefix, user.name, body.key)
        plan = B.plan_brokered(body.total_bytes, body.part_size, multipart=body.multipart)
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    if body.parent_id is not None:
        # a large file of a brokered directory run: inside the run's PREFIX and its declared bytes
        async with state.create_locks.of(user.id):
            parent = await _run_of(session, user, body.parent_id)
            await _account(session, parent, [(full_key, body.total_bytes)])
            return await _create_recorded(body, user, state, session, store, bucket, full_key, plan,
                                          parent_id=parent.id)
    async with state.create_locks.of(user.id):
        await _check_quota(session, user, body.total_bytes)
        return await _create_recorded(body, user, state, session, store, bucket, full_key, plan, grant=grant)


async def _create_run(body: B.BrokeredCreate, user: User, state: ServerState, session: AsyncSession,
                      bucket: str, prefix: str, grant: str | None) -> dict[str, Any]:
    """The record of a brokered directory run: nothing on the store yet (its small files are PutObjects signed in
    batches, its large files multipart uploads of their own). The quota is checked once, for every byte of the
    run, and each object it signs is counted against that."""
    try:
        full_prefix = B.confine_prefix(prefix, user.name, body.key)
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    async with state.create_locks.of(user.id):
        earlier = await _runs_continued(session, user, full_prefix) if body.resume else []
        await _check_quota(session, user, body.total_bytes)  # (the runs it continues no longer count)
        new = svc.NewUpload(filename=body.filename or body.key or "/", bucket=bucket, key=full_prefix,
                            total_bytes=body.total_bytes, parts_total=body.files_total or 0, host=body.host,
                            files_total=body.files_total)
        try:
            upload = await svc.create_upload(session, user, new, state.settings.max_uploads_per_user, commit=False)
        except svc.ProgressError as exc:
            raise HTTPException(exc.status_code, str(exc)) from None
        if earlier:
            await session.flush()
            await session.execute(update(Upload).where(
                Upload.parent_id.in_([run.id for run in earlier]), Upload.owner_id == user.id,
                Upload.status.in_(list(svc.ACTIVE))).values(parent_id=upload.id))
        record = await _created(session, state, upload, body, storage_key=full_prefix, grant=grant)
    for run in earlier:
        await svc.publish(state.bus, run, state.settings.live_after_s)
    return record


async def _runs_continued(session: AsyncSession, user: User, full_prefix: str) -> list[Upload]:
    """The user's active brokered runs to ``full_prefix``, ended (stopped: continued by a ``--resume`` run, which
    takes over their large files' uploads: the quota counts the run once)."""
    runs = list((await session.execute(
        select(Upload).where(Upload.owner_id == user.id, Upload.brokered.is_(True),
                             Upload.files_total.is_not(None), Upload.store_upload_id.is_(None),
                             Upload.storage_key == full_prefix, Upload.status.in_(list(svc.ACTIVE)))
        .with_for_update())).scalars())
    now = utcnow()
    for run in runs:
        run.status = S.STOPPED
        run.error = "continued by a --resume run"
        run.version += 1
        run.updated_at = now
    return runs


async def _check_quota(session: AsyncSession, user: User, more: int) -> None:
    """413 when ``more`` bytes would take the user over their quota (the user's row locked on PostgreSQL: the
    caller holds the user's create lock, and the transaction ends with the record it allows)."""
    if user.quota_bytes is None:
        return
    await session.execute(select(User.id).where(User.id == user.id).with_for_update())
    used = await quota_used(session, user)
    if used + more > user.quota_bytes:
        raise HTTPException(413, f"over your quota: {more} more bytes would make {used + more} of "
                                 f"{user.quota_bytes} (brokered uploads in flight and stored): abort unfinished "
                                 "uploads or ask the server's operator for a larger quota")


def is_run(upload: Upload) -> bool:
    """A brokered directory run's record (its objects are signed through it; nothing of its own on the store)."""
    return bool(upload.brokered) and upload.files_total is not None and not upload.store_upload_id


async def _run_of(session: AsyncSession, user: User, run_id: str, scope: str | None = None) -> Upload:
    """The user's active brokered directory run ``run_id`` (404 as any upload that is not theirs, or outside a
    worker token's ``scope``; 409 when it is not a run, or no longer active)."""
    run = await _brokered(session, user, run_id, active=True, scope=scope)
    if not is_run(run):
        raise HTTPException(409, f"upload {run_id} is not a brokered directory run")
    return run


async def _account(session: AsyncSession, run: Upload, objects: list[tuple[str, int]]) -> None:
    """Record the run's objects with their sizes (a key signed again is counted once, at its latest size): 422
    for a key outside the run's PREFIX, 413 when they would take the run past the bytes it declared."""
    from ..db.models import BrokeredObject

    prefix = run.storage_key or ""
    for key, _ in objects:
        if not B.under(prefix, key):
            raise HTTPException(422, f"{key} is outside this run's prefix {prefix}")
    keys = [key for key, _ in objects]
    known = dict((await session.execute(
        select(BrokeredObject.key, BrokeredObject.size)
        .where(BrokeredObject.upload_id == run.id, BrokeredObject.key.in_(keys)))).tuples().all())
    grows = sum(size - known.get(key, 0) for key, size in objects)
    if grows > 0:
        counted = (await session.execute(
            select(func.coalesce(func.sum(BrokeredObject.size), 0))
            .where(BrokeredObject.upload_id == run.id))).scalar_one()
        if int(counted) + grows > run.total_bytes:
            raise HTTPException(413, f"this run declared {run.total_bytes} bytes; these objects would make "
                                     f"{int(counted) + grows}: start a new run for the files added since")
    added = [{"upload_id": run.id, "key": key, "size": size} for key, size in objects if key not in known]
    if added:  # one executemany, not a unit of work of ORM objects
        await session.execute(insert(cast(Table, BrokeredObject.__table__)), added)
    for key, size in objects:
        if key in known and known[key] != size:
            await session.execute(update(BrokeredObject).where(BrokeredObject.upload_id == run.id,
                                                               BrokeredObject.key == key).values(size=size))


async def _create_recorded(body: B.BrokeredCreate, user: User, state: ServerState, session: AsyncSession,
                           store: Store, bucket: str, full_key: str, plan: UploadPlan, *,
                           parent_id: str | None = None, grant: str | None = None) -> dict[str, Any]:
    """The store's multipart upload (none for a single PutObject) and its record, committed."""
    from ...checksums import Algorithm

    algorithm = None if body.checksum_algorithm == "none" else Algorithm(body.checksum_algorithm)
    store_upload_id: str | None = None
    if plan.multipart:
        store_upload_id = await _call(store.create_multipart_upload, bucket, full_key, algorithm=algorithm)
    new = svc.NewUpload(filename=body.filename or body.key, bucket=bucket, key=full_key,
                        total_bytes=body.total_bytes, part_size=plan.part_size, parts_total=plan.parts_total,
                        host=body.host)
    try:
        upload = await svc.create_upload(session, user, new, state.settings.max_uploads_per_user, commit=False)
    except svc.ProgressError as exc:
        if store_upload_id is not None:
            await _call(store.short_lived().abort_and_confirm, bucket, full_key, store_upload_id)
        raise HTTPException(exc.status_code, str(exc)) from None
    upload.parent_id = parent_id
    upload.store_upload_id = store_upload_id
    return await _created(session, state, upload, body, storage_key=full_key, grant=grant)


async def _created(session: AsyncSession, state: ServerState, upload: Upload, body: B.BrokeredCreate, *,
                   storage_key: str, grant: str | None = None) -> dict[str, Any]:
    """Complete a new brokered record with its brokered fields and commit it whole (it is never seen without
    them), with the worker token ``grant`` (a login token) asks for; publish it; the answer: the record, how its
    parts are signed, and the worker token."""
    upload.brokered = True
    upload.storage_key = storage_key
    upload.checksum_algorithm = body.checksum_algorithm
    upload.last_activity_at = utcnow()
    worker: tuple[str, dt.datetime] | None = None
    if grant is not None:
        await session.flush()
        worker = await issue_worker_token(session, upload.owner_id, grant, upload, commit=False)
    await session.commit()
    await svc.publish(state.bus, upload, state.settings.live_after_s)
    record = _record(upload, state)
    record.update(content_md5_required=state.settings.storage_content_md5, max_sign_batch=B.MAX_SIGN_BATCH,
                  sign_expires_s=state.settings.sign_expires_s)
    if worker is not None:
        record.update(worker_token=worker[0], worker_token_expires_at=_stamp(worker[1]))
    return record


async def quota_used(session: AsyncSession, user: User) -> int:
    """The user's brokered bytes in flight (not completed, not stopped or failed) and stored (completed); a
    directory run's large files are counted in the run's bytes, not again."""
    counted = [*svc.ACTIVE, S.COMPLETED]
    total = (await session.execute(
        select(func.coalesce(func.sum(Upload.total_bytes), 0))
        .where(Upload.owner_id == user.id, Upload.brokered.is_(True), Upload.status.in_(counted),
               Upload.parent_id.is_(None)))).scalar_one()
    return int(total)


@router.post("/uploads/{upload_id}/worker-token")
async def worker_token(upload_id: str, user: UserDep, token: TokenDep, state: StateDep,
                       session: SessionDep) -> dict[str, Any]:
    """A token for a cluster's workers (see :mod:`..auth`): it signs this upload's URLs (a run's: and those of the
    large files' uploads in it), nothing else, and only while the upload is active (one stopped, being resumed,
    can have one: it signs once the upload is active again); it expires with the login token that asked for it.
    Asked with a login token only (a worker token is refused as an unknown one); for a brokered upload or run of
    the user's own, not completed, not inside a run. It replaces the upload's earlier worker tokens."""
    from ..db.models import Token

    _store(state)
    upload = await _brokered(session, user, upload_id, active=False)
    if upload.status is S.COMPLETED:
        raise HTTPException(409, f"upload {upload_id} is completed: start a new upload")
    if upload.parent_id is not None:
        raise HTTPException(409, f"upload {upload_id} is inside the run {upload.parent_id}: ask for the run's "
                                 "worker token")
    # the coordinator asking replaces the earlier one (killed, its upload being resumed): what its workers still
    # run stops signing
    await session.execute(update(Token).where(Token.upload_id == upload.id, Token.revoked.is_(False))
                          .values(revoked=True))
    plain, expires_at = await issue_worker_token(session, user.id, token, upload)
    return {"id": upload.id, "token": plain, "expires_at": _stamp(expires_at)}


def _stamp(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@router.post("/uploads/{upload_id}/parts/sign")
async def sign(upload_id: str, body: B.SignRequest, signer: SignerDep, state: StateDep,
               session: SessionDep) -> dict[str, Any]:
    """Presigned URLs for a batch of parts, each with its checksum (and Content-MD5 when the storage checks only
    that) signed in. A single-PutObject upload has one part, number 1: its URL is a PutObject. A worker token
    signs its own upload's parts only (another upload is 404)."""
    store, bucket, _ = _store(state)
    user = signer.user
    upload = await _brokered(session, user, upload_id, active=True, scope=signer.scope)
    if is_run(upload):
        raise HTTPException(409, f"upload {upload_id} is a directory run: sign its objects with objects/sign")
    settings = state.settings
    try:
        checked = [(part, B.check_part(upload, part, content_md5_required=settings.storage_content_md5))
                   for part in body.parts]
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    wait = state.sign_limiter.take(user.id, len(body.parts))
    if wait is not None:
        raise HTTPException(429, f"too many part URLs signed in the last minute (at most "
                                 f"{settings.sign_max_per_minute}): try again in {int(wait)} s",
                            headers={"Retry-After": str(int(wait))})
    key, store_upload_id, expires = upload.storage_key or upload.key, upload.store_upload_id, settings.sign_expires_s

    from ...checksums import Algorithm
    from ...storage.port import Checksum

    def sign_all() -> list[dict[str, Any]]:
        signed = []
        for part, algorithm in checked:
            checksum = Checksum(Algorithm(algorithm), part.checksum) if algorithm is not None and part.checksum \
                else None
            if store_upload_id:
                request = store.presign_upload_part(bucket, key, store_upload_id, part.number, checksum=checksum,
                                                    content_md5=part.content_md5, expires_in=expires)
            else:
                request = store.presign_put_object(bucket, key, checksum=checksum, content_md5=part.content_md5,
                                                   expires_in=expires)
            signed.append({"number": part.number, "size": part.size, "method": request.method, "url": request.url,
                           "headers": dict(request.headers)})
        return signed

    now = utcnow()
    parts = await _call(sign_all)
    await _touch(session, upload, now, settings.stale_after_s)
    return {"id": upload.id, "expires_in": expires,
            "expires_at": (now + dt.timedelta(seconds=expires)).isoformat(), "parts": parts}


async def _touch(session: AsyncSession, upload: Upload, now: dt.datetime, stale_after_s: float) -> None:
    """Record the upload's activity (what the reaper reads), at most every :data:`ACTIVITY_EVERY_S` and every
    tenth of ``--stale-after``: not a database write per request. Commits what the session holds."""
    last = upload.last_activity_at
    if last is None or (now - as_utc(last)).total_seconds() >= min(ACTIVITY_EVERY_S, stale_after_s / 10):
        upload.last_activity_at = now
    await session.commit()


@router.post("/uploads/{upload_id}/objects/sign")
async def sign_objects(upload_id: str, body: B.ObjectsSignRequest, signer: SignerDep, state: StateDep,
                       session: SessionDep) -> dict[str, Any]:
    """PutObject URLs for small files of a brokered directory run, each with its checksum (and Content-MD5 when
    the storage checks only that) signed in. Every key must be under the run's PREFIX, and the run's objects
    together within the bytes it declared (413): a run cannot write more than the quota allowed it."""
    store, bucket, prefix = _store(state)
    user = signer.user
    run = await _run_of(session, user, upload_id, scope=signer.scope)
    settings = state.settings
    try:
        checked = [(obj, B.confine_key(prefix, user.name, obj.key),
                    B.check_object(run, obj, content_md5_required=settings.storage_content_md5))
                   for obj in body.objects]
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    wait = state.sign_limiter.take(user.id, len(body.objects))
    if wait is not None:
        raise HTTPException(429, f"too many URLs signed in the last minute (at most {settings.sign_max_per_minute})"
                                 f": try again in {int(wait)} s", headers={"Retry-After": str(int(wait))})
    now = utcnow()
    async with state.create_locks.of(user.id):
        # a run's requests are counted one at a time (the user's lock here, the run's row across PostgreSQL
        # replicas): requests at once cannot together pass the bytes the run declared
        await session.execute(select(Upload.id).where(Upload.id == run.id).with_for_update())
        await _account(session, run, [(full, obj.size) for obj, full, _ in checked])
        await _touch(session, run, now, settings.stale_after_s)  # (and commits the objects counted)
    expires = settings.sign_expires_s

    from ...checksums import Algorithm
    from ...storage.port import Checksum

    def sign_all() -> list[dict[str, Any]]:
        signed = []
        for obj, full, algorithm in checked:
            checksum = Checksum(Algorithm(algorithm), obj.checksum) if algorithm is not None and obj.checksum \
                else None
            request = store.presign_put_object(bucket, full, checksum=checksum, content_md5=obj.content_md5,
                                               expires_in=expires)
            signed.append({"key": obj.key, "size": obj.size, "method": request.method, "url": request.url,
                           "headers": dict(request.headers)})
        return signed

    objects = await _call(sign_all)
    return {"id": run.id, "expires_in": expires, "expires_at": (now + dt.timedelta(seconds=expires)).isoformat(),
            "objects": objects}


@router.get("/storage/objects")
async def list_objects(user: UserDep, state: StateDep, prefix: str = "", token: str | None = None
                       ) -> dict[str, Any]:
    """One page (up to 1,000) of the objects under ``prefix`` in the viewer's space, keys relative to it: what a
    directory run's ``--skip-existing`` and ``--resume`` compare their files with."""
    store, bucket, storage_prefix = _store(state)
    try:
        space = B.confine_key(storage_prefix, user.name, "k")[:-1]
        if prefix:
            B.check_key_segments(prefix.rstrip("/") or "/", what="prefix")
        if token is not None:
            check_text("token", token, max_bytes=4096)
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    page = await _call(store.list_objects_page, bucket, space + prefix, token=token)
    return {"objects": [{"key": o.key[len(space):], "size": o.size, "etag": o.etag}
                        for o in page.objects if o.key.startswith(space)],
            "next_token": page.next_token if page.truncated else None}


@router.get("/uploads/{upload_id}/parts")
async def list_parts(upload_id: str, user: UserDep, state: StateDep, session: SessionDep) -> dict[str, Any]:
    """The parts the store holds (ListParts, every page), for a resume."""
    store, bucket, _ = _store(state)
    upload = await _brokered(session, user, upload_id, active=False)
    if not upload.store_upload_id:
        return {"id": upload.id, "multipart": False, "checksum_algorithm": upload.checksum_algorithm, "parts": []}
    if upload.status not in svc.ACTIVE:
        raise HTTPException(409, f"upload {upload_id} is {upload.status.value}: the store keeps no parts of it")
    algorithm = _algorithm(upload)
    listing = await _call(store.list_parts, bucket, upload.storage_key or upload.key, upload.store_upload_id,
                          algorithm=algorithm)
    if listing is None:
        raise HTTPException(409, f"the storage no longer has upload {upload_id} (aborted, or cleaned up)")
    return {"id": upload.id, "multipart": True, "checksum_algorithm": upload.checksum_algorithm, "parts": [
        {"number": p.number, "size": p.size, "etag": p.etag, "checksum": p.checksum,
         "last_modified": p.last_modified.isoformat() if p.last_modified else None}
        for p in sorted(listing.parts.values(), key=lambda p: p.number)]}


def _algorithm(upload: Upload) -> Algorithm | None:
    from ...checksums import Algorithm

    name = upload.checksum_algorithm or "none"
    return None if name == "none" else Algorithm(name)


def _object_checksum(head: dict[str, Any], algorithm: Algorithm | None, parts: int | None) -> str | None:
    """The object checksum HeadObject reports, when it is one we can compare: a multipart object's composite ends
    with ``-N`` (moto's lacks it, and is computed otherwise: not comparable); a single object's has no ``-``."""
    from ...storage.port import CHECKSUM_FIELDS

    field = CHECKSUM_FIELDS.get(algorithm) if algorithm is not None else None
    value = str(head.get(field) or "") if field else ""
    if not value or (parts is not None and not value.endswith(f"-{parts}")) or (parts is None and "-" in value):
        return None
    return value


@router.post("/uploads/{upload_id}/complete")
async def complete(upload_id: str, body: B.CompleteRequest, user: UserDep, state: StateDep,
                   session: SessionDep) -> dict[str, Any]:
    """Check the parts against the store's ListParts (every part of the plan, its size, ETag and checksum),
    complete, then HEAD the object: its size, and its checksum when the store gives one; record ``verified``."""
    from ...checksums import multipart_etag, unb64
    from ...storage.errors import error_code

    store, bucket, _ = _store(state)
    upload = await _brokered(session, user, upload_id, active=True)
    if is_run(upload):
        raise HTTPException(409, f"upload {upload_id} is a directory run: its objects are complete once put, and "
                                 "the run ends with its last progress report")
    key, algorithm = upload.storage_key or upload.key, _algorithm(upload)
    expected_checksum: str | None = None
    md5s = [unb64(p.content_md5) for p in sorted(body.parts, key=lambda p: p.number) if p.content_md5]
    expected_etag = None
    if upload.store_upload_id:
        expected_checksum = await _complete_multipart(store, bucket, key, upload, body, algorithm)
        if md5s and len(md5s) == upload.parts_total:
            expected_etag = multipart_etag(md5s)
    elif body.parts:
        if len(body.parts) != 1 or body.parts[0].number != 1:
            raise HTTPException(422, "a single-PutObject upload has one part, number 1")
        expected_checksum = body.parts[0].checksum
        expected_etag = md5s[0].hex() if md5s else None
    try:
        head = await asyncio.to_thread(store.head_object, bucket, key, checksum_mode=algorithm is not None)
    except Exception as exc:
        if error_code(exc) in ("404", "NoSuchKey"):
            raise HTTPException(409, f"the storage has no object {key}: send the data first") from None
        raise HTTPException(502, f"the storage refused HeadObject ({error_code(exc)}): try again") from None
    size = int(head.get("ContentLength", -1))
    etag = str(head.get("ETag", "")).strip('"')
    stored_checksum = _object_checksum(head, algorithm, upload.parts_total if upload.store_upload_id else None)
    if size != upload.total_bytes:
        await _finish(session, state, upload, S.FAILED, error=f"the stored object is {size} bytes, not "
                                                              f"{upload.total_bytes}")
        raise HTTPException(409, f"the stored object is {size} bytes, the upload planned {upload.total_bytes}")
    if stored_checksum and expected_checksum and stored_checksum != expected_checksum:
        await _finish(session, state, upload, S.FAILED, error=f"checksum mismatch: stored {stored_checksum}, "
                                                              f"expected {expected_checksum}")
        raise HTTPException(409, f"the stored object's {algorithm} is {stored_checksum}, expected "
                                 f"{expected_checksum}")
    if stored_checksum and expected_checksum and algorithm is not None:
        verified = algorithm.value
    elif expected_etag is not None and etag == expected_etag:
        verified = "md5"  # the store's ETag is the MD5 (of the part MD5s) of what the client hashed
    else:
        verified = "size-only"
    await _finish(session, state, upload, S.COMPLETED, checksum=stored_checksum or expected_checksum, etag=etag,
                  verified=verified)
    return _record(upload, state)


async def _complete_multipart(store: Store, bucket: str, key: str, upload: Upload, body: B.CompleteRequest,
                              algorithm: Algorithm | None) -> str | None:
    """Check the client's parts against ListParts and complete; the object's expected composite checksum."""
    from ...checksums import composite_checksum, unb64
    from ...storage.port import Checksum, CompletedPart

    assert upload.store_upload_id is not None
    listing = await _call(store.list_parts, bucket, key, upload.store_upload_id, algorithm=algorithm)
    if listing is None:
        raise HTTPException(409, f"the storage no longer has upload {upload.id} (aborted, or cleaned up)")
    given = {p.number: p for p in body.parts}
    missing = [n for n in range(1, upload.parts_total + 1) if n not in given]
    if missing or len(given) != upload.parts_total:
        raise HTTPException(422, f"complete needs all {upload.parts_total} parts; missing "
                                 f"{', '.join(map(str, missing[:10])) or 'none'}"
                                 f"{'' if missing else ' (and some are outside the plan)'}")
    completed: list[CompletedPart] = []
    digests: list[bytes] = []
    for number in range(1, upload.parts_total + 1):
        part, held = given[number], listing.parts.get(number)
        if held is None:
            raise HTTPException(409, f"the storage holds no part {number}: send it, then complete")
        planned = B.part_size_of(upload, number)
        if held.size != planned:
            raise HTTPException(409, f"the storage holds part {number} with {held.size} bytes, the plan says "
                                     f"{planned}: send it again")
        if part.etag and part.etag.strip('"') != held.etag:
            raise HTTPException(409, f"part {number}'s ETag is {held.etag} on the storage, not {part.etag}")
        if part.content_md5 and unb64(part.content_md5).hex() != held.etag:
            raise HTTPException(409, f"part {number} on the storage is not the body whose MD5 you sent (its ETag is "
                                     f"{held.etag}): send it again")
        checksum = part.checksum or held.checksum
        if algorithm is not None:
            if held.checksum and part.checksum and held.checksum != part.checksum:
                raise HTTPException(409, f"part {number}'s {algorithm.value} is {held.checksum} on the storage, "
                                         f"not {part.checksum}: send it again")
            if not checksum:
                raise HTTPException(422, f"part {number} needs its {algorithm.value} checksum")
            digests.append(unb64(checksum))
        completed.append(CompletedPart(number, held.etag,
                                       Checksum(algorithm, checksum) if algorithm and checksum else None))
    await _call(store.complete_multipart_upload, bucket, key, upload.store_upload_id, completed)
    return composite_checksum(algorithm, digests) if algorithm is not None else None


async def _finish(session: AsyncSession, state: ServerState, upload: Upload, status: UploadStatus, *,
                  checksum: str | None = None, etag: str | None = None, verified: str | None = None,
                  error: str | None = None) -> None:
    now = utcnow()
    upload.status = status
    if status is S.COMPLETED:
        upload.bytes_done, upload.parts_done = upload.total_bytes, upload.parts_total
        upload.checksum, upload.etag, upload.verified = checksum, etag, verified
    if error is not None:
        upload.error = error
    upload.version += 1
    upload.updated_at = upload.last_activity_at = now
    await session.commit()
    await svc.publish(state.bus, upload, state.settings.live_after_s)


async def abort_on_store(session: AsyncSession, state: ServerState, upload: Upload, *,
                         reason: str | None = None) -> str:
    """Abort a brokered upload on the store, confirm that nothing is left (repeated while parts still show) and
    record it stopped (``reason``: the record's error, why the server did it); the outcome in words. The abort
    route, a Stop from the dashboard and the reaper share it: the server cleans up even when the CLI is gone. A
    store that refuses is :class:`HTTPException` 502."""
    store, bucket, _ = _store(state)
    outcome = "nothing to abort (a single PutObject)"
    if is_run(upload):
        outcome = await _abort_children(session, state, upload)
    elif upload.store_upload_id:
        result = await _call(store.abort_and_confirm, bucket, upload.storage_key or upload.key,
                             upload.store_upload_id)
        if not result.gone:
            raise HTTPException(502, f"the storage did not confirm the abort ({result.value}): try again")
        outcome = result.value
    if upload.status is not S.STOPPED:
        await _finish(session, state, upload, S.STOPPED, error=reason)
    return outcome


async def _abort_children(session: AsyncSession, state: ServerState, run: Upload) -> str:
    """Abort every active large file of a brokered directory run (what its small files put stays, as in a
    direct run); the outcome in words."""
    children = list((await session.execute(
        select(Upload).where(Upload.parent_id == run.id, Upload.owner_id == run.owner_id,
                             Upload.status.in_(list(svc.ACTIVE))))).scalars())
    for child in children:
        await abort_on_store(session, state, child, reason=f"its directory run {run.id} was stopped")
    return f"{len(children)} multipart upload(s) of the run aborted; the objects already put stay"


@router.post("/uploads/{upload_id}/abort")
async def abort(upload_id: str, user: UserDep, state: StateDep, session: SessionDep) -> dict[str, Any]:
    """Abort on the store and confirm that nothing is left (repeated while parts still show); record stopped."""
    _store(state)
    upload = await _brokered(session, user, upload_id, active=False)
    if upload.status is S.COMPLETED:
        raise HTTPException(409, f"upload {upload_id} is completed: there is nothing to abort")
    outcome = await abort_on_store(session, state, upload)
    return {**_record(upload, state), "aborted": True, "outcome": outcome}
