"""The event catalogue: its entries, its examples, and the typo warnings for filters."""

from __future__ import annotations

import json

import pytest

from webhooks.catalogue import (
    CATALOGUE,
    EventType,
    closest_type,
    example_data,
    find_event_type,
    unknown_filter_warnings,
)
from webhooks.errors import InvalidEventType
from webhooks.event_types import validate_event_type
from webhooks.outbox import build_envelope

REQUIRED = {
    "project.created",
    "project.updated",
    "project.deleted",
    "deployment.created",
    "deployment.succeeded",
    "deployment.failed",
    "deployment.rolled_back",
}


def test_catalogue_covers_the_projects_and_deployments_the_api_documents() -> None:
    types = [entry.type for entry in CATALOGUE]
    assert set(types) >= REQUIRED
    assert len(types) == len(set(types))


@pytest.mark.parametrize("event", CATALOGUE, ids=lambda e: e.type)
def test_every_entry_is_a_valid_type_with_a_one_line_description_and_a_sendable_example(
    event: EventType,
) -> None:
    assert find_event_type(event.type) is event
    assert validate_event_type(event.type) == event.type
    assert event.description and "\n" not in event.description and len(event.description) < 100
    data = example_data(event.type)
    assert isinstance(data, dict) and data
    # What `webhooks trigger` will send must pass the same checks as any published event.
    envelope = build_envelope(
        event_id="evt_x",
        event_type=event.type,
        project_id="proj_8f3a2b",
        data=data,
        created_at="2026-04-28T14:02:11Z",
    )
    assert json.loads(envelope)["data"] == data


def test_deployment_examples_have_the_shape_of_the_api_docs_deployment() -> None:
    for name in ("deployment.created", "deployment.succeeded", "deployment.failed"):
        data = example_data(name)
        assert data["id"].startswith("dep_") and data["project_id"].startswith("proj_")
        assert {"status", "commit"} <= set(data)
    assert example_data("deployment.rolled_back")["status"] == "rolled_back"
    assert example_data("project.created")["id"] == "proj_8f3a2b"


def test_example_data_is_a_fresh_copy_each_time() -> None:
    first = example_data("deployment.failed")
    first["error"]["code"] = "changed"
    first["extra"] = True
    assert example_data("deployment.failed")["error"]["code"] == "build_failed"
    assert "extra" not in example_data("deployment.failed")


def test_example_data_of_an_unknown_type_names_the_closest_and_says_to_pass_data() -> None:
    with pytest.raises(InvalidEventType, match=r"did you mean deployment\.succeeded\?.*--data"):
        example_data("deployment.succeded")


def test_closest_type_corrects_typos_and_does_not_guess_wildly() -> None:
    assert closest_type("deploymnet.failed") == "deployment.failed"
    assert closest_type("project.delete") == "project.deleted"
    assert closest_type("zzz") is None


def test_known_types_and_prefixes_that_match_known_types_give_no_warning() -> None:
    assert unknown_filter_warnings(["deployment.succeeded", "project.*", "deployment.*"]) == []
    assert unknown_filter_warnings(["endpoint.*", "delivery.exhausted"]) == []


def test_an_unknown_type_warns_naming_the_closest_known_type() -> None:
    (warning,) = unknown_filter_warnings(["deployment.sucseeded", "project.created"])
    assert warning.startswith("deployment.sucseeded is not a known event type")
    assert "did you mean deployment.succeeded?" in warning
    assert "subscribes to it anyway" in warning


def test_a_prefix_matching_no_known_type_warns_with_the_closest_prefix() -> None:
    (warning,) = unknown_filter_warnings(["deploymnet.*"])
    assert warning.startswith("deploymnet.* matches no known event type")
    assert "did you mean deployment.*?" in warning


def test_an_unknown_type_with_nothing_close_warns_without_a_suggestion() -> None:
    (warning,) = unknown_filter_warnings(["billing.invoice.paid"])
    assert "did you mean" not in warning
