"""What the dispatcher tells a worker: the ``webhooks.deliver`` task and its message, once.

A message carries one attempt or a batch of them (SPEC, *Flower*), ids only: for each, the
delivery, event and endpoint ids, the attempt number, the claim token and the trigger. No
payload, no secret: the worker reads those under the claim. So searching Flower for a
delivery id finds its task, whether it went alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
