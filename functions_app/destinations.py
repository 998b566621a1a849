"""Where a finished async event goes next: another function (Lambda's destination record), or the dead-letter inbox,
and the inbox's replay. A chain of destinations stops after CHAIN_DEPTH_MAX hops."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from console.exceptions import ResourceConflict
from functions_app.accept import ASYNC_PAYLOAD_MAX_BYTES, invocation_accept
from functions_app.models import (
    DEAD_LETTER,
    LATEST,
    DeadLetter,
    DeadLetterCondition,
    Function,
    Invocation,
    InvocationType,
)

logger = logging.getLogger(__name__)


def destination_record(invocation: Invocation, condition: str) -> dict[str, Any]:
    """Lambda's destination record: requestContext, requestPayload, responseContext, responsePayload."""
    try:
        response_payload = json.loads(invocation.result) if invocation.result else None
    except ValueError:
        response_payload = invocation.result
    return {
        "version": "1.0",
        "timestamp": timezone.now().isoformat(),
        "requestContext": {
            "requestId": str(invocation.id),
            "functionArn": invocation.function_arn,
            "condition": condition,
            "approximateInvokeCount": invocation.attempt,
        },
        "requestPayload": json.loads(invocation.payload),
        "responseContext": {
            "statusCode": 200,
            "executedVersion": invocation.executed_version,
            **({"functionError": "Unhandled"} if invocation.function_error else {}),
        },
        "responsePayload": response_payload,
    }


def destination_payload(record: dict[str, Any]) -> bytes:
    """The record as an async payload: within the 1 MB limit and always valid JSON. A record too large keeps its
    contexts and says which payload it left out (the response first, then the request)."""
    encoded = json.dumps(record).encode()
    for part in ("responsePayload", "requestPayload"):
        if len(encoded) <= ASYNC_PAYLOAD_MAX_BYTES:
            break
        size = len(json.dumps(record[part]).encode())
        record = {**record, part: None, f"{part}Omitted": f"{size} bytes, over the async payload limit"}
        encoded = json.dumps(record).encode()
    return encoded


# Lambda stops a loop after about 16 calls in one chain; a destination hop beyond this is not made.
CHAIN_DEPTH_MAX = 16


def destination_deliver(*, invocation: Invocation, destination: str, condition: str) -> None:
    """Send the event on: to another function of the same owner, or to the dead-letter inbox.

    A failure with a destination that no longer exists lands in the inbox, so nothing is dropped silently. A
    chain of destinations (a function naming itself, or A -> B -> A) stops after CHAIN_DEPTH_MAX hops: the record
    that would have been sent waits in the dead-letter inbox, addressed to the function it was meant for.
    """
    if destination.startswith("function:"):
        target = Function.objects.filter(owner_id=invocation.owner_id, name=destination.split(":", 1)[1]).first()
        if target is not None:
            record = destination_payload(destination_record(invocation, condition))
            if invocation.chain_depth >= CHAIN_DEPTH_MAX:
                _dead_letter(
                    invocation,
                    function_id=target.pk,
                    condition=DeadLetterCondition.RECURSIVE_LOOP,
                    payload=record.decode(),
                    error_type="RecursiveInvocationDropped",
                )
                return
            invocation_accept(
                owner=invocation.owner,
                function=target,
                qualifier=LATEST,
                raw_payload=record,
                invocation_type=InvocationType.ASYNC,
                chain_depth=invocation.chain_depth + 1,
            )
            return
        destination = DEAD_LETTER if condition != "Success" else ""
    if destination == DEAD_LETTER and condition != "Success":
        _dead_letter(invocation, function_id=invocation.function_id, condition=condition, payload=invocation.payload)


def _dead_letter(invocation: Invocation, *, function_id: int, condition: str, payload: str, **extra: Any) -> None:
    DeadLetter.objects.get_or_create(
        invocation=invocation,
        defaults={
            "owner_id": invocation.owner_id,
            "function_id": function_id,
            "condition": condition,
            "request_payload": payload,
            "error_type": invocation.error_type,
            "error_result": invocation.result,
            "attempts": invocation.attempt,
            **extra,
        },
    )


def dead_letter_replay(*, dead_letter: DeadLetter) -> Invocation:
    """Run the stored event again as a new async invocation of the function's `$LATEST`, once: a letter that was
    replayed already answers with the invocation of its first replay."""
    return dead_letter_replay_once(dead_letter=dead_letter)[0]


def dead_letter_replay_once(*, dead_letter: DeadLetter) -> tuple[Invocation, bool]:
    """The replay's invocation, and whether this call created it. The letter is claimed by a conditional update
    on ``replayed_as IS NULL`` in the transaction that creates the invocation: of two racing replays one claims
    it, the other rolls back its invocation (and so its publish) and answers with the winner's."""
    if dead_letter.replayed_as_id is None:
        with transaction.atomic():
            replayed = invocation_accept(
                owner=dead_letter.owner,
                function=dead_letter.function,
                qualifier=LATEST,
                raw_payload=dead_letter.request_payload.encode(),
                invocation_type=InvocationType.ASYNC,
            )
            claimed = DeadLetter.objects.filter(pk=dead_letter.pk, replayed_as__isnull=True).update(
                replayed_as=replayed
            )
            if not claimed:
                transaction.set_rollback(True)
        if claimed:
            dead_letter.replayed_as = replayed
            return replayed, True
    current = DeadLetter.objects.select_related("replayed_as").filter(pk=dead_letter.pk).first()
    if current is None or current.replayed_as is None:
        raise ResourceConflict("The dead letter was deleted while it was being replayed.")
    return current.replayed_as, False


def dead_letter_delete(*, dead_letter: DeadLetter) -> None:
    dead_letter.delete()
