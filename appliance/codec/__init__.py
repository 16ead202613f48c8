"""Frame codecs on the CPU: byte grouping, XOR deltas, zstd frames with bomb-proof decoding.

Owns: turning raw frame bytes into stored bytes and back, into caller-provided memory.
Does not own: hashing policy, files or tensors. Torch-free; uses numpy and zstandard.
The GPU decoder (``appliance.codec.gpu``, a later issue) must produce byte-identical output.
"""
