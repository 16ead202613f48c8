"""Replication to S3-compatible object storage, restore from it, and the fleet channel (edge).

Owns: ``remote.json`` (``config``), the S3 edge (``s3``), signed head records (``head``), the
replicator and its durable queue (``replicate``, ``state``) and pulling a checkpoint (``pull``).
Pure rules (head record, anti-replay, backoff) live in ``appliance.format.remote``; the import
itself is ``appliance.transfer``'s. boto3 is imported only when an ``ObjectStore`` is created.
"""
