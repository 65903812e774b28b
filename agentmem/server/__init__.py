"""`agentmem serve`: one warm process serving a `Memory` over REST, MCP and an OpenAI-compatible chat API.

Import `agentmem.server.app.create_app` (needs the `server` extra: fastapi, uvicorn, mcp, httpx).
"""
