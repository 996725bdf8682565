"""The run engine: turning a validated request into a supervised CLI run.

Which session a turn continues (the planner), the run and its followers, the manager that
starts runs and keeps storage in step, replay of stored runs, workspaces, start-up recovery and
housekeeping. It uses ``claude`` and ``storage`` below it and never imports Litestar.
"""
