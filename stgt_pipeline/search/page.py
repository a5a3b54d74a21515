"""`stgt serve`: a small search page over a video index, on loopback.

GET /                    the page: a query box; with ?q=... the hits as thumbnails with rank, score, id, duration
GET /api/search?q=&top=  the hits as JSON
GET /thumb/<video_id>    a hit's JPEG thumbnail
GET /video/<video_id>    the clip itself, with HTTP Range support so that <video> can play and seek

Only what the index lists is ever served: a URL names a video by its id, looked up in the index's table; no part
of a URL becomes a filesystem path. The page is one inline HTML document (no external assets, nothing fetched from
the network) with a Content-Security-Policy that allows nothing else. Clicking a hit plays the clip in a
<video controls autoplay> player; without JavaScript the link opens the clip itself.

The server needs only an object with `.search(query, top) -> list[Hit]` and `.index` (a VideoIndex: `.videos`
DataFrame with video_id, path, duration_s, thumbnail; `.folder`), i.e. stgt_pipeline.search.index.Searcher.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import html
import json
import mimetypes
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

from stgt_pipeline.errors import StgtError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_INDEX = "data/index"
DEFAULT_TOP = 10
MAX_TOP = 100
MAX_QUERY_CHARS = 1000
CHUNK = 1 << 20  # bytes per write when streaming a clip

VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
               ".mov": "video/quicktime", ".avi": "video/x-msvideo", ".ogv": "video/ogg", ".mpg": "video/mpeg",
               ".mpeg": "video/mpeg", ".gif": "image/gif"}


class SearcherLike(Protocol):
    index: Any

    def search(self, query: str, top: int = ...) -> list[Any]: ...


# --------------------------------------------------------------------------------------------------------------
# the page

STYLE = """
body{font:15px system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{padding:12px 20px;background:#233;color:#fff}header h1{font-size:18px;margin:0 0 8px}
form{display:flex;gap:8px}#q{flex:1;font-size:16px;padding:6px 8px}button{font-size:16px;padding:6px 14px}
main{display:flex;gap:20px;padding:16px 20px;align-items:flex-start}
#results{list-style:none;margin:0;padding:0;display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));
gap:12px;flex:1}
#results a{display:block;background:#fff;border:1px solid #ccc;border-radius:6px;padding:6px;color:inherit;
text-decoration:none}#results a:hover,#results a.playing{border-color:#36c;box-shadow:0 0 0 2px #36c4}
.thumb{width:100%;aspect-ratio:4/3;object-fit:cover;background:#ccc;display:block}
.meta{font-size:13px;margin-top:4px;display:flex;justify-content:space-between;gap:4px}
.vid{font-family:monospace;font-size:12px;word-break:break-all}.score{font-weight:600}
#player{width:480px;position:sticky;top:16px}#player video{width:100%;background:#000}
.msg{padding:8px 20px;color:#555}.err{color:#a00}
"""

SCRIPT = """
document.getElementById('results').addEventListener('click', function (ev) {
  var a = ev.target.closest('a[data-video]');
  if (!a) return;
  ev.preventDefault();
  document.querySelectorAll('#results a.playing').forEach(function (e) { e.classList.remove('playing'); });
  a.classList.add('playing');
  var box = document.getElementById('player');
  box.textContent = '';
  var v = document.createElement('video');
  v.id = 'clip'; v.controls = true; v.autoplay = true; v.muted = true; v.loop = true; v.playsInline = true;
  v.src = a.getAttribute('href');
  var cap = document.createElement('p');
  cap.className = 'vid'; cap.textContent = a.dataset.video;
  box.appendChild(v); box.appendChild(cap);
});
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Nothing but this server: the page's own inline style and script (by hash), its thumbnails and clips.
CSP = ("default-src 'none'; img-src 'self'; media-src 'self'; connect-src 'self'; "
       f"style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # None or NaN
        return "?"
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _hit_url(kind: str, video_id: str) -> str:
    return f"/{kind}/{quote(video_id, safe='')}"


def render_page(title: str, query: str = "", hits: list[dict] | None = None, message: str = "",
                error: bool = False) -> str:
    e = html.escape
    items = []
    for h in hits or []:
        thumb = (f'<img class="thumb" src="{e(h["thumb"])}" alt="" loading="lazy">' if h["thumb"]
                 else '<div class="thumb"></div>')
        items.append(
            f'<li><a href="{e(h["video"])}" data-video="{e(h["video_id"])}" data-rank="{h["rank"]}">{thumb}'
            f'<div class="meta"><span class="rank">#{h["rank"]}</span><span class="score">{h["score"]:.3f}</span>'
            f'<span class="dur">{e(_duration(h["duration_s"]))}</span></div>'
            f'<div class="vid">{e(h["video_id"])}</div></a></li>')
    msg = f'<p class="msg{" err" if error else ""}" id="msg">{e(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(title)}</title><style>{STYLE}</style></head>
<body><header><h1>{e(title)}</h1>
<form method="get" action="/" role="search"><input id="q" name="q" type="search" value="{e(query)}"
 placeholder="describe the clip, e.g. a red circle moves from left to right" autofocus required
 maxlength="{MAX_QUERY_CHARS}"><button type="submit" id="go">Search</button></form></header>
{msg}<main><ol id="results">{''.join(items)}</ol><section id="player" aria-live="polite"></section></main>
<script>{SCRIPT}</script></body></html>
"""


# --------------------------------------------------------------------------------------------------------------
# the index's files, by video id


@dataclass(frozen=True)
class Entry:
    video_id: str
    path: str  # absolute local path, or a URL
    thumbnail: Path | None
    duration_s: float | None


class Catalog:
    """video_id -> what the index lists for it. Built once from the index's table; a URL only ever names an id."""

    def __init__(self, index: Any):
        self.folder = Path(index.folder).resolve()
        videos = index.videos
        self._by_id: dict[str, Entry] = {}
        thumbs = videos["thumbnail"] if "thumbnail" in videos else [""] * len(videos)
        durations = videos["duration_s"] if "duration_s" in videos else [None] * len(videos)
        for video_id, path, thumb, duration in zip(videos["video_id"], videos["path"], thumbs, durations):
            self._by_id[str(video_id)] = Entry(str(video_id), str(path), self._thumb_path(thumb),
                                               None if duration is None or duration != duration else float(duration))

    def _thumb_path(self, thumb: Any) -> Path | None:
        if not isinstance(thumb, (str, os.PathLike)) or not str(thumb):
            return None
        path = Path(thumb)
        path = (path if path.is_absolute() else self.folder / path).resolve()
        return path if path.is_relative_to(self.folder) else None  # a thumbnail lives in the index's folder

    def get(self, video_id: str) -> Entry | None:
        return self._by_id.get(video_id)

    def __len__(self) -> int:
        return len(self._by_id)


def content_type(path: str) -> str:
    suffix = os.path.splitext(urlsplit(path).path if "://" in path else path)[1].lower()
    return VIDEO_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or "application/octet-stream"


@contextlib.contextmanager
def open_clip(path: str) -> Iterator[tuple[int, IO[bytes]]]:
    """(size, seekable binary file) of a local clip or a URL (s3://, http(s)://: through fsspec)."""
    if "://" in path and not path.startswith("file://"):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        size = int(fs.size(inner))
        with fs.open(inner, "rb", cache_type="none") as f:
            yield size, f
        return
    local = path.removeprefix("file://")
    with open(local, "rb") as f:
        yield os.fstat(f.fileno()).st_size, f


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """The one byte range `header` asks for, as (first, last) inclusive; None: no (usable) Range, send it all;
    "unsatisfiable": a range past the end (416). Several ranges are answered with the whole file, as RFC 9110
    allows."""
    if not header:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return None
    return start, end


# --------------------------------------------------------------------------------------------------------------
# the server


class SearchServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, searcher: SearcherLike, host: str = "127.0.0.1", port: int = 0, top: int = DEFAULT_TOP,
                 title: str = "STGT video search", log: Callable[[str], None] | None = None):
        if ":" in host:
            import socket

            self.address_family = socket.AF_INET6
        self.searcher = searcher
        self.catalog = Catalog(searcher.index)
        self.top = top
        self.title = title
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.loopback_only = host in LOOPBACK
        self._search_lock = threading.Lock()  # one query at a time through the model
        super().__init__((host, port), SearchHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def search(self, query: str, top: int) -> tuple[list[dict], float]:
        started = time.perf_counter()
        with self._search_lock:
            hits = self.searcher.search(query, top=top)
        seconds = time.perf_counter() - started
        out = []
        for h in hits:
            entry = self.catalog.get(str(h.video_id))
            duration = h.duration_s if getattr(h, "duration_s", None) is not None else (entry and entry.duration_s)
            out.append({"rank": int(h.rank), "video_id": str(h.video_id), "score": round(float(h.score), 6),
                        "duration_s": None if duration is None or duration != duration else float(duration),
                        "thumb": _hit_url("thumb", str(h.video_id)) if entry and entry.thumbnail else None,
                        "video": _hit_url("video", str(h.video_id))})
        return out, seconds


class BadRequest(Exception):
    """A request the user can fix: 400 with this one line."""


class SearchHandler(BaseHTTPRequestHandler):
    server: SearchServer
    server_version = "stgt-serve"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # ---- plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # each request is not news; errors are logged where they are answered

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, line: str) -> None:
        self._send(status, (line.rstrip("\n") + "\n").encode(), "text/plain; charset=utf-8")

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _host_allowed(self) -> bool:
        """On loopback, only requests that name a loopback host (a web page elsewhere cannot reach the server
        through a DNS name that resolves to 127.0.0.1)."""
        if not self.server.loopback_only:
            return True
        host = (self.headers.get("Host") or "").strip()
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        return name.lower() in LOOPBACK

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        try:
            if not self._host_allowed():
                self._text(HTTPStatus.FORBIDDEN, "forbidden: this server answers only to a loopback host name")
                return
            parts = urlsplit(self.path)
            route = parts.path
            params = parse_qs(parts.query, keep_blank_values=True)
            if route == "/":
                self._page(params)
            elif route == "/api/search":
                self._api_search(params)
            elif route.startswith("/thumb/"):
                self._thumb(unquote(route[len("/thumb/"):]))
            elif route.startswith("/video/"):
                self._video(unquote(route[len("/video/"):]))
            elif route == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            else:
                self._text(HTTPStatus.NOT_FOUND, f"not found: {route}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser stopped reading (a <video> does this all the time)
        except Exception as exc:  # a bug or a failing model: one line to the client, the traceback to the log
            import traceback

            self.server.log(f"error on GET {self.path}:\n{traceback.format_exc()}")
            with contextlib.suppress(Exception):
                self._text(HTTPStatus.INTERNAL_SERVER_ERROR, f"server error: {type(exc).__name__}: {exc}"[:300])

    # ---- routes

    @staticmethod
    def _query(params: dict[str, list[str]]) -> str:
        query = " ".join((params.get("q") or [""])[0].split())
        if not query:
            raise BadRequest("empty query: give q=<words describing the clip>")
        if len(query) > MAX_QUERY_CHARS:
            raise BadRequest(f"query too long: {len(query)} characters (at most {MAX_QUERY_CHARS})")
        return query

    def _top(self, params: dict[str, list[str]]) -> int:
        raw = (params.get("top") or [""])[0].strip()
        if not raw:
            return self.server.top
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_TOP:
            raise BadRequest(f"top must be a whole number from 1 to {MAX_TOP}, not {raw[:20]!r}")
        return int(raw)

    def _run_search(self, params: dict[str, list[str]]) -> tuple[str, int, list[dict], float]:
        query, top = self._query(params), self._top(params)
        try:
            hits, seconds = self.server.search(query, top)
        except StgtError as exc:
            raise BadRequest(str(exc).splitlines()[0] if str(exc) else "bad query") from None
        return query, top, hits, seconds

    def _api_search(self, params: dict[str, list[str]]) -> None:
        try:
            query, top, hits, seconds = self._run_search(params)
        except BadRequest as exc:
            self._text(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._json(HTTPStatus.OK, {"query": query, "top": top, "seconds": round(seconds, 4), "hits": hits})

    def _page(self, params: dict[str, list[str]]) -> None:
        title = self.server.title
        status, query, hits, message, error = HTTPStatus.OK, "", [], "", False
        if "q" in params:
            query = (params.get("q") or [""])[0]
            try:
                query, _, hits, seconds = self._run_search(params)
                message = (f"{len(hits)} of {len(self.server.catalog)} videos for \u201c{query}\u201d "
                           f"({seconds:.2f} s)" if hits else f"no videos for \u201c{query}\u201d")
            except BadRequest as exc:
                status, message, error = HTTPStatus.BAD_REQUEST, str(exc), True
        else:
            message = f"{len(self.server.catalog)} videos in the index: type what happens in a clip"
        body = render_page(title, query, hits, message, error).encode()
        self._send(status, body, "text/html; charset=utf-8", {"Content-Security-Policy": CSP})

    def _thumb(self, video_id: str) -> None:
        entry = self.server.catalog.get(video_id)
        if entry is None or entry.thumbnail is None:
            self._text(HTTPStatus.NOT_FOUND, f"no thumbnail for video id {video_id!r}")
            return
        try:
            body = entry.thumbnail.read_bytes()
        except OSError as exc:
            self.server.log(f"thumbnail of {video_id!r} unreadable: {entry.thumbnail}: {exc.strerror or exc}")
            self._text(HTTPStatus.NOT_FOUND, f"thumbnail of {video_id!r} is missing from the index")
            return
        self._send(HTTPStatus.OK, body, "image/jpeg", {"Cache-Control": "max-age=3600"})

    def _video(self, video_id: str) -> None:
        entry = self.server.catalog.get(video_id)
        if entry is None:
            self._text(HTTPStatus.NOT_FOUND, f"no video with id {video_id!r} in the index")
            return
        try:
            with open_clip(entry.path) as (size, f):
                self._send_clip(f, size, content_type(entry.path))
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            self.server.log(f"video {video_id!r} unreadable: {entry.path}: {exc.strerror or exc}")
            self._text(HTTPStatus.NOT_FOUND, f"video {video_id!r} is listed in the index but its file is gone")

    def _send_clip(self, f: IO[bytes], size: int, ctype: str) -> None:
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", "text/plain",
                       {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
            return
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        length = max(0, last - first + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if isinstance(wanted, tuple) else HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        if isinstance(wanted, tuple):
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        f.seek(first)
        left = length
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            self.wfile.write(block)
            left -= len(block)


def make_server(searcher: SearcherLike, host: str = "127.0.0.1", port: int = 0, top: int = DEFAULT_TOP,
                **kwargs: Any) -> SearchServer:
    """A server bound to (host, port) and not yet serving: call .serve_forever() (port 0: a free port; .url)."""
    if not 1 <= top <= MAX_TOP:
        raise StgtError(f"--top must be from 1 to {MAX_TOP}, not {top}")
    if not 0 <= port <= 65535:
        raise StgtError(f"--port must be from 0 to 65535, not {port}")
    try:
        return SearchServer(searcher, host, port, top, **kwargs)
    except OSError as exc:
        raise StgtError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------------------------------------------
# `stgt serve`


def _serve_command(args: argparse.Namespace) -> int:
    from stgt_pipeline.search.index import Searcher, VideoIndex  # torch and mlflow: only when the command runs

    if not Path(args.index).is_dir():
        raise StgtError(f"no index at {args.index}: build one with `stgt index SOURCE --out {args.index}`")
    index = VideoIndex.open(args.index)
    searcher = Searcher(index, model_uri=args.model)
    server = make_server(searcher, args.host, args.port, args.top)
    if args.host not in LOOPBACK:
        print(f"note: serving on {args.host}: anyone who can reach port {server.server_address[1]} can search and "
              "watch the indexed videos", file=sys.stderr)
    print(f"search page on {server.url} ({len(server.catalog)} videos from {args.index}; Ctrl+C stops it)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def add_serve_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `stgt serve` to the `stgt` sub-commands."""
    about = "open a search page over a video index: type what happens, see the matching clips, click to play"
    p = sub.add_parser("serve", help=about, description=about + ". Listens on loopback unless --host says otherwise.")
    p.add_argument("--index", default=DEFAULT_INDEX, metavar="DIR",
                   help="index folder written by `stgt index` (default: %(default)s)")
    p.add_argument("--model", default=None, metavar="URI",
                   help="retrieval model; it must be the version the index was built with "
                        "(default: models:/stgt-retrieval@champion)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N",
                   help=f"hits per query (default: %(default)s, at most {MAX_TOP})")
    p.set_defaults(func=_serve_command)
    return p
