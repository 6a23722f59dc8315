"""Managed Agents code, unchanged, on herd: the official Anthropic SDK with base_url pointed at
`herd gateway`. Run by scripts/demo; by hand:

    herd keys create --tenant me            # prints a key once
    HERD_BASE_URL=http://127.0.0.1:8080 HERD_API_KEY=herd_sk_… python examples/sdk_quickstart.py

The model is whatever the brain serves the agent's `model` with (Claude with an API key on the
brain; the demo's mock model without one).
"""

import os

import anthropic

client = anthropic.Anthropic(base_url=os.environ.get("HERD_BASE_URL", "http://127.0.0.1:8080"),
                             api_key=os.environ["HERD_API_KEY"])
beta = client.beta

agent = beta.agents.create(
    name="quickstart",
    model=os.environ.get("HERD_DEMO_MODEL", "claude-sonnet-4-5"),
    system="You work in a Linux sandbox. Use bash to answer, then say what you found.",
    tools=[{"type": "agent_toolset_20260401"}],
)
environment = beta.environments.create(
    name="quickstart",
    # herd's addition: the sandbox image (the hands' default when left out).
    config={"type": "cloud", "image": os.environ.get("HERD_DEMO_IMAGE", "herd-sandbox:debian")},
)
session = beta.sessions.create(agent=agent.id, environment_id=environment.id, title="quickstart")
print(f"agent {agent.id} v{agent.version}, environment {environment.id}, session {session.id}")

with beta.sessions.events.stream(session.id) as stream:  # open the stream first, then send
    beta.sessions.events.send(session.id, events=[{
        "type": "user.message",
        "content": [{"type": "text", "text": "Where are you running? Check with bash."}],
    }])
    for event in stream:
        line = f"  {event.type}"
        if event.type == "agent.message":
            line += ": " + "".join(b.text for b in event.content if b.type == "text")
        elif event.type == "agent.tool_use":
            line += f": {event.name} {event.input}"
        elif event.type == "agent.tool_result":
            line += ": " + "".join(getattr(b, "text", "") for b in (event.content or [])).strip()
        print(line)
        if event.type == "session.status_idle" and event.stop_reason.type != "requires_action":
            break

done = beta.sessions.retrieve(session.id)
print(f"session {done.id}: {done.status}, {done.usage.input_tokens} input and "
      f"{done.usage.output_tokens} output tokens; "
      f"{len(list(beta.sessions.events.list(session.id)))} events in its log")
