"""The ``mpupload`` command line: one module per command group, one error-to-exit-code table."""
