"""Fuzzing the Engine.IO and Socket.IO framing of a real `messaging serve` process.

Hypothesis builds frames from the grammar (Engine.IO packet types, base64 packets, Socket.IO
packet types, attachment counts, namespaces, ack ids, event names including the reserved ones,
arbitrary JSON) and from nothing at all (random text and bytes). Whatever a client sends, the
server may refuse it or close that socket, and nothing else: no traceback in the log, the
process stays up, and a bystander's sends keep working. Both websocket paths are fuzzed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.transport import Target, raw_socket, target
from tests.support.service import unique

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

EVENTS = [
    "sendMessage",
    "syncMessages",
    "typing",
    "markRead",
    "markDelivered",
    "getPresence",
    "createConversation",
    "connect",
    "disconnect",
    "connect_error",
    "disconnecting",
    "noSuchEvent",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def socketio_packets(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from("0123456789"))
    attachments = draw(st.sampled_from(["", "1-", "2-", "1000000000-", "99999999999-", "-"]))
    namespace = draw(st.sampled_from(["", "/", "/admin,", "/?x=1,", "/a"]))
    ack_id = draw(st.sampled_from(["", "1", "42", "9" * 30]))
    body = draw(
        st.one_of(
            st.builds(
                lambda name, args: json.dumps([name, *args]),
                st.sampled_from(EVENTS) | st.text(max_size=10),
                st.lists(json_values, max_size=3),
            ),
            json_values.map(json.dumps),
            st.text(max_size=40),
        )
    )
    return "4" + kind + attachments + namespace + ack_id + body


engineio_frames = st.one_of(
    socketio_packets(),
    st.builds(
        lambda kind, rest: kind + rest, st.sampled_from("0123456789bx"), st.text(max_size=40)
    ),
    st.builds(lambda raw: "b" + raw, st.text(alphabet="ABCDabcd0123+/=!", max_size=24)),
    st.text(max_size=60),
    st.binary(max_size=60),
)


@pytest_asyncio.fixture(scope="module", params=["fast-path", "stock"])
async def replica(request: pytest.FixtureRequest, cluster_database: str) -> AsyncIterator[Target]:
    # The event loop stands still while hypothesis draws examples: long pings keep the
    # bystanders' official clients connected through that.
    async with target(
        cluster_database,
        fast_path=request.param == "fast-path",
        socketio_ping_interval_seconds="25",
        socketio_ping_timeout_seconds="20",
    ) as running:
        offset = running.log_size()
        yield running
        assert "Traceback" not in running.log_since(offset)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(engineio_frames, min_size=1, max_size=12), authenticated=st.booleans())
async def test_no_frame_a_client_sends_hurts_the_server_or_anyone_else(
    replica: Target, frames: list[Any], authenticated: bool
) -> None:
    offset = replica.log_size()
    with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
        async with raw_socket(replica, unique("fuzz") if authenticated else None) as ws:
            for frame in frames:
                await ws.send(frame)
            # Wait until the frames were taken (the socket may also be closed, or be waiting
            # for binary attachments the frames announced, which swallows this one).
            await ws.send('4299["syncMessages",{"limit":1}]')
            async with asyncio.timeout(2 if authenticated else 0.2):
                while True:
                    reply = await ws.recv()
                    if isinstance(reply, str) and reply.startswith("4399["):
                        break
    await replica.bystander_sends()
    logged = replica.log_since(offset)
    assert "Traceback" not in logged, logged[-3000:]
