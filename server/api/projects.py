"""``GET /api/projects``: the registered projects the caller may work on.

Each with its default branch and that branch's commit now, and what its sessions may do
(publish, push); never its path on the relay's host. A project the caller's key may not use
is not listed (and is unknown, 404, wherever it is named).
"""

from __future__ import annotations

import logging

from litestar import Router, get

from server.api.dependencies import CallerDep, RuntimeDep
from server.api.errors import documented_errors
from server.api.schemas import ErrorBody, ProjectList, ProjectOut
from server.engine.project_sessions import describe
from server.errors import Refused

log = logging.getLogger(__name__)


@get("/", summary="The projects you may work on", responses=documented_errors(ErrorBody, 401))
async def list_projects(runtime: RuntimeDep, caller: CallerDep) -> ProjectList:
    found: list[ProjectOut] = []
    for project in runtime.projects().visible(caller):
        branch = head = error = None
        try:
            branch, head = await describe(project)
        except Refused as exc:
            error = exc.message
        found.append(
            ProjectOut(
                name=project.name,
                default_branch=branch,
                head_commit=head,
                trusted=project.trusted,
                publish=project.publish,
                push=project.push_remotes,
                error=error,
            )
        )
    return ProjectList(projects=found)


router = Router("/api/projects", route_handlers=[list_projects], tags=["projects"])
