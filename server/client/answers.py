"""Answering a run's permission requests: allow or deny a tool, answer an
``AskUserQuestion``, approve an ``ExitPlanMode`` plan."""

from __future__ import annotations

from typing import Any

from server.client.http import RelayClient, RelayError


def answer_path(run_id: str, request_id: str) -> str:
    return f"/api/runs/{run_id}/permissions/{request_id}"


def decide(
    client: RelayClient,
    run_id: str,
    request_id: str,
    allow: bool,
    message: str | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """Allow or deny one request; ``mode`` approves a plan and switches the session to it."""
    body: dict[str, Any] = {"behavior": "allow" if allow else "deny"}
    if message:
        body["message"] = message
    if mode:
        body["mode"] = mode
    return dict(client.post(answer_path(run_id, request_id), json=body))


def send_answers(
    client: RelayClient, run_id: str, request: dict[str, Any], answers: dict[str, Any]
) -> dict[str, Any]:
    """Answer a question: ``{"answers": …}``, which the relay checks against what was asked.

    A relay from before that field refuses it as unknown; then the same answers go the way
    the CLI itself takes them, as an allow whose input carries them."""
    path = answer_path(run_id, str(request["request_id"]))
    try:
        return dict(client.post(path, json={"answers": answers}))
    except RelayError as exc:
        if not (exc.status == 400 and "unknown field" in exc.message and "answers" in exc.message):
            raise
    updated = {**(request.get("input") or {}), "answers": answers}
    return dict(client.post(path, json={"behavior": "allow", "updated_input": updated}))


def choose(question: dict[str, Any], picks: str) -> str | list[str]:
    """A person's or a script's pick for one question: option numbers (``2``, ``1,3``) or
    labels (``Yes``); a multi-select question takes several, comma-separated."""
    labels = [
        str(option.get("label"))
        for option in question.get("options") or []
        if isinstance(option, dict)
    ]
    chosen: list[str] = []
    parts = [p.strip() for p in picks.split(",")] if question.get("multiSelect") else [picks]
    for part in parts:
        text = part.strip()
        if text.isdigit() and 1 <= int(text) <= len(labels):
            chosen.append(labels[int(text) - 1])
        elif text in labels:
            chosen.append(text)
        else:
            listed = ", ".join(f"{n}) {label}" for n, label in enumerate(labels, 1))
            raise ValueError(f"{text!r} is none of the options: {listed}")
    return chosen if question.get("multiSelect") else chosen[0]


def questions(request: dict[str, Any]) -> list[dict[str, Any]]:
    given = request.get("input") or {}
    found = given.get("questions") if isinstance(given, dict) else None
    return [q for q in found or [] if isinstance(q, dict)]


def build_answers(request: dict[str, Any], picks: list[str]) -> dict[str, Any]:
    """``{"<question text>": label | [labels]}`` from one pick per question, in order."""
    asked = questions(request)
    if len(picks) != len(asked):
        raise ValueError(f"the model asked {len(asked)} question(s); give one answer for each")
    return {str(q.get("question")): choose(q, pick) for q, pick in zip(asked, picks, strict=True)}
