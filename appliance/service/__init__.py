"""The model service: load a user's model, restore its state in-process, serve it over HTTP.

Owns: entry-point model loading, the in-process verified restore of the handed-off
checkpoint, the FastAPI app (health, readiness, inference, canary, adaptation, export), and
state export into the outbox. Does not own choosing the checkpoint or judging the canary
(``appliance.boot``) or committing exports (``appliance.persist``).

Restore happens inside this process because Orin has no CUDA memory IPC: GPU tensors cannot
be handed between processes, so the process that serves must be the one that restores.
"""
