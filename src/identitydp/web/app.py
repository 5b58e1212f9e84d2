"""`identitydp serve`: a local web app on the job layer.

FastAPI serves one static page (``static/index.html``, no build step) and a small JSON API. Every
anonymization is an :class:`identitydp.jobs.Job` run on one worker thread, so the loaded models
are used by one thread at a time and shared between requests (loaded on the first request that
needs them, never at import). Each browser session (a random cookie) owns a private temporary
folder with its uploads and results; nothing the user sends becomes a path (files are stored
under names we make up), uploads are limited in bytes and pixels, and a session's folder is
deleted when the user ends the session, when it has been idle for ``session_ttl_s``, and when
the server stops. What a user wants to keep, they download.
"""

import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IdentityDPError

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "identitydp_session"
IMAGE_TYPES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}

def epsilon_meaning() -> dict:
    """What ε means, measured, for the page: MobileFace (an independent recognizer, in no
    renderer's training loss) rank-1 re-identification per ε of the default setting, per renderer,
    and of v2 with the gender from the context (``context``; the default up to ``context_max_epsilon``),
    from the committed curves that ``identitydp privacy explain`` prints too; with the references
    (original photo, solid mask, chance) of the default renderer's run."""
    from ..generate.anonymizer import DEFAULT_RENDERER
    from ..jobs.config import GENDER_FROM_CONTEXT_MAX_EPSILON
    from ..privacy.explain import CURVE_FILES, CURVE_JUDGE, load_curve, load_keep_curve, rank1_by_epsilon

    curves = {name: load_curve(name) for name in CURVE_FILES}
    per_renderer = {name: rank1_by_epsilon(c) for name, c in curves.items() if c is not None}
    # The gender from the context (the default up to ε 16 with v2) has its own measured points.
    kept_curve = load_keep_curve()
    context = rank1_by_epsilon(kept_curve, params={"gender_from_context": True}) if kept_curve else {}
    base = curves.get(DEFAULT_RENDERER) or next((c for c in curves.values() if c is not None), None)
    if base is None:
        return {"people": 0, "identitydp": {}, "reference": {}, "source": {}, "context": {},
                "context_max_epsilon": GENDER_FROM_CONTEXT_MAX_EPSILON}
    people = (base.get("protocol") or {}).get("people", 0)

    def rank1(key: str) -> float | None:
        entry = ((base.get(key) or {}).get(CURVE_JUDGE) or {}).get("rank1")
        return entry["value"] if entry else None

    return {
        "people": people,
        "identitydp": per_renderer,
        "context": context,
        "context_max_epsilon": GENDER_FROM_CONTEXT_MAX_EPSILON,
        "source": {name: c["source"] for name, c in curves.items() if c is not None},
        "reference": {"no anonymization": rank1("originals"), "solid mask": rank1("floor_mask"),
                      "chance": base.get("chance_rank1")},
    }


class WebError(IdentityDPError):
    """A request the app refuses, with the message the page shows and an HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Task:
    id: str
    kind: str
    name: str
    input: Path
    output: Path
    status: str = "queued"  # queued, running, done, failed, refused
    progress: float = 0.0
    frames: int = 0
    total_frames: int | None = None
    error: str | None = None
    result: dict | None = None
    created: float = field(default_factory=time.time)


@dataclass
class Session:
    id: str
    folder: Path
    tasks: dict[str, Task] = field(default_factory=dict)
    exempt: Path | None = None
    touched: float = field(default_factory=time.time)
    counter: int = 0


class WebState:
    """Sessions, the shared anonymizers and the single worker thread."""

    def __init__(self, *, ledger: Path, workdir: Path | None, max_upload_mb: float, max_pixels: int, session_ttl_s: float) -> None:
        self.ledger = Path(ledger)
        self.root = Path(tempfile.mkdtemp(prefix="identitydp-web-", dir=workdir))
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.max_pixels = int(max_pixels)
        self.session_ttl_s = float(session_ttl_s)
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="identitydp-web")
        # config fingerprint -> (image anonymizer, video anonymizer); only the worker thread uses them.
        self.anonymizers: dict[tuple[str, bool, str], object] = {}

    # -- sessions ------------------------------------------------------------------------------
    def session(self, token: str | None, *, create: bool = True) -> Session | None:
        self.expire()
        with self.lock:
            s = self.sessions.get(token or "")
            if s is None and create:
                token = secrets.token_urlsafe(24)
                folder = self.root / secrets.token_hex(8)
                folder.mkdir()
                s = self.sessions[token] = Session(token, folder)
            if s is not None:
                s.touched = time.time()
            return s

    def end(self, token: str | None) -> bool:
        with self.lock:
            s = self.sessions.pop(token or "", None)
        if s is not None:
            shutil.rmtree(s.folder, ignore_errors=True)
        return s is not None

    def expire(self) -> None:
        now = time.time()
        with self.lock:
            old = [t for t, s in self.sessions.items() if now - s.touched > self.session_ttl_s
                   and not any(task.status in ("queued", "running") for task in s.tasks.values())]
        for token in old:
            self.end(token)

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- uploads -------------------------------------------------------------------------------
    def store_upload(self, session: Session, data: bytes, filename: str | None, *, subfolder: str | None = None) -> tuple[Path, str]:
        """Check an upload and store it under a name we choose; returns (path, kind)."""
        if len(data) == 0:
            raise WebError("the file is empty")
        if len(data) > self.max_upload:
            raise WebError(f"the file is {len(data) / 2**20:.0f} MB; this server takes at most {self.max_upload / 2**20:.0f} MB", 413)
        import io

        from PIL import Image, UnidentifiedImageError

        session.counter += 1
        folder = session.folder / subfolder if subfolder else session.folder
        folder.mkdir(exist_ok=True)
        suffix = Path(filename or "").suffix.lower()
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                w, h = img.size
        except (UnidentifiedImageError, OSError, ValueError):
            fmt = None
        except Image.DecompressionBombError as exc:
            raise WebError(f"the image is too large to open safely ({exc})", 413) from exc
        if fmt is not None:
            if fmt not in IMAGE_TYPES:
                raise WebError(f"{fmt} images are not supported; use JPEG, PNG, WebP, BMP or TIFF")
            if w * h > self.max_pixels:
                raise WebError(f"the image has {w * h / 1e6:.0f} megapixels; this server takes at most {self.max_pixels / 1e6:.0f}", 413)
            path = folder / f"upload-{session.counter}{IMAGE_TYPES[fmt]}"
            path.write_bytes(data)
            return path, "image"
        if suffix in VIDEO_SUFFIXES:
            path = folder / f"upload-{session.counter}{suffix}"
            path.write_bytes(data)
            try:
                from ..video import probe_video

                info = probe_video(path)
            except IdentityDPError as exc:
                path.unlink(missing_ok=True)
                raise WebError(f"this is not a video we can read ({exc})") from exc
            if info.width * info.height > self.max_pixels:
                path.unlink(missing_ok=True)
                raise WebError(f"the video is {info.width}x{info.height}; too large for this server", 413)
            return path, "video"
        raise WebError("this is neither an image (JPEG, PNG, WebP, BMP, TIFF) nor a video (MP4, MOV, MKV, WebM, AVI)")

    # -- running -------------------------------------------------------------------------------
    def anonymizer_for(self, config, video: bool):
        # The reference photos can change under the same folder path: they are part of the key.
        refs = ""
        if config.exempt is not None:
            refs = ",".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(Path(config.exempt).rglob("*")) if p.is_file())
        key = (config.fingerprint, video, refs)
        if key not in self.anonymizers:
            from dataclasses import replace

            self.anonymizers[key] = (replace(config, pad_tight=False) if video else config).build()
        return self.anonymizers[key]

    def run(self, session: Session, task: Task, config, budget: float | None) -> None:
        from ..jobs import Job, WorkItem

        task.status = "running"
        try:
            job = Job(config, ledger=self.ledger if config.is_dp else None, budget=budget,
                      anonymizer=self.anonymizer_for(config, False))
            if task.kind == "video":
                job._video_anonymizer = self.anonymizer_for(config, True)

            def progress(n: int, total: int | None) -> None:
                task.frames, task.total_frames = n, total
                task.progress = min(0.99, n / total) if total else 0.5

            with job:
                result = job.run_item(WorkItem(task.input, task.output, task.kind), frame_progress=progress)
            task.result = result.to_dict()
            if result.status == "done" and task.kind == "video":
                self._preview(task)  # before "done": a page that sees "done" asks for the preview at once
            task.error = result.reason if result.status != "done" else None
            task.status = result.status
        except IdentityDPError as exc:
            task.status, task.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - the page must get a message, the server must live on
            log.exception("web task failed")
            task.status, task.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        task.progress = 1.0

    def _preview(self, task: Task) -> None:
        from ..io import write_image
        from ..video import iter_frames

        frames = iter_frames(task.output)
        frame = None
        for i, f in enumerate(frames):
            frame = f
            if i >= 12:
                break
        if frame is not None:
            write_image(task.output.with_name(task.output.stem + "-preview.jpg"), frame, overwrite=True)


def create_app(*, ledger: Path, workdir: Path | None = None, max_upload_mb: float = 200.0, max_pixels: int = 40_000_000,
               session_ttl_s: float = 3600.0):
    """The FastAPI application (nothing heavy is loaded until the first anonymization)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

    state = WebState(ledger=ledger, workdir=workdir, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                     session_ttl_s=session_ttl_s)

    @asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = FastAPI(title="identitydp", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = state

    @app.exception_handler(WebError)
    async def web_error(request, exc: WebError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(IdentityDPError)
    async def library_error(request, exc: IdentityDPError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    def session_of(request: Request, response: Response | None = None) -> Session:
        s = state.session(request.cookies.get(COOKIE))
        if response is not None:
            response.set_cookie(COOKIE, s.id, httponly=True, samesite="strict")
        return s

    def with_cookie(payload, s: Session, status: int = 200):
        resp = JSONResponse(payload, status_code=status)
        resp.set_cookie(COOKIE, s.id, httponly=True, samesite="strict")
        return resp

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/api/info")
    async def info(request: Request):
        from .._cli_anonymize import DEFAULT_IDENTITYDP_EPSILON, METHOD_CHOICES

        s = session_of(request)
        return with_cookie({"methods": METHOD_CHOICES, "default_method": "identitydp", "default_epsilon": DEFAULT_IDENTITYDP_EPSILON,
                            "epsilon_meaning": epsilon_meaning(), "max_upload_mb": state.max_upload / 2**20,
                            "max_megapixels": state.max_pixels / 1e6, "exempt_references": _exempt_list(s)}, s)

    def _exempt_list(s: Session) -> list[str]:
        if s.exempt is None:
            return []
        return sorted(p.name for p in s.exempt.iterdir() if p.is_dir())

    @app.post("/api/exempt")
    async def add_exempt(request: Request, file: UploadFile = File(...), person: str = Form("")):
        s = session_of(request)
        data = await _read_limited(file, state.max_upload)
        path, kind = state.store_upload(s, data, file.filename, subfolder="exempt")
        if kind != "image":
            path.unlink(missing_ok=True)
            raise WebError("a reference must be a photo of the person who consents")
        safe = "".join(c for c in person if c.isalnum() or c in " -_")[:40].strip() or f"person{s.counter}"
        target = path.parent / safe / f"{s.counter}{path.suffix}"  # DIR/person/n.jpg: the person is the folder
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
        try:
            from starlette.concurrency import run_in_threadpool

            from ..exempt import Exemptions

            # One clear face per photo, or a message now (off the event loop: it loads a model).
            await run_in_threadpool(Exemptions.from_folder, target.parent.parent)
        except IdentityDPError as exc:
            target.unlink(missing_ok=True)
            if not any(target.parent.iterdir()):
                target.parent.rmdir()
            raise WebError(str(exc).replace(str(target), "the reference photo")) from exc
        s.exempt = target.parent.parent
        return with_cookie({"exempt_references": _exempt_list(s)}, s)

    @app.delete("/api/exempt")
    async def clear_exempt(request: Request):
        s = session_of(request)
        if s.exempt is not None:
            shutil.rmtree(s.exempt, ignore_errors=True)
            s.exempt = None
        return with_cookie({"exempt_references": []}, s)

    @app.post("/api/anonymize")
    async def anonymize(request: Request, file: UploadFile = File(...), method: str = Form("identitydp"),
                        epsilon: str = Form(""), mechanism: str = Form(""), budget: str = Form(""),
                        threshold: str = Form("0.5"), use_exempt: str = Form("true"), renderer: str = Form(""),
                        keep: str = Form(""), gender_from_context: str = Form("")):
        from ..jobs import AnonymizerConfig

        s = session_of(request)
        params = _params(method, epsilon, mechanism, renderer, keep, gender_from_context)
        budget_value = _number(budget, "budget", positive=True) if budget.strip() else None
        th = _number(threshold, "threshold")
        if not 0 < th < 1:
            raise WebError("the detection threshold must be between 0 and 1")
        data = await _read_limited(file, state.max_upload)
        path, kind = state.store_upload(s, data, file.filename)
        exempt = str(s.exempt) if (s.exempt is not None and use_exempt == "true" and kind == "image") else None
        config = AnonymizerConfig.create(method, threshold=th, exempt=exempt, **params)
        if budget_value is not None and not config.is_dp:
            raise WebError(f"a privacy budget applies to dp-pix and identitydp, not {method}")
        task_id = secrets.token_hex(6)
        out = path.with_name(f"result-{task_id}{path.suffix}")
        task = Task(task_id, kind, Path(file.filename or "upload").name[:120], path, out)
        s.tasks[task_id] = task
        state.worker.submit(state.run, s, task, config, budget_value)
        return with_cookie({"task": task_id, "kind": kind}, s, 202)

    def _task(request: Request, task_id: str) -> Task:
        s = state.session(request.cookies.get(COOKIE), create=False)
        if s is None or task_id not in s.tasks:
            raise WebError("no such result in this session (it may have ended)", 404)
        return s.tasks[task_id]

    @app.get("/api/tasks/{task_id}")
    async def task_status(request: Request, task_id: str):
        t = _task(request, task_id)
        faces = []
        if t.kind == "image" and t.result and t.result.get("report"):
            report = t.result["report"]
            for i, f in enumerate(report.get("faces", [])):
                faces.append({"index": i, "box": f.get("box"), "score": f.get("score"), "status": f.get("status"),
                              "ledger_key": f.get("ledger_key"), "exempt": f.get("exempt"), "error": f.get("error"),
                              "released_without_dp": f.get("released_without_dp"),
                              "set_from_context": f.get("set_from_context")})
        return {"id": t.id, "kind": t.kind, "name": t.name, "status": t.status, "progress": t.progress,
                "frames": t.frames, "total_frames": t.total_frames, "error": t.error, "faces": faces,
                # what ran, from the image report (v1-aei / v2-inpainting); None for other methods
                "renderer": (((t.result or {}).get("report") or {}).get("method") or {}).get("renderer"),
                "keep": (((t.result or {}).get("report") or {}).get("method") or {}).get("keep"),
                "releases": (t.result or {}).get("releases", 0), "epsilon": (t.result or {}).get("epsilon", 0.0),
                "video": (t.result or {}).get("report") if t.kind == "video" else None}

    @app.get("/api/tasks/{task_id}/{which}")
    async def task_file(request: Request, task_id: str, which: str):
        t = _task(request, task_id)
        if which == "original":
            path = t.input
        elif which in ("output", "download"):
            path = t.output
        elif which == "preview":
            path = t.output.with_name(t.output.stem + "-preview.jpg")
        else:
            raise WebError("unknown file", 404)
        if not path.is_file():
            raise WebError("that file is not ready (or the anonymization failed)", 404)
        name = f"{Path(t.name).stem}.anonymized{t.output.suffix}" if which == "download" else None
        return FileResponse(path, filename=name, headers={"Cache-Control": "no-store"})

    @app.get("/api/ledger")
    async def ledger_view(request: Request):
        from ..privacy.store import LedgerStore

        s = session_of(request)
        session_releases = [{"task": t.id, "name": t.name, "releases": (t.result or {}).get("releases", 0),
                             "epsilon": (t.result or {}).get("epsilon", 0.0),
                             "keys": (list(((t.result or {}).get("report") or {}).get("ledger_keys", {}).values()) if t.kind == "video" else
                                      [f.get("ledger_key") for f in ((t.result or {}).get("report") or {}).get("faces", []) if f.get("ledger_key")])}
                            for t in s.tasks.values() if t.status == "done"]
        summary = None
        if state.ledger.exists():
            with LedgerStore(state.ledger) as store:
                summary = store.summary()
                spent = {k: store.spent(k)[0] for r in session_releases for k in r["keys"]}
                budget = store.budget
            for r in session_releases:
                r["spent"] = {k: spent[k] for k in r["keys"]}
        else:
            budget = None
        return with_cookie({"ledger": summary, "budget": budget, "session": session_releases}, s)

    @app.get("/api/ledger/download")
    async def ledger_download(request: Request):
        from ..privacy.store import LedgerStore

        if not state.ledger.exists():
            raise WebError("nothing has been released yet", 404)
        with LedgerStore(state.ledger) as store:
            data = store.export()
        return Response(json.dumps(data, indent=2, default=str), media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="identitydp-ledger.json"'})

    @app.post("/api/session/end")
    async def end_session(request: Request):
        ended = state.end(request.cookies.get(COOKIE))
        resp = JSONResponse({"ended": ended})
        resp.delete_cookie(COOKIE)
        return resp

    return app


async def _read_limited(file, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = await file.read(1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise WebError(f"the file is larger than this server's limit of {limit / 2**20:.0f} MB", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _number(text: str, name: str, *, positive: bool = False) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise WebError(f"{name} must be a number, got {text!r}") from None
    if math.isnan(value) or (positive and not value > 0):
        raise WebError(f"{name} must be a number > 0, got {text!r}")
    return value


def _params(method: str, epsilon: str, mechanism: str, renderer: str = "", keep: str = "",
            gender_from_context: str = "") -> dict:
    """The anonymizer's keyword arguments from the form's fields (``mechanism``, ``renderer``,
    ``keep`` and ``gender_from_context`` are read for identitydp only, like the CLI's; empty fields
    take the defaults: ``gender_from_context`` empty or ``auto`` is the product default of
    :func:`identitydp.jobs.with_product_defaults`, ``on`` / ``off`` force it)."""
    from .._cli_anonymize import DEFAULT_IDENTITYDP_EPSILON, METHOD_CHOICES

    if method not in METHOD_CHOICES:
        raise WebError(f"unknown method {method!r}")
    params: dict = {}
    if method in ("identitydp", "dp-pix"):
        eps = epsilon.strip().lower()
        params["epsilon"] = float("inf") if eps == "inf" else (_number(eps, "ε", positive=True) if eps else
                                                               (DEFAULT_IDENTITYDP_EPSILON if method == "identitydp" else 1.0))
    if method == "identitydp" and mechanism:
        if mechanism not in ("laplace", "gaussian", "metric"):
            raise WebError(f"unknown mechanism {mechanism!r}")
        params["mechanism"] = mechanism
    if method == "identitydp":
        from ..generate.anonymizer import DEFAULT_RENDERER, RENDERERS

        if renderer not in ("", *RENDERERS):
            raise WebError(f"unknown renderer {renderer!r} ({' or '.join(RENDERERS)})")
        params["weights"] = RENDERERS[renderer or DEFAULT_RENDERER]
        if keep.strip():
            import argparse

            from .._cli_anonymize import kept_attributes

            try:
                params["keep"] = kept_attributes(keep)
            except argparse.ArgumentTypeError as exc:
                raise WebError(f"keep: {exc}") from None
        choice = gender_from_context.strip().lower()
        if choice in ("true", "1", "on"):
            if renderer == "v1":
                raise WebError("gender from the context is for the v2 renderer; v1 reads the whole face")
            if params.get("keep"):
                raise WebError("gender from the context replaces keeping the gender: choose one")
            params["gender_from_context"] = True
        elif choice in ("false", "0", "off"):
            params["gender_from_context"] = False
        elif choice not in ("", "auto"):
            raise WebError(f"gender_from_context is auto, on or off, got {gender_from_context!r}")
    from ..jobs import with_product_defaults

    return with_product_defaults(method, params)
