"""The checkpoint store: two self-contained slots, crash-consistent commits, verified restores.

Owns: the on-disk layout, the commit write order, discovery with fallback, the restore
pipeline, verification, retention and GC. Works on numpy byte views, not torch tensors
(``appliance.api`` adapts tensors), and does all I/O through ``appliance.storage.Storage``.
"""
