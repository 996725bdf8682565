"""Everything about the Claude Code CLI itself: its command line and environment, starting
and stopping its processes, splitting and reading its stdout lines, finding the executable,
and where it keeps transcripts. Nothing here knows about HTTP or the database.
"""
