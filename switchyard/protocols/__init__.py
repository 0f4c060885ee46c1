"""Sans-IO protocol code: bytes in, typed messages out, and back. No I/O here."""
