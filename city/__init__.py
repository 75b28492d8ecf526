"""The city's side of the wire: `edge-node ingest`, `export` and `serve` on one database, and
what the stored readings mean (indices).

Never imported by the daemon (tests/test_layering.py): a node does not carry psycopg or aiohttp.
"""
