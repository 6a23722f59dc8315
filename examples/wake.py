"""Wake a herd agent from Python and print its answer, with nothing but nats-py.

    pip install nats-py nkeys msgpack
    python3 examples/wake.py <session_id> "your message" [nats://127.0.0.1:4222]

It connects as herd's `client` role (an outside system: it may publish wakes and user events
and read sessions), with the key `herd auth init` made: $HERD_NATS_NKEY_FILE, by default
.herd/auth/client.nk. Replies come to the role's own inbox prefix, `_INBOX_client`. The role
reads with direct gets (it may not create consumers: a push consumer could deliver anywhere),
so the answer is followed by asking for the session's next event after the last one seen.
"""
import asyncio
import json
import os
import sys
import uuid

import msgpack
import nats
from nats.js.errors import NotFoundError

STREAM = "HERD_SESSIONS"


async def main(session: str, text: str, url: str) -> None:
    seed = os.environ.get("HERD_NATS_NKEY_FILE", ".herd/auth/client.nk")
    nc = await nats.connect(url, nkeys_seed=seed, inbox_prefix=b"_INBOX_client")
    js = nc.jetstream()
    subject = f"herd.session.{session}.>"
    # Where the session is now, so only what follows the wake is printed.
    last = await js.get_last_msg(STREAM, subject, direct=True)
    seq = last.seq
    event_id = f"evt-{uuid.uuid4().hex}"
    wake = {"events": [{"id": event_id, "type": "user.message",
                        "content": [{"type": "text", "text": text}]}]}
    # A wake's Nats-Msg-Id makes a resent wake collapse into one.
    await js.publish(f"herd.wake.{session}", json.dumps(wake).encode(),
                     headers={"Nats-Msg-Id": f"{session}/{event_id}"})
    while True:
        try:
            msg = await js.get_msg(STREAM, seq=seq + 1, subject=subject, next=True, direct=True)
        except NotFoundError:
            await asyncio.sleep(0.05)       # nothing new yet
            continue
        seq = msg.seq
        event = msgpack.unpackb(msg.data)   # herd writes MessagePack maps with named fields
        kind = event["type"]
        if kind == "agent.message":
            print("agent:", "".join(b.get("text", "") for b in event["content"]))
        elif kind == "session.status_idle" and seq > last.seq + 1:
            print("idle:", event["stop_reason"]["type"])
            break
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "nats://127.0.0.1:4222"))
