"""lightvmd: the daemon that keeps prepared VM shells and serves the API.

server (lock, socket, threads), operations (the API's ops), api (the protocol),
shells (the one refilling shell pool) with its two flavours pool (create shells, what
each is for in flavour, their execute in execute) and restore_pool (``-incoming defer``
shells), ssh_sessions (kept SSH connections).
"""
