"""The mpupload API server: accounts, upload records and progress ingestion.

Built by :func:`mpupload.server.app.create_app` from a :class:`mpupload.server.settings.Settings`; run it
with ``mpupload serve``. The server never imports the upload engine.
"""
