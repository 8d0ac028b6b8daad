"""The upload engine: one object's upload as a state machine, executors that run its parts, a shared-memory
byte counter.

How it fits together::

    ObjectUpload (parent, main thread)           Executor: worker processes (LocalProcessExecutor), or threads
      prepare(): client, executors started,        of this process (ThreadExecutor: one PutObject, or an
                 resume decision                   in-memory store)
      run(): create ──PartJob(target, part)──► submit ──► read part, checksum, Store.upload_part(PartReader)
             events(timeout, wake=cancel) ◄── JobDone / WorkerLost / WorkerBroken     │ counts bytes as sent
             aggregator.tick() ◄── bytes_sent(): ByteCounter slots ◄─────────────────┘ (one int64 slot per worker)
             complete ─► verify_object() ─► the final snapshot          sinks (not imported here): bar / plain /
                                                                        json / push

* Every S3 request goes through the :class:`~mpupload.storage.port.Store`; jobs and results are small frozen
  dataclasses; a :class:`~mpupload.storage.boto3_store.Boto3Store` crosses to a worker process as its config and
  builds its client there. Works under the fork, forkserver and spawn start methods (fork is the cheap one).
* A job names its object (:class:`~.worker.PartTarget`), so one long-lived executor serves many objects; the
  object's abort is registered (:class:`~.leftovers.Leftovers`) the moment the upload exists.
* Workers ignore SIGINT/SIGTERM: only the parent decides. They exit within a second when the parent dies, even by
  SIGKILL (``PR_SET_PDEATHSIG`` plus a watchdog thread).
* Cancel: the parent sets a lock-free shared flag; each body reader checks it between chunks, so an in-flight part
  stops within one chunk; then one sentinel per worker and a bounded join.
* A worker that dies is replaced and its part sent again, a bounded number of times.
* A bandwidth cap (``--max-bandwidth``): every body reader asks the run's :class:`~.throttle.Throttle` before each
  chunk — a token bucket over the same shared counters, no lock; without a cap the plain reader checks nothing.
"""
