"""Small MCP servers the MCP proxy tests aggregate (run as separate processes)."""
