"""Sinks: where results leave the daemon (atomic files, the DICOM export outbox)."""
