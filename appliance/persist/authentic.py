"""Authentic exports: the watchdog signs only state the running service produced, for what boot handed it.

Owns: ``Receipts`` (where a receipt comes from: the service's control channel in production),
and ``check_receipt`` — an export is authentic only if the service that is serving now vouches
for that exact file (same name, same content digest, same source checkpoint), and that service
restored exactly the checkpoint the current handoff names (slot, generation, manifest digest,
boot id). Anything else in the outbox — a file another local user or process dropped there, an
export from an earlier service process or an earlier boot — is refused with
``UnauthenticExportError`` and quarantined, never signed. Does not own committing (``committer``).

Why receipts rather than a MAC: the control channel already authenticates both ends (the
kernel's ``SO_PEERCRED``), so no shared secret has to be provisioned, rotated or protected; the
service keeps receipts in memory only, so a restarted service vouches for nothing older.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

from appliance.errors import UnauthenticExportError
from appliance.format.export import ExportInfo
from appliance.format.handoff import Handoff
from appliance.node.control_channel import ControlClient


class Receipts(Protocol):
    def receipt(self, name: str) -> dict[str, Any] | None:
        """The serving service's receipt for outbox file ``name`` (``None``: it wrote no such file).

        Raises ``ControlChannelError`` when the service cannot be asked (the export then waits).
        """
        ...


class ControlReceipts:
    """Receipts asked of the service over its control channel (``GET /v1/receipt?file=NAME``)."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.client = ControlClient(socket_path, timeout)

    def receipt(self, name: str) -> dict[str, Any] | None:
        status, body = self.client.call("GET", f"/v1/receipt?file={quote(name)}")
        if status == 404:
            return None
        body = self.client.require("GET", f"/v1/receipt?file={quote(name)}") if status != 200 else body
        return body if isinstance(body, dict) else None


def check_receipt(name: str, info: ExportInfo, receipt: dict[str, Any] | None, handoff: Handoff | None) -> None:
    """``UnauthenticExportError`` unless ``receipt`` vouches for this export of the handed-off checkpoint."""
    if receipt is None:
        raise UnauthenticExportError(
            f"{name} was not produced by the running model service (no receipt: written by someone else, "
            "or left by an earlier service process or boot)"
        )
    if receipt.get("content_sha256") != info.content_sha256:
        raise UnauthenticExportError(f"{name} differs from what the service wrote under that name (content digest)")
    if receipt.get("source") != info.source:
        raise UnauthenticExportError(f"{name} claims another source checkpoint than the service's receipt")
    if receipt.get("journal") != info.journal:
        raise UnauthenticExportError(f"{name} claims another journal point than the service's receipt")
    if handoff is None:
        raise UnauthenticExportError(f"{name}: no handoff names the checkpoint the service should serve")
    expected = {"slot": handoff.slot, "generation": handoff.generation, "manifest_digest": handoff.manifest_digest}
    if info.source != expected or receipt.get("boot_id") != handoff.boot_id:
        raise UnauthenticExportError(
            f"{name} derives from {info.source} (boot {str(receipt.get('boot_id'))[:16]}), not from the checkpoint "
            f"boot {handoff.boot_id} handed the service ({handoff.slot}/{handoff.generation})"
        )
