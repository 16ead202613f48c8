"""Built-in models: small, download-free ``nn.Module`` factories the service can load by entry point.

Owns: the demo model (``appliance.models.demo:build``) and its ~1 GB variant for measurements.
Does not own serving, restoring or persisting them (``appliance.service``, ``appliance.persist``).
"""
