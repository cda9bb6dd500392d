"""The DICOM network stack: the C-ECHO/C-STORE SCP (upper layer, associations, DIMSE,
the listener), its durable instance spool and its recovery, and Part 10 files."""
