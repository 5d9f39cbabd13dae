"""Pull the dossier statuses set at the province or district (SPEC §18).

The agent asks, in a signed envelope, for its commune's central changes after
the last id it holds, page after page while the server says more wait. Each
page counts only if it is signed by the pinned server key and decodes
strictly; its items and the cursor past them are stored in one transaction
of the queue, so a pull cut off anywhere resumes where the last stored page
ended, and pulling a page again changes nothing.

Order against this PC's own status changes comes from the queue and the
server, not from a clock: each change comes with the dossier's status at the
server when the page was made (``now``, which has this PC's acknowledged
records in the server's order), and is stored with the queue's acknowledged
position read before asking (:meth:`client.queue.Queue.store_central_updates`).
A status record after that position reaches the server after the change.
"""

from __future__ import annotations

import logging

from protocol import DecodeError
from protocol.messages import encode_envelope
from protocol.signing import sign_envelope
from protocol.updates import (
    KIND,
    UpdatesPage,
    UpdatesRequest,
    decode_updates_page,
    encode_updates_request,
)

from .agent import Agent
from .errors import TransportError
from .sync import refusal_of
from .transport import HttpTransport

__all__ = ["pull_updates"]

log = logging.getLogger("client.updates")
MAX_PAGES = 1000  # per pull: 200,000 changes; the rest waits for the next pull
_TIMEOUT_S = 30.0


def _check(page: UpdatesPage, after: int) -> None:
    """A page must move forward from ``after`` (a signed page that does not is a
    server bug; looping on it would never end)."""
    if page.items and page.items[0].id <= after:
        raise TransportError("the server sent central changes already held")
    if page.next < after or (page.more and page.next == after):
        raise TransportError("the server's updates cursor does not move forward")


async def _page(agent: Agent, transport: HttpTransport, after: int) -> UpdatesPage:
    signed = encode_updates_request(UpdatesRequest(after))
    env = sign_envelope(agent.key, KIND, agent.config.agent_id, signed)
    reply = await transport.post("/v1/updates", encode_envelope(env), timeout_s=_TIMEOUT_S)
    message = reply.signed_message(agent.config.server_key_bytes)
    if reply.status != 200:
        raise refusal_of(reply, message)
    try:
        page = decode_updates_page(message)
    except DecodeError as exc:
        raise TransportError(f"the server's reply is not a valid updates page ({exc})") \
            from exc
    _check(page, after)
    return page


async def pull_updates(agent: Agent, transport: HttpTransport) -> int:
    """Fetch every central status change after the stored cursor.

    Returns:
        How many changes were new to this queue.

    Raises:
        TransportError: the link, or an answer that is not a signed page.
        RefusedError: the server refused (revoked, unknown agent).
    """
    new = 0
    for _ in range(MAX_PAGES):
        after = await agent.queue.central_cursor()
        before = await agent.queue.status()  # what the server had applied when asked
        page = await _page(agent, transport, after)
        new += await agent.queue.store_central_updates(page.items, page.next,
                                                       (before.epoch, before.acked_seq))
        if not page.more:
            break
    if new:
        log.info("%d dossier status changes received from the province", new)
    return new
