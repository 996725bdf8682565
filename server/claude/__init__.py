"""Everything about the Claude Code CLI itself: its command line and environment, starting
and stopping its processes, splitting and reading its stdout lines, finding the executable,
where it keeps transcripts, and what a session's own config directory starts with. Nothing
here knows about HTTP or the database.
"""
