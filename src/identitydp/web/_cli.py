"""`identitydp serve`: start the local web UI."""

from __future__ import annotations

import sys
from pathlib import Path

from .._cli_types import bounded_float, bounded_int, path_text


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="start the web UI on this computer (http://127.0.0.1:8000)",
                              description="A local web page to anonymize photos and videos: upload, choose the method and ε, "
                                          "compare before/after, download. Binds 127.0.0.1 only unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=bounded_int(0, 65535), default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--ledger", type=path_text, help="privacy ledger (default: $IDENTITYDP_LEDGER or ~/.local/share/identitydp/ledger.sqlite)")
    p.add_argument("--max-upload-mb", type=bounded_float(0, 100_000, low_open=True), default=200.0, help="largest upload (default 200 MB)")
    p.add_argument("--max-megapixels", type=bounded_float(0, 1000, low_open=True), default=40.0, help="largest image or video frame (default 40)")
    p.add_argument("--session-hours", type=bounded_float(0, 24 * 30, low_open=True), default=1.0,
                   help="delete a session's uploads and results after this long idle (default 1 h)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import socket

    try:
        import uvicorn
    except ImportError:
        print("identitydp serve needs FastAPI and uvicorn: pip install 'identitydp[web]'", file=sys.stderr)
        return 2
    from ..privacy.store import default_ledger_path
    from .app import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"identitydp: warning: serving on {args.host}: anyone who can reach it can upload and download", file=sys.stderr)
    ledger = Path(args.ledger) if args.ledger else default_ledger_path()
    app = create_app(ledger=ledger, max_upload_mb=args.max_upload_mb, max_pixels=int(args.max_megapixels * 1e6),
                     session_ttl_s=args.session_hours * 3600)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"identitydp: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    print(f"identitydp web UI on http://{'127.0.0.1' if host in ('0.0.0.0', '127.0.0.1') else host}:{port}/ (Ctrl-C to stop; "
          f"uploads are deleted when you end the session or stop the server)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0
