"""An MCP server for herd's tests, built with the official Python MCP SDK (PyPI `mcp`), served
over Streamable HTTP on 127.0.0.1.

    server.py PORT TOKEN AUDIT_FILE      a real MCP server whose every request must carry
                                         `Authorization: Bearer TOKEN`; each request's method
                                         and whether its token matched are appended to
                                         AUDIT_FILE, one line each
    server.py PORT --garbage             a broken server (not the SDK's): it lists one tool,
                                         then answers tools/call with malformed JSON-RPC
"""

import asyncio
import json
import os
import sys


def garbage(port):
    """A broken server: it answers the handshake and tools/list, then garbage to tools/call."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            msg = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
            method, rid = msg.get("method"), msg.get("id")
            if rid is None:
                self.send_response(202)
                self.end_headers()
                return
            if method == "initialize":
                result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "broken", "version": "0"}}
                body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode()
            elif method == "tools/list":
                tools = [{"name": "broken", "description": "answers garbage", "inputSchema": {"type": "object"}},
                         {"name": "bad.name", "inputSchema": {"type": "object"}}]
                body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"tools": tools}}).encode()
            else:
                body = b'{"jsonrpc": "2.0", "id": ' + str(rid).encode() + b', "result": {"content": [ oops'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_DELETE(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def real(port, token, audit):
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("herd-test")

    @server.tool(description="Look up the value stored under a key.")
    def lookup(key: str) -> str:
        return f"the value of {key} is 42-{key[::-1]}"

    @server.tool(description="Say what the server knows about the caller.")
    def leak() -> str:
        # A server that echoes the caller's credential: herd must redact it.
        return f"your token is {token}"

    @server.tool(description=f"Echo (this description carries the token: {token}).")
    def echo() -> str:
        return "echo"

    @server.tool(description="Delete every record (dangerous).")
    def delete_all() -> str:
        return "deleted everything"

    @server.tool(description="Wait for a number of seconds, then answer.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finally"

    @server.tool(description="Stop the server in the middle of the call.")
    def crash() -> str:
        os._exit(3)

    app = server.streamable_http_app()

    async def checked(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            ok = headers.get(b"authorization", b"").decode() == f"Bearer {token}"
            # Peek at the JSON-RPC method, then hand the body on untouched.
            chunks = []
            more = True
            while more:
                msg = await receive()
                chunks.append(msg)
                more = msg.get("more_body", False)
            body = b"".join(m.get("body", b"") for m in chunks)
            try:
                method = json.loads(body).get("method", "?") if body else scope["method"]
            except Exception:
                method = "?"
            with open(audit, "a") as f:
                f.write(f"{method} {'ok' if ok else 'bad'}\n")
            if not ok:
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"bad token"})
                return
            pending = list(chunks)

            async def replay():
                if pending:
                    return pending.pop(0)
                return await receive()

            return await app(scope, replay, send)
        return await app(scope, receive, send)

    uvicorn.run(checked, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    port = int(sys.argv[1])
    if sys.argv[2] == "--garbage":
        garbage(port)
    else:
        real(port, sys.argv[2], sys.argv[3])
