"""Every event type herd's stream and list may carry, herd's own included (they are sent only
when named in `types[]`): what the console asks for, so the tests and the benchmark ask for
the same. The console's own copy is `TYPES` in src/gateway/console/console.js."""

TYPES = [
    "session.created", "user.message", "user.interrupt", "user.tool_confirmation",
    "user.custom_tool_result", "system.message", "agent.message", "agent.thinking",
    "agent.tool_use", "agent.tool_result", "agent.custom_tool_use", "agent.mcp_tool_use",
    "agent.mcp_tool_result", "session.mcp_tools_listed", "agent.thread_context_compacted",
    "session.status_running", "session.status_idle", "session.status_rescheduled",
    "session.status_terminated", "session.error", "session.usage", "session.limit_reached",
    "session.updated", "span.model_request_start", "span.model_request_end",
    "sandbox.provisioned", "sandbox.lost", "sandbox.workspace_saved", "sandbox.workspace_restored",
    "session.forked", "session.schedule_set", "session.schedule_cancelled", "session.schedule_fired",
]
