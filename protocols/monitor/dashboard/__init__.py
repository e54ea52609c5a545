"""The monitor's web dashboard: read-only pages served on the monitor's 127.0.0.1 HTTP port.

`cookie.py` keeps the access token (a 0600 file in the data dir, new at every start),
`access.py` says which RPC methods the pages may call, `query.py` parses query strings
strictly, `assets.py` serves the HTML/CSS/JS files of `static/`, and `app.py` ties them into
one request handler for `protocols/monitor/http.py`. The live figures the node page polls
(`monitor.figures`) come from the monitor's core (core.py), which samples the registry.
"""
