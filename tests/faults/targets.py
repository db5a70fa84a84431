"""The vendors the fault suite runs against: each simulator with the contract data, the TOML that
reaches it, how to expire its session, and an inventory of everything it stores.

The inventory is how "no orphan, no duplicate" is checked without trusting the backend: a clean run
of a write tells how much the CRM should grow; a faulted run must grow by exactly that (it
succeeded) or not at all (it failed). `leftovers` counts what a failed write may leave because the
vendor's API offers no way to remove it (SuperOffice: an attachment record on no message); the
suite reports those separately and checks they are invisible to every listing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.simulators import creatio, espocrm, superoffice, wello

__all__ = ["TARGETS", "Target"]


@dataclass(frozen=True)
class Target:
    name: str
    """The backend's name in the configuration (and in crm:// URIs)."""
    make: Callable[[], Any]
    """A fresh simulator (an ASGI app) with the contract data."""
    toml: Callable[[Any], str]
    """The `[backends.<name>]` table for that simulator (in-process: the host is never resolved)."""
    inventory: Callable[[Any], Counter[str]]
    expire: Callable[[Any], None] | None = None
    """Ends the simulator's sessions/tickets/tokens; None for vendors without sessions."""
    leftovers: Callable[[Any], int] = lambda sim: 0


def _creatio_inventory(sim: creatio.CreatioSimulator) -> Counter[str]:
    counts = Counter(
        {table: len(sim.tables[table]) for table in ("CaseFile", "ContactFile", "AccountFile", "SysImage")}
    )
    counts["blobs"] = len(sim.blobs)
    return counts


def _espocrm_inventory(sim: espocrm.EspoSimulator) -> Counter[str]:
    linked = sum(1 for attachment in sim.attachments.values() if attachment.parent_id or attachment.related_id)
    return Counter({"linked attachments": linked, "Note": len(sim.records["Note"])})


def _espocrm_leftovers(sim: espocrm.EspoSimulator) -> int:
    """Attachments linked to nothing: when the answer to their upload is lost, crm-mcp never learns the
    id, and only admins may list attachments. EspoCRM's cleanup job removes them when
    `cleanupOrphanAttachments` is on."""
    return sum(1 for attachment in sim.attachments.values() if not attachment.parent_id and not attachment.related_id)


def _wello_inventory(sim: wello.WelloSimulator) -> Counter[str]:
    live = [row for row in sim.tables["DbFile"].values() if not row.get("is_archived")]
    return Counter({"DbFile": len(live)})


def _superoffice_inventory(sim: superoffice.SuperOfficeSimulator) -> Counter[str]:
    on_messages = {attachment for message in sim.messages.values() for attachment in message.attachments}
    return Counter(
        {
            "attachments on messages": len(on_messages),
            "messages": len(sim.messages),
            "person images": sum(1 for person in sim.persons.values() if person.image),
            "documents": len(sim.documents),
        }
    )


def _superoffice_leftovers(sim: superoffice.SuperOfficeSimulator) -> int:
    """Attachment records on no message and images linked to no person: SuperOffice's API can neither
    list nor (for attachments) delete them, and no listing shows them."""
    on_messages = {attachment for message in sim.messages.values() for attachment in message.attachments}
    linked = {person.image for person in sim.persons.values()}
    return len(set(sim.attachments) - on_messages) + len(set(sim.blobs) - linked)


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target(
            name="creatio",
            make=creatio.contract_simulator,
            toml=lambda sim: (
                f'[backends.creatio]\nvendor = "creatio"\nurl = "https://creatio.test"\nauth = "forms"\n'
                f'username = "{sim.username}"\npassword = "{sim.password}"\n'
            ),
            inventory=_creatio_inventory,
            expire=lambda sim: sim.expire_sessions(),
        ),
        Target(
            name="espocrm",
            make=espocrm.seeded_simulator,
            toml=lambda sim: (
                f'[backends.espocrm]\nvendor = "espocrm"\nurl = "http://espo.test"\napi_key = "{espocrm.API_KEY}"\n'
                'contact_photo_field = "cPhoto"\n'
            ),
            inventory=_espocrm_inventory,
            leftovers=_espocrm_leftovers,
        ),
        Target(
            name="superoffice",
            make=superoffice.contract_simulator,
            toml=lambda sim: (
                f'[backends.superoffice]\nvendor = "superoffice"\nurl = "https://so.test/{sim.tenant}"\n'
                f'username = "{sim.username}"\npassword = "{sim.password}"\n'
            ),
            inventory=_superoffice_inventory,
            expire=lambda sim: sim.expire_tickets(),
            leftovers=_superoffice_leftovers,
        ),
        Target(
            name="wello",
            make=lambda: wello.WelloSimulator().seed(),
            toml=lambda sim: (
                f'[backends.wello]\nvendor = "wello"\nurl = "http://wello.test"\nusername = "{sim.username}"\n'
                f'password = "{sim.password}"\ndomain = "{sim.domain}"\n'
            ),
            inventory=_wello_inventory,
        ),
    )
}
