"""``python -m daemon`` is the ``acqflow`` command."""

from __future__ import annotations

from daemon.cli import main

main()
