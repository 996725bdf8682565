"""``/api/sessions/{id}/files``: upload, list, download, ranges, archives, delete, caps, the
409 while a run holds the session, and paths sent raw on the wire to get out of the workspace.

The relay runs in this process with the scripted fake CLI; each test gets a session by
running once (the fake makes no files, so the workspace starts empty). Traversal attempts are
sent as raw request targets (``httpx`` would otherwise normalise ``..`` away), and after each
the file outside is checked: same bytes, nothing new beside it.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RelayFactory
from tests.support import Relay, cancel, open_stream, scripted

MISSING = "6b8f1f8e-2b0a-4c61-8d7e-0c3b7c1f9a11"
SECRET = b"the relay's own secret\n"


@pytest.fixture
def relay(relay_factory: RelayFactory, fake_cli: Path) -> Relay:
    return relay_factory(
        claude_bin=fake_cli,
        env={
            "CLAUDE_RELAY_INTERRUPT_GRACE": "1",
            "CLAUDE_RELAY_MAX_UPLOAD_BYTES": "10000",
            "CLAUDE_RELAY_MAX_WORKSPACE_BYTES": "25000",
        },
    )


@pytest.fixture
def session(relay: Relay) -> str:
    session_id: str = relay.run(scripted(lines=1)).headers["x-session-id"]
    return session_id


@pytest.fixture
def outside(relay: Relay) -> Path:
    """A file beside the workspaces (in the relay's own folder) that no request may reach."""
    folder = relay.workspaces.parent / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder


def untouched(outside: Path) -> bool:
    return [p.name for p in outside.iterdir()] == ["secret.txt"] and (
        outside / "secret.txt"
    ).read_bytes() == SECRET


def workspace_of(relay: Relay, session: str) -> Path:
    with relay.client() as client:
        return Path(client.get(f"/api/sessions/{session}").json()["workspace"])


def call(relay: Relay, method: str, path: str, **kw: Any) -> httpx.Response:
    with relay.client() as client:
        return client.request(method, path, **kw)


def files_url(session: str, path: str = "") -> str:
    return f"/api/sessions/{session}/files" + (f"/{path}" if path else "")


def put(relay: Relay, session: str, path: str, data: bytes) -> httpx.Response:
    return call(relay, "PUT", files_url(session, path), content=data)


def raw_request(relay: Relay, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``target`` exactly as given on the request line; (status, body)."""
    host, port = relay.url.removeprefix("http://").split(":")
    head = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in relay.headers().items()]
    head.append(f"Content-Length: {len(body)}")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# -- writing -----------------------------------------------------------------------------------


def test_put_writes_the_raw_body_and_says_what_it_wrote(relay: Relay, session: str) -> None:
    data = bytes(range(256)) * 30
    response = put(relay, session, "src/data.bin", data)
    assert response.status_code == 201, response.text
    assert response.json() == {"files": [{"path": "src/data.bin", "size": len(data)}]}
    assert (workspace_of(relay, session) / "src" / "data.bin").read_bytes() == data
    again = put(relay, session, "./src/data.bin", b"new")
    assert again.json() == {"files": [{"path": "src/data.bin", "size": 3}]}
    assert call(relay, "GET", files_url(session, "src/data.bin")).content == b"new"


def test_post_writes_several_files_into_a_folder(relay: Relay, session: str) -> None:
    response = call(
        relay,
        "POST",
        files_url(session),
        data={"dir": "inbox/today"},
        files=[
            ("file", ("a.txt", b"alpha", "text/plain")),
            ("file", ("nested/b.bin", b"\x00\x01beta", "application/octet-stream")),
        ],
    )
    assert response.status_code == 201, response.text
    assert response.json() == {
        "files": [
            {"path": "inbox/today/a.txt", "size": 5},
            {"path": "inbox/today/nested/b.bin", "size": 6},
        ]
    }
    workspace = workspace_of(relay, session)
    assert (workspace / "inbox" / "today" / "a.txt").read_bytes() == b"alpha"
    assert (workspace / "inbox" / "today" / "nested" / "b.bin").read_bytes() == b"\x00\x01beta"
    plain = call(relay, "POST", files_url(session), files=[("f", ("top.txt", b"top"))])
    assert plain.json() == {"files": [{"path": "top.txt", "size": 3}]}


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"content": b"not a form", "headers": {"Content-Type": "text/plain"}}, "multipart"),
        ({"data": {"dir": "x"}, "files": []}, "multipart"),  # no file at all: urlencoded
        ({"data": {"other": "x"}, "files": [("f", ("a", b"a"))]}, "unknown form field"),
        ({"data": {"dir": "../up"}, "files": [("f", ("a", b"a"))]}, "`..`"),
        ({"files": [("f", ("../a", b"a"))]}, "`..`"),
        ({"files": [("f", ("/etc/passwd", b"a"))]}, "absolute"),
        (
            {
                "content": b'--b\r\nContent-Disposition: form-data; name="f"; filename="x"'
                b"\r\n\r\ntruncated",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            "not valid multipart",
        ),
    ],
)
def test_post_refuses_bad_forms(relay: Relay, session: str, kw: dict[str, Any], why: str) -> None:
    response = call(relay, "POST", files_url(session), **kw)
    assert response.status_code == 400, response.text
    assert why in response.json()["error"]
    assert not any(workspace_of(relay, session).iterdir())


def test_a_dir_field_after_the_files_is_refused(relay: Relay, session: str) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\nA\r\n'
        b'--b\r\nContent-Disposition: form-data; name="dir"\r\n\r\nsub\r\n--b--\r\n'
    )
    response = call(
        relay,
        "POST",
        files_url(session),
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400 and "before the files" in response.json()["error"]


def test_uploads_over_the_caps_are_413_and_leave_nothing(relay: Relay, session: str) -> None:
    workspace = workspace_of(relay, session)
    too_big = put(relay, session, "big/file.bin", b"x" * 10001)
    assert too_big.status_code == 413 and "file cap of 10000" in too_big.json()["error"]

    def streamed() -> Any:  # no Content-Length: the cap is met while the bytes arrive
        yield b"x" * 6000
        yield b"x" * 6000

    chunked = call(relay, "PUT", files_url(session, "big/chunked.bin"), content=streamed())
    assert chunked.status_code == 413, chunked.text
    assert not any(workspace.iterdir())
    form = call(relay, "POST", files_url(session), files=[("f", ("f.bin", b"x" * 10001))])
    assert form.status_code == 413
    assert not any(workspace.iterdir())
    # The workspace cap (25000) counts what is there.
    for name in ("a", "b"):
        assert put(relay, session, name, b"x" * 10000).status_code == 201
    over = call(
        relay,
        "POST",
        files_url(session),
        files=[("f", ("c", b"x" * 4000)), ("f", ("d", b"x" * 2000))],
    )
    assert over.status_code == 413
    message = over.json()["error"]
    assert "workspace cap of 25000 bytes (1000 left)" in message and "before it: c" in message
    assert sorted(p.name for p in workspace.iterdir()) == ["a", "b", "c"]


def test_writes_wait_for_the_run_to_end_reads_do_not(relay: Relay, session: str) -> None:
    assert put(relay, session, "before.txt", b"ok").status_code == 201
    busy = open_stream(relay, {**scripted(lines=1, hang=120), "session_id": session})
    run_id = busy.wait_started()
    refused = [
        put(relay, session, "during.txt", b"no"),
        call(relay, "POST", files_url(session), files=[("f", ("during.txt", b"no"))]),
        call(relay, "DELETE", files_url(session, "before.txt")),
    ]
    for response in refused:
        assert response.status_code == 409, response.text
        assert "is running" in response.json()["error"] and run_id in response.json()["error"]
    assert call(relay, "GET", files_url(session, "before.txt")).content == b"ok"
    assert call(relay, "GET", files_url(session)).status_code == 200
    cancel(relay, run_id)
    busy.result()
    assert put(relay, session, "after.txt", b"ok").status_code == 201
    assert not (workspace_of(relay, session) / "during.txt").exists()


def test_unknown_sessions_are_404_and_malformed_ids_400(relay: Relay) -> None:
    for method, path in [
        ("GET", files_url(MISSING)),
        ("GET", files_url(MISSING, "a.txt")),
        ("PUT", files_url(MISSING, "a.txt")),
        ("DELETE", files_url(MISSING, "a.txt")),
        ("POST", files_url(MISSING)),
    ]:
        response = call(relay, method, path, content=b"x")
        assert response.status_code == 404, (method, path, response.text)
        assert "unknown session" in response.json()["error"]
    malformed = call(relay, "GET", files_url("not-a-uuid"))
    assert malformed.status_code == 400 and "not a session id" in malformed.json()["error"]


def test_a_broken_workspace_is_409(relay: Relay, session: str, outside: Path) -> None:
    workspace = workspace_of(relay, session)
    workspace.rmdir()
    workspace.symlink_to(outside)
    for method, path in [
        ("GET", files_url(session)),
        ("GET", files_url(session, "secret.txt")),
        ("PUT", files_url(session, "secret.txt")),
        ("DELETE", files_url(session, "secret.txt")),
    ]:
        response = call(relay, method, path, content=b"pwned")
        assert response.status_code == 409, response.text
        assert "symbolic link" in response.json()["error"]
    assert untouched(outside)


# -- reading -----------------------------------------------------------------------------------


def test_list_shows_paths_sizes_times_and_hashes_on_request(
    relay: Relay, session: str, outside: Path
) -> None:
    put(relay, session, "src/main.py", b"print(1)\n")
    put(relay, session, "notes.md", b"# hi\n")
    (workspace_of(relay, session) / "src" / "escape").symlink_to(outside)
    listed = call(relay, "GET", files_url(session)).json()
    assert listed["truncated"] is False
    assert [(f["path"], f["type"], f["size"]) for f in listed["files"]] == [
        ("notes.md", "file", 5),
        ("src", "dir", None),
        ("src/escape", "symlink", None),
        ("src/main.py", "file", 9),
    ]
    assert all(f["mtime"].endswith("Z") and "sha256" not in f for f in listed["files"])
    hashed = call(relay, "GET", files_url(session), params={"sha256": "true", "under": "src"})
    assert [(f["path"], f.get("sha256")) for f in hashed.json()["files"]] == [
        ("src/escape", None),
        ("src/main.py", hashlib.sha256(b"print(1)\n").hexdigest()),
    ]
    missing = call(relay, "GET", files_url(session), params={"under": "nope"})
    assert missing.status_code == 404
    linked = call(relay, "GET", files_url(session), params={"under": "src/escape"})
    assert linked.status_code == 400 and "symbolic link" in linked.json()["error"]


def test_download_is_byte_exact_with_a_content_type(relay: Relay, session: str) -> None:
    data = bytes(range(256)) * 39
    put(relay, session, "data.bin", data)
    put(relay, session, "page.html", b"<p>hi</p>")
    put(relay, session, "notes.txt", b"plain")
    response = call(relay, "GET", files_url(session, "data.bin"))
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["x-content-type-options"] == "nosniff"
    assert (
        call(relay, "GET", files_url(session, "notes.txt"))
        .headers["content-type"]
        .startswith("text/plain")
    )
    html = call(relay, "GET", files_url(session, "page.html"))
    assert html.headers["content-type"].startswith("text/html")
    assert html.headers["content-disposition"].startswith("attachment")
    assert call(relay, "GET", files_url(session, "nope.txt")).status_code == 404


def test_ranges_are_206_and_unsatisfiable_ones_416(relay: Relay, session: str) -> None:
    data = bytes(range(100))
    put(relay, session, "r.bin", data)
    url = files_url(session, "r.bin")
    for header, start, end in [
        ("bytes=10-19", 10, 20),
        ("bytes=90-", 90, 100),
        ("bytes=-5", 95, 100),
    ]:
        response = call(relay, "GET", url, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == data[start:end]
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/100"
    several = call(relay, "GET", url, headers={"Range": "bytes=0-1,5-6"})
    assert several.status_code == 200 and several.content == data
    unsatisfiable = call(relay, "GET", url, headers={"Range": "bytes=100-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == "bytes */100"
    assert "range" in unsatisfiable.json()["error"]


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_archives_of_the_workspace_or_a_folder(
    relay: Relay, session: str, outside: Path, fmt: str
) -> None:
    put(relay, session, "src/a.txt", b"alpha")
    put(relay, session, "src/deep/b.bin", bytes(range(256)))
    put(relay, session, "top.txt", b"top")
    (workspace_of(relay, session) / "src" / "escape").symlink_to(outside / "secret.txt")
    response = call(relay, "GET", files_url(session), params={"archive": fmt})
    assert response.status_code == 200
    assert (
        response.headers["content-type"]
        == {"tar.gz": "application/gzip", "zip": "application/zip"}[fmt]
    )
    assert f'filename="workspace.{fmt}"' in response.headers["content-disposition"]
    expected = {"src/a.txt": b"alpha", "src/deep/b.bin": bytes(range(256)), "top.txt": b"top"}
    assert regular_files(response.content, fmt) == expected
    part = call(relay, "GET", files_url(session), params={"archive": fmt, "under": "src/deep"})
    assert regular_files(part.content, fmt) == {"src/deep/b.bin": bytes(range(256))}
    assert 'filename="deep.' in part.headers["content-disposition"]


def regular_files(data: bytes, fmt: str) -> dict[str, bytes]:
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        found = {}
        for member in tar.getmembers():
            assert member.isfile() or member.isdir(), member.name  # no link in it
            extracted = tar.extractfile(member)
            if member.isfile() and extracted is not None:
                found[member.name] = extracted.read()
        return found


# -- removing ----------------------------------------------------------------------------------


def test_delete_removes_files_links_and_empty_folders(
    relay: Relay, session: str, outside: Path
) -> None:
    put(relay, session, "d/f.txt", b"x")
    (workspace_of(relay, session) / "link").symlink_to(outside / "secret.txt")
    full = call(relay, "DELETE", files_url(session, "d"))
    assert full.status_code == 400 and "not empty" in full.json()["error"]
    assert call(relay, "DELETE", files_url(session, "d/f.txt")).json() == {
        "deleted": "d/f.txt",
        "type": "file",
    }
    assert call(relay, "DELETE", files_url(session, "d")).json()["type"] == "dir"
    assert call(relay, "DELETE", files_url(session, "link")).json()["type"] == "symlink"
    assert call(relay, "DELETE", files_url(session, "link")).status_code == 404
    assert not any(workspace_of(relay, session).iterdir())
    assert untouched(outside)


# -- paths on the wire -------------------------------------------------------------------------


TRAVERSALS = [
    "..%2f..%2f..%2foutside%2fsecret.txt",
    "..%2F..%2F..%2Foutside%2Fsecret.txt",
    "%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2foutside%2fsecret.txt",
    "..%5c..%5c..%5coutside%5csecret.txt",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "a//b",
    "a%00b",
    "a%0ab",
    "sub%2f..%2f..%2f..%2f..%2foutside%2fsecret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_paths_that_leave_the_workspace_are_refused_on_the_wire(
    relay: Relay, session: str, outside: Path, target: str
) -> None:
    url = f"/api/sessions/{session}/files/{target}"
    for method in ("GET", "PUT", "DELETE"):
        status, body = raw_request(relay, method, url, b"pwned")
        assert status == 400, (method, target, body)
        assert b'"error"' in body
    assert untouched(outside)
    assert not any(workspace_of(relay, session).iterdir())
    under = call(relay, "GET", files_url(session), params={"under": "../../outside"})
    assert under.status_code == 400


def test_a_planted_link_in_the_path_is_refused_and_nothing_outside_changes(
    relay: Relay, session: str, outside: Path
) -> None:
    workspace = workspace_of(relay, session)
    (workspace / "sub").symlink_to(outside)
    (workspace / "file.txt").symlink_to(outside / "secret.txt")
    for method, path in [
        ("GET", "sub/secret.txt"),
        ("PUT", "sub/secret.txt"),
        ("PUT", "sub/new.txt"),
        ("DELETE", "sub/secret.txt"),
        ("GET", "file.txt"),
        ("PUT", "file.txt"),
    ]:
        response = call(relay, method, files_url(session, path), content=b"pwned")
        assert response.status_code == 400, (method, path, response.text)
        assert "symbolic link" in response.json()["error"]
    form = call(relay, "POST", files_url(session), data={"dir": "sub"}, files=[("f", ("x", b"p"))])
    assert form.status_code == 400
    assert untouched(outside)
