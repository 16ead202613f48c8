"""Checkpoints that travel: the portable layout's I/O edge (export to and import from a directory).

Owns: ``export_checkpoints`` (``export``) and ``inspect_source`` / ``import_checkpoint``
(``importer``) — the API the CLI, the recovery console's USB import and the remote restore call.
Pure rules (names, blob lists, the import decision) live in ``appliance.format.portable``.
"""

from appliance.transfer.export import ExportResult, export_checkpoints, select_for_export
from appliance.transfer.importer import ImportPlan, ImportResult, import_checkpoint, inspect_source
from appliance.transfer.source import LayoutReader

__all__ = [
    "ExportResult",
    "ImportPlan",
    "ImportResult",
    "LayoutReader",
    "export_checkpoints",
    "import_checkpoint",
    "inspect_source",
    "select_for_export",
]
