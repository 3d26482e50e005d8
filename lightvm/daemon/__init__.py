"""lightvmd: the daemon that keeps prepared VM shells and serves the API (server, api, pools, SSH sessions)."""
