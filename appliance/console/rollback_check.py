"""Whether a rollback's re-commit would be signed acceptably: key roles and lineage (issues 10 and 14).

Owns: ``signer_keyid`` (which trusted key this node's re-commit is signed with, as far as the
unprivileged console can tell: the device key bound to this node's id) and ``recommit_problem``
(a dry run of exactly what ``Store.commit`` checks before it signs: the lineage the new
checkpoint would carry from its parent, then ``authorize`` of the target's manifest with that
lineage under the *current* trust store). The rollback target itself must verify under the
current trust (its signer's role, revocation, another device's key): ``readmodel`` reports
that per generation. Does not own the rule (``appliance.signing.lineage``) or committing.

Examples of refusals: the target's layout differs from the current release base (a device key
signs only descendants with the same tensor layout); this node's key is another device's or
has no role allowing this model; the node has no device key in a trust store with roles.
"""

from __future__ import annotations

import dataclasses

from appliance.errors import ApplianceError, NoValidCheckpointError, StorageError
from appliance.signing import authorize, lineage_for_commit
from appliance.signing.trust import DEVICE
from appliance.store.store import Store


def signer_keyid(store: Store) -> str | None:
    """The node's device key id from the trust store (``None``: role-less trust, any listed key may sign)."""
    trust = store.trust
    if not trust.has_roles:
        return None
    own = [k for k in trust.keys if k.role == DEVICE and (trust.device is None or k.device == trust.device)]
    return own[0].keyid if len(own) == 1 else ""


def recommit_problem(store: Store, target: int, keyid: str | None, floor: int = 0) -> str | None:
    """Why re-committing generation ``target`` signed by ``keyid`` would be refused, or ``None``.

    ``keyid``: ``None`` skips the check (role-less trust store); ``""``: no key of this node is
    trusted with a role, which is itself the refusal.
    """
    if keyid is None:
        return None
    if keyid == "" or store.trust.entry(keyid) is None:
        return (
            "this node's signing key has no role in the trust store (no device key bound to "
            f"{store.trust.device or 'this node'}), so a re-commit would not boot"
        )
    try:
        chosen = store.select(target, floor=floor).opened
        parent = store.select(floor=floor).opened  # what Store.commit takes as the parent
        lineage = lineage_for_commit([keyid], store.trust, (parent.bundle, parent.authorization,
                                                            parent.verified.manifest))  # fmt: skip
        candidate = dataclasses.replace(
            chosen.verified.manifest,
            generation=parent.generation + 1,
            parent=parent.verified.manifest.digest(),
            lineage=lineage,
        )
        authorize(candidate, [keyid], store.trust, limits=store.limits)
    except NoValidCheckpointError as exc:
        return f"generation {target} cannot be opened under the current trust store: {exc.problem}"
    except (ApplianceError, StorageError) as exc:
        what = type(exc).__name__
        return f"re-signing generation {target} with this node's key would be refused ({what}: {exc.problem})"
    return None
