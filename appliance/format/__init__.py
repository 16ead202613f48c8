"""Pure format layer: the on-disk and signed data model of format v1.

Owns: value types (digests, dtypes, codec names), the manifest, the in-toto/DSSE statement,
the commit record, canonical JSON, and pure decisions over them (``plan``).
Does not own: any I/O, clocks, cryptography or tensors. Everything here takes and returns
bytes, ints, strings and frozen dataclasses, so it is testable without a disk and runs on
Python 3.10 without torch. The import-linter contract in pyproject.toml enforces that.
"""
