"""The adaptation journal (issue 17): durable, MACed records of every adaptation step, replayed at boot.

Layer: below the model service, above training/node/events; the record format and the replay
rules are pure (``appliance.format.journal``), files are behind ``files.JournalFiles``.
Modules: ``files`` and ``keyfile`` (no torch: the CLI and boot may import them), ``reader``,
``writer``, ``recording`` (the crash model's seam), ``step`` and ``journal`` (torch).
"""
