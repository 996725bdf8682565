"""The relay's own HTTP API (Litestar): routers, Server-Sent Events, API keys, response
schemas, and the one place where domain errors become HTTP statuses.
"""
