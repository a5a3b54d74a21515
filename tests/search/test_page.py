"""The search page's server, spoken to over HTTP (no browser): the real index built by `stgt index` with a real
registered model (the `search_index` fixture), served in a thread on a free loopback port."""
from __future__ import annotations

import argparse
import http.client
import json
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from stgt_pipeline.errors import StgtError
from stgt_pipeline.search import page
from stgt_pipeline.search.page import add_serve_command, make_server, parse_range

slow = pytest.mark.slow  # the server's tests need the search world (a trained, registered model and its index)


@pytest.fixture
def server(search_env) -> Iterator[page.SearchServer]:
    from stgt_pipeline.search.index import Searcher, VideoIndex

    search_index = search_env
    searcher = Searcher(VideoIndex.open(search_index.index_dir), search_index.model_uri)
    srv = make_server(searcher, "127.0.0.1", 0, top=5, log=lambda line: None)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def get(srv: page.SearchServer, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with `path` sent exactly as given (no client-side normalisation of '..')."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def a_video(srv: page.SearchServer) -> tuple[str, Path]:
    """An indexed video whose file is local, and that file."""
    videos = srv.searcher.index.videos
    for video_id, path in zip(videos["video_id"], videos["path"]):
        if Path(path).is_file():
            return str(video_id), Path(path)
    pytest.fail("no indexed video is a local file")


@slow
@pytest.mark.timeout(300)
def test_search_api_finds_the_captioned_clip_first(server, search_index):
    status, headers, body = get(server, f"/api/search?q={quote(search_index.test_caption)}&top=3")
    assert status == 200 and headers["content-type"] == "application/json"
    result = json.loads(body)
    assert result["query"] == search_index.test_caption and result["top"] == 3
    hits = result["hits"]
    assert 1 <= len(hits) <= 3
    assert hits[0]["video_id"] == search_index.expected_video_id
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert hits == sorted(hits, key=lambda h: -h["score"])
    first = hits[0]
    assert first["video"] == f"/video/{quote(first['video_id'], safe='')}"
    assert first["duration_s"] and first["duration_s"] > 0
    # the thumbnail it links to is the index's JPEG
    status, headers, thumb = get(server, first["thumb"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and thumb[:2] == b"\xff\xd8"


@slow
@pytest.mark.timeout(300)
def test_the_page_lists_hits_with_rank_score_id_and_duration(server, search_index):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    text = body.decode()
    assert '<form method="get" action="/"' in text and 'id="q"' in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere

    status, _, body = get(server, f"/?q={quote(search_index.test_caption)}")
    text = body.decode()
    assert status == 200
    assert f'data-video="{search_index.expected_video_id}" data-rank="1"' in text
    assert 'class="rank">#1<' in text
    import re
    assert re.search(r'class="score">-?\d+\.\d{3}<', text)
    assert re.search(r'class="dur">\d+\.\d s<', text)


@slow
@pytest.mark.timeout(300)
def test_an_empty_query_is_a_400_with_one_line(server):
    for path in ("/api/search?q=", "/api/search?q=%20%20", "/api/search"):
        status, headers, body = get(server, path)
        assert status == 400, path
        assert headers["content-type"].startswith("text/plain")
        assert body.decode().count("\n") == 1 and "empty query" in body.decode()
    status, _, body = get(server, "/?q=")
    assert status == 400 and b"empty query" in body
    status, _, body = get(server, "/api/search?q=circle&top=0")
    assert status == 400 and body.decode().startswith("top must be")


@slow
@pytest.mark.timeout(300)
def test_unknown_ids_and_routes_are_404(server):
    for path in ("/video/no-such-video", "/thumb/no-such-video", "/nothing-here", "/video/", "/video/%00"):
        status, _, body = get(server, path)
        assert status == 404, path
        assert body.decode().count("\n") == 1


@slow
@pytest.mark.timeout(300)
def test_no_path_reaches_the_filesystem(server):
    _, real_file = a_video(server)
    index_json = Path(server.searcher.index.folder).resolve() / "index.json"
    probes = ["/video/../../../../etc/passwd", "/video/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/video/%2Fetc%2Fpasswd",
              "/video//etc/passwd", "/../index.json", "/thumb/../index.json", "/thumb/..%2Findex.json",
              f"/thumb/{quote(str(index_json), safe='')}", f"/video/{quote(str(real_file), safe='')}",
              f"/video{real_file}", "/video/file:%2F%2F%2Fetc%2Fpasswd"]
    for path in probes:
        status, _, body = get(server, path)
        assert status == 404, (path, status)
        assert b"root:" not in body and b'"format"' not in body, path


@slow
@pytest.mark.timeout(300)
def test_a_clip_is_served_whole_and_by_range(server):
    video_id, path = a_video(server)
    data = path.read_bytes()
    url = f"/video/{quote(video_id, safe='')}"

    status, headers, body = get(server, url)
    assert status == 200 and body == data
    assert headers["content-type"] == page.content_type(str(path)) == "video/mp4"
    assert headers["accept-ranges"] == "bytes" and int(headers["content-length"]) == len(data)

    status, headers, body = get(server, url, {"Range": "bytes=100-1099"})
    assert status == 206 and body == data[100:1100]
    assert headers["content-range"] == f"bytes 100-1099/{len(data)}" and headers["content-length"] == "1000"

    status, headers, body = get(server, url, {"Range": "bytes=-64"})  # the last 64 bytes (the moov atom's end)
    assert status == 206 and body == data[-64:]
    assert headers["content-range"] == f"bytes {len(data) - 64}-{len(data) - 1}/{len(data)}"

    status, headers, body = get(server, url, {"Range": f"bytes={len(data) - 10}-"})  # open-ended
    assert status == 206 and body == data[-10:]

    status, headers, body = get(server, url, {"Range": f"bytes={len(data)}-"})  # past the end
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}" and body == b""

    status, headers, body = get(server, url, {"Range": "bytes=0-0"}, method="HEAD")
    assert status == 206 and headers["content-length"] == "1" and body == b""


@slow
@pytest.mark.timeout(300)
def test_only_a_loopback_host_name_is_answered(server):
    status, _, body = get(server, "/", {"Host": "attacker.example:80"})
    assert status == 403 and b"loopback" in body
    status, _, _ = get(server, "/", {"Host": f"localhost:{server.server_address[1]}"})
    assert status == 200


@slow
@pytest.mark.timeout(300)
def test_a_busy_port_is_one_line(server):
    with pytest.raises(StgtError, match="cannot listen on 127.0.0.1"):
        make_server(server.searcher, "127.0.0.1", server.server_address[1])
    with pytest.raises(StgtError, match="--top"):
        make_server(server.searcher, "127.0.0.1", 0, top=0)


# ---- no server needed


def test_parse_range():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-", 100) == (0, 99)
    assert parse_range("bytes=10-19", 100) == (10, 19)
    assert parse_range("bytes=90-200", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-1000", 100) == (0, 99)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=-0", 100) == "unsatisfiable"
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole file
    assert parse_range("items=0-1", 100) is None
    assert parse_range("bytes=5-2", 100) is None


def test_serve_help_and_defaults(capsys):
    parser = argparse.ArgumentParser(prog="stgt")
    add_serve_command(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--index", "--model", "--host", "--port", "--top"):
        assert option in out
    args = parser.parse_args(["serve"])
    assert (args.index, args.model, args.host, args.top) == ("data/index", None, "127.0.0.1", 10)


def test_serve_without_an_index_is_one_line(tmp_path):
    parser = argparse.ArgumentParser(prog="stgt")
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--index", str(tmp_path / "missing"), "--port", "0"])
    with pytest.raises(StgtError, match="no index at .*missing.*stgt index"):
        args.func(args)


def test_a_clip_under_a_url_is_read_by_range(s3):
    """An index built from s3://... lists URLs: the server reads them through fsspec, seeking like a file."""
    from stgt_pipeline.search.page import content_type, open_clip

    data = bytes(range(256)) * 40
    s3.put_object(Bucket="bench", Key="clips/a.mp4", Body=data)
    with open_clip("s3://bench/clips/a.mp4") as (size, f):
        assert size == len(data)
        f.seek(1000)
        assert f.read(300) == data[1000:1300]
    assert content_type("s3://bench/clips/a.mp4") == "video/mp4"
    assert content_type("https://example.org/v/b.webm?sig=x") == "video/webm"
    with pytest.raises(FileNotFoundError):
        with open_clip("s3://bench/clips/missing.mp4"):
            pass
