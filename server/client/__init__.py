"""The terminal client: ``claude-relay ask``, ``watch``, ``approve``, ``top`` and the rest.

It talks to a relay over HTTP only (httpx; Textual for ``top``) and imports nothing of the
server, so it works against any relay it can reach, local or not.
"""
