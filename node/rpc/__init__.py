"""JSON-RPC 2.0 control socket: method declaration (methods.py) and the server (server.py)."""
