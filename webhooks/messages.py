"""What the dispatcher tells a worker: the ``webhooks.deliver`` task and its message, once.

A message carries one attempt or a batch of them (SPEC, *Flower*), ids only: for each, the
delivery, event and endpoint ids, the attempt number, the claim token and the trigger. No
payload, no secret: the worker reads those under the claim. So searching Flower for a
delivery id finds its task, whether it went alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# The one Celery task name (Flower's metrics are labelled by it: keep it fixed).
TASK_NAME = "webhooks.deliver"


class Trigger(StrEnum):
    """Why an attempt is made: its delivery fell due, or someone asked for a replay.

    Stored as is in ``attempts.trigger`` (SPEC: ``"scheduled"|"replay"``).
    """

    SCHEDULED = "scheduled"
    REPLAY = "replay"


@dataclass(frozen=True)
class Claim:
    """A delivery handed to one worker for one attempt: what a message carries per attempt."""

    delivery_id: str
    event_id: str
    endpoint_id: str
    attempt: int
    claim_token: str
    trigger: Trigger

    def to_message(self) -> dict[str, Any]:
        """This attempt's entry in a message (a single attempt's whole keyword arguments)."""
        return {
            "delivery_id": self.delivery_id,
            "event_id": self.event_id,
            "endpoint_id": self.endpoint_id,
            "attempt": self.attempt,
            "claim_token": self.claim_token,
            "trigger": str(self.trigger),
        }

    @classmethod
    def from_message(cls, fields: Mapping[str, Any]) -> Claim:
        """Read one attempt's entry (messages of older dispatchers may lack ``trigger``)."""
        return cls(
            delivery_id=str(fields["delivery_id"]),
            event_id=str(fields["event_id"]),
            endpoint_id=str(fields["endpoint_id"]),
            attempt=int(fields["attempt"]),
            claim_token=str(fields["claim_token"]),
            trigger=Trigger(fields.get("trigger", Trigger.SCHEDULED)),
        )


def task_kwargs(claims: Sequence[Claim]) -> dict[str, Any]:
    """The keyword arguments of the task carrying ``claims``.

    One attempt keeps the flat form (``delivery_id=…, attempt=…``: Flower's
    ``kwargs:delivery_id=…`` search finds it); a batch lists its attempts under ``attempts``.
    """
    if len(claims) == 1:
        return claims[0].to_message()
    return {"attempts": [claim.to_message() for claim in claims]}


def claims_from_kwargs(kwargs: Mapping[str, Any]) -> list[Claim]:
    """The claims a task's keyword arguments carry (`task_kwargs`, either form)."""
    if "attempts" in kwargs:
        return [Claim.from_message(entry) for entry in kwargs["attempts"]]
    return [Claim.from_message(kwargs)]


def task_id(claims: Sequence[Claim]) -> str:
    """A readable task id: ``<delivery>-a<n>-<token>``, a batch's named by its first attempt.

    Flower's search matches the id, and a batch's arguments name every delivery in it.
    """
    first = claims[0]
    batch = f"-b{len(claims)}" if len(claims) > 1 else ""
    return f"{first.delivery_id}-a{first.attempt}{batch}-{first.claim_token[:8]}"


def group_claims(
    claims: Sequence[Claim],
    *,
    in_flight: int,
    slots: int,
    most: int,
    alone: Callable[[Claim], bool] = lambda claim: False,
) -> list[list[Claim]]:
    """How a round's claims go out: one task each while the attempts in flight leave a free
    slot for each (latency first), else grouped into batches of up to ``most``.

    Past the free slots, the claims are spread over as many tasks as there are free slots
    (at least enough that none carries more than ``most``), in sizes that differ by one at
    most, so every free thread gets a share at once and the rest wait in the fewest tasks.

    Args:
        claims: the round's claims, in the order admission took them.
        in_flight: attempts claimed and not yet recorded before this round, everywhere.
        slots: attempts in flight sent one task each (`Settings.worker_slots`).
        most: the most attempts in one task (`Settings.batch_max`).
        alone: claims that always go in a task of their own: those of an endpoint that
            lately gave no response (a black hole would hold its batch's thread for the
            whole deadline; alone, it holds only its own).
    """
    singles = [[claim] for claim in claims if alone(claim)]
    rest = [claim for claim in claims if not alone(claim)]
    free = max(slots - in_flight - len(singles), 0)
    if len(rest) <= free:
        return singles + [[claim] for claim in rest]
    tasks = max(free, -(-len(rest) // most), 1)
    size, larger = divmod(len(rest), tasks)
    groups: list[list[Claim]] = []
    start = 0
    for i in range(tasks):
        end = start + size + (1 if i < larger else 0)
        groups.append(list(rest[start:end]))
        start = end
    return singles + groups
