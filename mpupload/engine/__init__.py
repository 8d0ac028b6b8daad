"""The upload engine: a coordinator in the parent, worker processes, a shared-memory byte counter.

How it fits together::

    coordinator (parent, main thread)            worker processes (one boto3 client each)
      plan parts ──job──► Pipe ─────────────────► read part, checksum, UploadPart(body=PartReader)
      wait(pipes, sentinels, cancel, tick) ◄─result─┘        │ counts bytes as they are sent
      aggregator.tick() ◄── ByteCounter slots ◄──────────────┘ (one int64 slot per worker, no lock)
      sinks: bar / plain / json / push

* Every S3 request goes through a :class:`~mpupload.storage.Store` (``mpupload/storage/``); the engine holds
  no S3 code of its own (the workers and the single PutObject still build a boto3 client, until they call
  the Store too).
* Jobs and results are small frozen dataclasses; clients are built inside the child from a picklable
  ``StoreConfig``. Works under the fork, forkserver and spawn start methods.
* Workers ignore SIGINT/SIGTERM: only the coordinator decides. They exit within a second when the
  coordinator dies, even by SIGKILL (``PR_SET_PDEATHSIG`` plus a parent watchdog thread).
* Cancel: the coordinator sets a lock-free shared flag; each worker's body reader checks it between
  chunks, so an in-flight part stops within one chunk; then one sentinel per worker and a bounded join.
* A worker that dies is replaced and its part retried, a bounded number of times.
"""
