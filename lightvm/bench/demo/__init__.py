"""The live-migration demo (scripts/demo-migrate.sh, docs/migration-demo.md): two namespace
"hosts" on one L2 segment (segment.py), a client asking a daytime VM the time every 10 ms
(client.py, shared with ``lightvm bench migrate``), and the run (migrate.py)."""
