"""The official Anthropic SDK (anthropic==2.10.0, unchanged) driving herd's gateway.

Run by tests/gateway_sdk.rs against a real `herd gateway`, brain and hand; the model is the
mock server, which answers "go" with a bash call and a custom tool call, "deny" with a bash
call, "long task" slowly, and a tool result with "done". Every step asserts; the last line
printed is a JSON summary the Rust test checks against the log.
"""

import json
import os
import sys

import anthropic

base = os.environ["HERD_BASE_URL"]
key = os.environ["HERD_KEY"]
c = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
B = c.beta
checks = []


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    checks.append(name)


weather = {
    "type": "custom",
    "name": "get_weather",
    "description": "weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
toolset = {
    "type": "agent_toolset_20260401",
    "default_config": {"permission_policy": {"type": "always_ask"}},
}

# Agents: create, update (a new version), versions.
agent = B.agents.create(name="conf", model="claude-sonnet-4-6", system="test", tools=[toolset, weather])
check("agent created", agent.type == "agent" and agent.version == 1 and agent.model.id == "claude-sonnet-4-6")
check("agent tools resolved", len(agent.tools[0].configs) == 8, agent.tools)
agent = B.agents.update(agent.id, version=agent.version, description="v2")
check("agent updated to v2", agent.version == 2 and agent.description == "v2")
check("two versions", len(list(B.agents.versions.list(agent.id))) == 2)
check("retrieve a version", B.agents.retrieve(agent.id, version=1).description is None)
check("agents listed", agent.id in [a.id for a in B.agents.list()])

env = B.environments.create(name="conf", config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": []}})
check("environment created", env.type == "environment" and env.config.type == "cloud")
session = B.sessions.create(agent=agent.id, environment_id=env.id, title="conf")
check("session created idle at v2", session.status == "idle" and session.agent.version == 2, session)


def reply(eid, ev, allow=True):
    if ev.type == "agent.custom_tool_use":
        return {"type": "user.custom_tool_result", "custom_tool_use_id": eid,
                "content": [{"type": "text", "text": "22C"}]}
    if allow:
        return {"type": "user.tool_confirmation", "tool_use_id": eid, "result": "allow"}
    return {"type": "user.tool_confirmation", "tool_use_id": eid, "result": "deny",
            "deny_message": "not now"}


def turn(text, allow=True, on_running=None):
    """Sends a message on an open stream and answers until the turn ends; returns the events."""
    seen = {}
    order = []
    with B.sessions.events.stream(session.id) as stream:  # open first: there is no replay
        sent = B.sessions.events.send(session.id, events=[
            {"type": "user.message", "content": [{"type": "text", "text": text}]}])
        check("send echoes the event", sent.data[0].type == "user.message" and sent.data[0].id)
        for ev in stream:
            seen[ev.id] = ev
            order.append(ev.type)
            check("never terminated", ev.type != "session.status_terminated")
            if ev.type == "session.status_running" and on_running:
                on_running()
                on_running = None
            if ev.type == "session.status_idle":
                if ev.stop_reason.type != "requires_action":
                    check("turn ends", ev.stop_reason.type == "end_turn", ev.stop_reason)
                    break
                B.sessions.events.send(session.id, events=[
                    reply(i, seen[i], allow) for i in ev.stop_reason.event_ids])
    return seen, order


seen, order = turn("go")
types = {e.type for e in seen.values()}
check("tool calls streamed", {"agent.custom_tool_use", "agent.tool_use", "agent.message"} <= types, types)
results = [e for e in seen.values() if e.type == "agent.tool_result"]
check("bash ran in the sandbox", any("from-the-sandbox" in json.dumps(r.model_dump(mode="json")) for r in results), results)
check("turn order", order.index("session.status_running") < order.index("agent.message"), order)

first = B.sessions.events.list(session.id, limit=2)
check("a page of two", len(first.data) == 2 and first.has_next_page() and first.get_next_page().data)
everything = list(B.sessions.events.list(session.id, limit=2))
check("pages cover the log", len({e.id for e in everything}) == len(everything) >= len(seen), (len(everything), len(seen)))
check("by type", all(e.type == "agent.message" for e in B.sessions.events.list(session.id, types=["agent.message"])))
check("limit 1000", len(B.sessions.events.list(session.id, limit=1000).data) == len(everything))
desc = B.sessions.events.list(session.id, order="desc", limit=3).data
check("descending", [e.id for e in desc] == [e.id for e in everything[::-1][:3]])
s = B.sessions.retrieve(session.id)
check("retrieved idle with usage", s.status == "idle" and s.usage.output_tokens > 0, s.usage)

seen, _ = turn("deny this", allow=False)
denied = [e for e in seen.values() if e.type == "agent.tool_result"]
check("denied call answered as an error", denied and all(r.is_error for r in denied), denied)


def interrupt():
    B.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])


seen, order = turn("long task", on_running=interrupt)
check("interrupted turn ends", "session.status_idle" in order and "user.interrupt" in order, order)
# The model's slow answer arrives after the interrupt: herd ends the turn without it.
late = [e for e in seen.values() if e.type == "agent.message"
        and "finally" in json.dumps(e.model_dump(mode="json"))]
check("the interrupt cut the answer", not late, late)

# The session keeps the agent it was made with; the agent moves on.
B.agents.update(agent.id, version=2, system="changed")
check("session keeps v2", B.sessions.retrieve(session.id).agent.version == 2)

# Vaults: values are write-only.
vault = B.vaults.create(display_name="conf vault")
cred = B.vaults.credentials.create(vault.id, auth={
    "type": "environment_variable", "secret_name": "API_TOKEN", "secret_value": "s3cr3t-value-123",
    "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]}})
check("credential hides its value", "s3cr3t" not in json.dumps(cred.model_dump(mode="json")) and cred.auth.secret_name == "API_TOKEN")
check("credential listed", [x.id for x in B.vaults.credentials.list(vault.id)] == [cred.id])
with_vault = B.sessions.create(agent=agent.id, environment_id=env.id, vault_ids=[vault.id])
check("session names its vault", with_vault.vault_ids == [vault.id])

# The SDK's exception classes.
try:
    B.sessions.retrieve("sesn_missing")
    raise AssertionError("404 expected")
except anthropic.NotFoundError as e:
    check("404 NotFoundError", e.status_code == 404 and e.body["error"]["type"] == "not_found_error")
m = B.agents.create(
    name="mcp", model="m",
    mcp_servers=[{"type": "url", "name": "docs", "url": "https://mcp.example.com/mcp"}],
    tools=[{"type": "mcp_toolset", "mcp_server_name": "docs",
            "configs": [{"name": "lookup", "permission_policy": {"type": "always_allow"}}]}],
)
check("agent with an MCP server", m.mcp_servers[0].name == "docs" and m.tools[0].type == "mcp_toolset"
      and m.tools[0].configs[0].permission_policy.type == "always_allow")
try:
    B.agents.create(name="x", model="m", tools=[{"type": "mcp_toolset", "mcp_server_name": "x"}])
    raise AssertionError("400 expected")
except anthropic.BadRequestError as e:
    check("400 BadRequestError", "mcp_toolset" in str(e))
try:
    B.agents.update(agent.id, version=1, description="stale")
    raise AssertionError("409 expected")
except anthropic.ConflictError as e:
    check("409 ConflictError", e.status_code == 409)
try:
    anthropic.Anthropic(base_url=base, api_key="herd_sk_wrong", max_retries=0).beta.agents.list()
    raise AssertionError("401 expected")
except anthropic.AuthenticationError as e:
    check("401 AuthenticationError", e.status_code == 401 and e.response.headers.get("request-id"))
try:
    B.environments.retrieve("env_missing")
    raise AssertionError("404 expected")
except anthropic.NotFoundError as e:
    check("environment_not_found", e.body["error"]["details"]["error_code"] == "environment_not_found")

# Archive and delete.
archived = B.sessions.archive(with_vault.id)
check("archived", archived.archived_at is not None and archived.status == "terminated")
check("deleted", B.sessions.delete(with_vault.id).type == "session_deleted")
try:
    B.sessions.retrieve(with_vault.id)
    raise AssertionError("deleted session still there")
except anthropic.NotFoundError:
    check("deleted is gone", True)
check("vault credential deleted", B.vaults.credentials.delete(cred.id, vault_id=vault.id).type == "vault_credential_deleted")
check("vault deleted", B.vaults.delete(vault.id).type == "vault_deleted")
check("environment deleted", B.environments.delete(env.id).type == "environment_deleted")
check("agent archived", B.agents.archive(agent.id).archived_at is not None)
check("sessions listed", session.id in [x.id for x in B.sessions.list()])
paged = [x.id for x in B.sessions.list(limit=1, include_archived=True)]
check("sessions paged one by one", len(paged) == len(set(paged)) >= 1 and session.id in paged, paged)

print(json.dumps({"session": session.id, "agent": agent.id, "checks": checks}))
sys.stdout.flush()
