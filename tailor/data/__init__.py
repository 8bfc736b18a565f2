"""Data: sources, cleaning with quarantine, the live log, the temporal split and the protocol."""
