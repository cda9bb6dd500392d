"""``python -m acqflow.daemon`` is the ``acqflow`` command."""

from __future__ import annotations

from acqflow.daemon.cli import main

main()
