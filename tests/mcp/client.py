"""A real MCP client (the official Python SDK, Streamable HTTP) for ztag's
end-to-end tests: `python3 client.py URL TOKEN STEP...`; each step prints
one JSON line: `list` (tool names), `call:NAME:JSON_ARGS` (the result or the
error), so the Rust test can assert on what a real client saw.
"""

import asyncio
import json
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def main(url: str, token: str, steps: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token != "-" else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as c:
            print(json.dumps({"step": "initialize", "server": c.server_info.name if c.server_info else None}), flush=True)
            for step in steps:
                if step == "list":
                    r = await c.list_tools()
                    print(json.dumps({"step": step, "tools": sorted(t.name for t in r.tools)}), flush=True)
                elif step.startswith("call:"):
                    _, name, args = step.split(":", 2)
                    try:
                        r = await c.call_tool(name, json.loads(args))
                        text = "".join(getattr(x, "text", "") for x in r.content)
                        print(json.dumps({"step": step, "ok": not r.is_error, "text": text}), flush=True)
                    except MCPError as e:
                        print(json.dumps({"step": step, "error": {"code": e.error.code, "message": e.error.message}}), flush=True)
                else:
                    raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
