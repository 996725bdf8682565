"""Git, run by the relay on untrusted input: registered project repositories and session clones.

A layer beside ``server.claude`` and ``server.storage``: it imports only ``server.config`` and
``server.errors``. Every git process starts in :mod:`server.git.runner`, which gives it no
system or user configuration, no terminal, no inherited ``GIT_*`` variable, hooks and fsmonitor
off and ``ext::`` refused.

* :mod:`server.git.refs`: refs and branch names from clients, refused before git sees them.
* :mod:`server.git.repository`: an operator's registered repository; object and ref operations
  only (never its work tree, index or hooks).
* :mod:`server.git.clones`: a session's workspace as a clone of its own, sharing objects
  through a relay-owned store.
* :mod:`server.git.include`: ``.worktreeinclude`` files copied from the operator's checkout.
* :mod:`server.git.review`: everything that reads a session's clone (diff, stat, format-patch,
  the commit and the bundle of a publish), each inside that session's sandbox.
"""
