"""``claude-relay top``: every session of a relay, live, in the terminal (Textual).

The table lists each session with its activity and cost, refreshed every second. The
selected session's runs stream into the log below it, and what it waits for is shown above
the log. Keys: ``a`` approve (or answer a question, or approve a plan), ``d`` deny, ``p``
send a prompt, ``i`` interrupt the running turn, ``q`` quit. The terminal bell rings when a
session starts waiting for input.

Everything the model wrote is shown as :class:`rich.text.Text` built from cleaned strings,
never parsed as markup: a model that writes ``[red]`` or ``[@click=quit]`` shows exactly that.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static

from server.client import activity, answers, text
from server.client.http import RelayClient, RelayError, SseParser, check

REFRESH_SECONDS = 1.0
COLUMNS = ("session", "activity", "cost", "runs", "title")
STYLES = {
    "working": "yellow",
    "awaiting_approval": "bold magenta",
    "awaiting_answer": "bold magenta",
    "plan_ready": "bold magenta",
    "failed": "red",
    "idle": "dim",
}


@dataclass
class Row:
    """What the dashboard knows of one session."""

    session: dict[str, Any]
    activity: str
    pending: list[dict[str, Any]] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return str(self.session["session_id"])

    def cells(self) -> list[Text]:
        cost = self.session.get("total_cost_usd") or 0
        return [
            Text(self.session_id[:8]),
            Text(self.activity, style=STYLES.get(self.activity, "")),
            Text(f"${cost:.4f}", justify="right"),
            Text(str(self.session.get("runs") or 0), justify="right"),
            Text(text.short(self.session.get("title") or "", 60)),
        ]


def event_text(line: Any) -> Text | None:
    """One CLI line of a run as plain text for the log (None: nothing to show)."""
    if not isinstance(line, dict):
        return Text(text.clean(str(line)))
    kind, subtype = line.get("type"), line.get("subtype")
    if kind == "assistant":
        parts = [*text.assistant_texts(line), *(f"⏺ {t}" for t in text.tool_uses(line))]
        return Text("\n".join(parts)) if parts else None
    if kind == "result":
        cost = line.get("total_cost_usd")
        shown = f", ${cost:.4f}" if isinstance(cost, int | float) else ""
        return Text(f"[{subtype}{shown}]", style="dim")
    if kind == "relay" and subtype == "permission_request":
        return Text("\n".join(text.request_lines(line)), style="magenta")
    if kind == "relay" and subtype == "permission_resolved":
        return Text(f"permission {line.get('behavior')} by {line.get('by')}", style="dim")
    if kind == "relay" and subtype == "error":
        return Text(f"error: {text.clean(str(line.get('message')))}", style="red")
    return None


class Top(App[None]):
    """The dashboard; ``client`` is the relay to show."""

    TITLE = "claude-relay top"
    CSS = """
    #sessions { height: 40%; }
    #pending { height: auto; max-height: 12; padding: 0 1; background: $boost; }
    #prompt { display: none; }
    #prompt.open { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "approve", "approve/answer"),
        Binding("d", "deny", "deny"),
        Binding("p", "prompt", "prompt"),
        Binding("i", "interrupt", "interrupt"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, client: RelayClient, refresh_seconds: float = REFRESH_SECONDS) -> None:
        super().__init__()
        self.client = client
        self.refresh_seconds = refresh_seconds
        self.rows: dict[str, Row] = {}
        self.selected: str | None = None
        self.followed_run: str | None = None
        self.loaded = False
        self.bells = 0
        """How often the bell rang (a session started waiting)."""
        self.input_for: tuple[str, dict[str, Any] | None] | None = None
        """What the open input line is for: ``("prompt", None)`` or ``("answer", request)``."""

    def compose(self) -> ComposeResult:
        yield Header()
        table: DataTable[Text] = DataTable(id="sessions", cursor_type="row")
        yield table
        yield Static(Text(""), id="pending", markup=False)
        yield RichLog(id="stream", markup=False, wrap=True, highlight=False)
        yield Input(id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#sessions", DataTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        self.poll()
        self.set_interval(self.refresh_seconds, self.poll)
        self.listen()

    # -- the session table ---------------------------------------------------------------

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        try:
            page = self.client.get("/api/sessions", params={"limit": 100})
            rows = []
            for session in page.get("sessions", []):
                found = activity.describe(self.client, session)
                rows.append(Row(session, found["activity"], list(found.get("pending") or [])))
        except RelayError as exc:
            self.call_from_thread(self.notify, exc.message, severity="error")
            return
        self.call_from_thread(self.show_rows, rows)

    @work(exclusive=True, group="listen")
    async def listen(self) -> None:
        """The relay's feed (``GET /api/events``), where it has one: any entry (a run
        started or ended, an activity change, a request) refreshes the table at once
        instead of at the next tick. Without it the ticks alone keep the table current."""
        headers = dict(self.client.http.headers)
        timeout = httpx.Timeout(30, read=None)
        parser = SseParser()
        async with httpx.AsyncClient(base_url=self.client.url, headers=headers) as http:
            try:
                async with http.stream("GET", "/api/events", timeout=timeout) as got:
                    if got.status_code != 200:
                        return
                    last = 0.0
                    async for line in got.aiter_lines():
                        # A burst (a replayed history) refreshes once; the tick catches up.
                        if parser.feed(line) is not None and time.monotonic() - last > 0.2:
                            last = time.monotonic()
                            self.poll()
            except httpx.HTTPError:
                return

    def show_rows(self, rows: list[Row]) -> None:
        table = self.query_one("#sessions", DataTable)
        seen = set()
        for row in rows:
            seen.add(row.session_id)
            before = self.rows.get(row.session_id)
            if row.session_id in table.rows:
                for name, cell in zip(COLUMNS, row.cells(), strict=True):
                    table.update_cell(row.session_id, name, cell)
            else:
                table.add_row(*row.cells(), key=row.session_id)
            was_waiting = before is not None and before.activity in activity.WAITING
            if self.loaded and row.activity in activity.WAITING and not was_waiting:
                self.bells += 1
                self.bell()
            self.rows[row.session_id] = row
        for gone in [key for key in self.rows if key not in seen]:
            table.remove_row(gone)
            del self.rows[gone]
        self.loaded = True
        if self.selected is None and rows:
            self.select(rows[0].session_id)
        self.show_pending()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self.select(str(event.row_key.value))

    def select(self, session_id: str) -> None:
        if session_id == self.selected:
            return
        self.selected = session_id
        self.followed_run = None
        log = self.query_one("#stream", RichLog)
        log.clear()
        log.write(Text(f"session {session_id}", style="bold"))
        self.show_pending()
        self.follow(session_id)

    def show_pending(self) -> None:
        row = self.rows.get(self.selected or "")
        lines: list[str] = []
        for request in row.pending if row else []:
            lines += text.request_lines(request)
        if lines:
            lines.append("a: approve / answer   d: deny")
        self.query_one("#pending", Static).update(Text("\n".join(lines)))

    # -- following the selected session --------------------------------------------------

    @work(exclusive=True, group="follow")
    async def follow(self, session_id: str) -> None:
        """Each run of the session, as it comes (a session feed would do it in one stream;
        this works with every relay)."""
        headers = dict(self.client.http.headers)
        async with httpx.AsyncClient(base_url=self.client.url, headers=headers) as http:
            while self.selected == session_id:
                row = self.rows.get(session_id)
                run_id = row.session.get("active_run_id") if row else None
                if run_id and run_id != self.followed_run:
                    self.followed_run = run_id
                    await self.stream_run(http, run_id)
                else:
                    await asyncio.sleep(self.refresh_seconds / 2)

    async def stream_run(self, http: httpx.AsyncClient, run_id: str) -> None:
        log = self.query_one("#stream", RichLog)
        parser = SseParser()
        timeout = httpx.Timeout(30, read=None)
        try:
            async with http.stream("GET", f"/api/runs/{run_id}/events", timeout=timeout) as got:
                check(got)
                async for line in got.aiter_lines():
                    event = parser.feed(line)
                    shown = event_text(event.data) if event is not None else None
                    if shown is not None:
                        log.write(shown)
        except (httpx.HTTPError, RelayError) as exc:
            log.write(Text(f"(stream ended: {exc})", style="dim"))

    # -- acting on the selected session ----------------------------------------------------

    def _oldest_pending(self) -> dict[str, Any] | None:
        row = self.rows.get(self.selected or "")
        return row.pending[0] if row and row.pending else None

    def action_approve(self) -> None:
        request = self._oldest_pending()
        if request is None:
            self.notify("nothing waits here")
        elif request.get("tool_name") == "AskUserQuestion":
            count = len(answers.questions(request))
            self.open_input(
                ("answer", request),
                f"{count} answer(s), space-separated: option numbers (several: 1,3)",
            )
        else:
            self.decide(request, True)

    def action_deny(self) -> None:
        request = self._oldest_pending()
        if request is None:
            self.notify("nothing waits here")
        else:
            self.decide(request, False)

    @work(thread=True, group="act")
    def decide(self, request: dict[str, Any], allow: bool) -> None:
        run_id = self._run_of_selected()
        if run_id is None:
            return
        try:
            message = None if allow else "denied from claude-relay top"
            answers.decide(self.client, run_id, request["request_id"], allow, message)
        except RelayError as exc:
            self.call_from_thread(self.notify, exc.message, severity="error")
        self.call_from_thread(self.poll)

    def _run_of_selected(self) -> str | None:
        row = self.rows.get(self.selected or "")
        run_id = row.session.get("active_run_id") if row else None
        return str(run_id) if run_id else None

    def action_interrupt(self) -> None:
        self.interrupt()

    @work(thread=True, group="act")
    def interrupt(self) -> None:
        run_id = self._run_of_selected()
        if run_id is None:
            self.call_from_thread(self.notify, "no run is going here")
            return
        try:
            self.client.post(f"/api/runs/{run_id}/cancel", timeout=120)
        except RelayError as exc:
            self.call_from_thread(self.notify, exc.message, severity="error")

    def action_prompt(self) -> None:
        if self.selected is not None:
            self.open_input(("prompt", None), "a prompt for this session (Enter sends)")

    def open_input(self, purpose: tuple[str, dict[str, Any] | None], placeholder: str) -> None:
        self.input_for = purpose
        field_ = self.query_one("#prompt", Input)
        field_.placeholder = placeholder
        field_.value = ""
        field_.add_class("open")
        field_.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        field_ = self.query_one("#prompt", Input)
        field_.remove_class("open")
        self.query_one("#sessions", DataTable).focus()
        purpose, self.input_for = self.input_for, None
        if purpose is None or not event.value.strip():
            return
        kind, request = purpose
        if kind == "prompt":
            self.send_prompt(str(self.selected), event.value)
        elif request is not None:
            self.send_answers(request, event.value.split())

    @work(thread=True, group="act")
    def send_answers(self, request: dict[str, Any], picks: list[str]) -> None:
        run_id = self._run_of_selected()
        try:
            if run_id is None:
                raise ValueError("no run is going here")
            chosen = answers.build_answers(request, picks)
            answers.send_answers(self.client, run_id, request, chosen)
        except (ValueError, RelayError) as exc:
            self.call_from_thread(self.notify, str(exc), severity="error")
        self.call_from_thread(self.poll)

    @work(thread=True, group="act")
    def send_prompt(self, session_id: str, prompt: str) -> None:
        """A detached turn with approvals: it asks here, and goes on if top is left."""
        body = {"prompt": prompt, "session_id": session_id, "detach": True, "approvals": True}
        try:
            for _headers, _event in self.client.stream("POST", "/api/claude", json=body):
                break  # started; the follower shows it
        except RelayError as exc:
            self.call_from_thread(self.notify, exc.message, severity="error")
        self.call_from_thread(self.poll)
