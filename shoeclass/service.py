"""HTTP JSON API for declaration software: the photos of an item in, ``ItemResult.to_dict()`` out.

The model is loaded once, when the app is created; requests share it and run their CPU-bound
work in the threadpool: at most ``max_concurrent`` decode their photos at a time and, separately,
at most ``max_concurrent`` run the network (the trunk already uses every core, more at once only
costs memory), so a photo being decoded or refused never holds the network from another request.
Limits on request, photo size and photo count are checked before anything is decoded, and each
photo's decoding is bounded by the loader's decode budget. Timeouts: a connection that has not
sent its request headers within ``header_timeout`` is closed; a body whose next bytes do not
arrive within ``body_timeout`` is answered 408; a request still running after ``request_timeout``
is answered 503 and its classification stopped, as it is when the client disconnects. Every error
is JSON ``{"detail": str, ...}`` and never a traceback. The request and response formats are in
docs/service.md.

Example:
    >>> app = create_app("weights/default")          # doctest: +SKIP
    >>> serve("127.0.0.1", 8080, "weights/default")   # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import math
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from ._guard import STOP, Guard, Rejected, error_response as _error
from .api import Cancelled, Classifier, check_arguments
from .check import normalise_code
from .result import SCHEMA_VERSION
from .facts import ALIASES, FACTS, DeclaredFacts, parse_fact

__all__ = ["create_app", "serve", "server_config", "DECLARED_FIELDS"]

logger = logging.getLogger(__name__)

MB = 1024 * 1024
# Request field -> DeclaredFacts field (shoeclass.facts.FACTS: the field names and their aliases).
DECLARED_FIELDS = dict(ALIASES)


def _field(loc: tuple) -> str:
    """Pydantic's ("body", "items", 0, "photos") as items[0].photos, the form used in every message."""
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _facts(fields: dict[str, Any], where: str = "") -> DeclaredFacts:
    """DeclaredFacts from request fields; a bad one is a 422 naming it and the allowed values."""
    data = {}
    for name, value in fields.items():
        if value is None or value == "":
            continue
        if name not in ALIASES:
            raise Rejected(422, f"{where}{name}", f"unknown declared fact; allowed: {sorted(ALIASES)}")
        try:
            parse_fact(name, value)
        except (ValueError, TypeError, OverflowError) as exc:  # also a number too large, a list where a value goes
            raise Rejected(422, f"{where}{name}", str(exc)) from None
        if ALIASES[name] in data:
            raise Rejected(422, f"{where}{name}", f"{ALIASES[name]} is given twice")
        data[ALIASES[name]] = value
    return DeclaredFacts.from_dict(data)


def _code(value: Any, where: str = "") -> str | None:
    """A declared code to check, as 10 digits; a bad one is a 422 naming the field."""
    if value is None or value == "":
        return None
    try:
        return normalise_code(value)
    except ValueError as exc:
        raise Rejected(422, f"{where}code", str(exc)) from None


def _with_fact_form_fields(endpoint):
    """Adds one optional form field per declared fact (``FACTS``, under its short alias where it
    has one) to the endpoint's signature, so OpenAPI documents the form the facts schema defines."""
    sig = inspect.signature(endpoint)
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(f.alias or f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=Annotated[str | None, Form(description=f.describe())]) for f in FACTS]
    endpoint.__signature__ = sig.replace(parameters=params + extra)
    return endpoint


def _finite(obj: Any) -> Any:
    """NaN / inf (e.g. a metric undefined on a tiny test split) as null, so the JSON stays valid."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


class Photo(BaseModel):
    name: str | None = Field(None, description="file name shown in the result (default photos[j])")
    data: str = Field(..., description="the encoded image file (JPEG, PNG, WebP), base64")


class BatchItem(BaseModel):
    id: str | None = Field(None, description="echoed back with the item's result")
    photos: list[Photo] = Field(..., min_length=1)
    declared: dict[str, Any] | None = Field(None, description="the facts of /v1/classify, JSON values, and the "
                                                               "declared \"code\" to check")
    top_k: int | None = Field(None, ge=1, le=100)


class BatchRequest(BaseModel):
    items: list[BatchItem] = Field(..., min_length=1)


def create_app(model: str | Path | Classifier | None = None, *, max_photos: int = 12,
               max_photo_bytes: int = 10 * MB, max_request_bytes: int = 50 * MB,
               max_batch_items: int = 64, max_concurrent: int = 2, body_timeout: float = 10.0,
               request_timeout: float = 120.0) -> FastAPI:
    """The FastAPI app serving one model.

    Args:
        model: a model folder, a loaded :class:`Classifier`, or None for the shipped default.
        max_photos: photos per item (more: 422).
        max_photo_bytes: bytes per photo (more: 413).
        max_request_bytes: bytes per request body (more: 413, before it is read when Content-Length says so).
        max_batch_items: items per /v1/classify/batch request (more: 422).
        max_concurrent: requests decoding photos at once, and separately requests running the
            network at once; others wait.
        body_timeout: seconds the body may stall between two chunks (more: 408).
        request_timeout: seconds a request may take in all (more: 503, its classification stopped).

    Raises:
        CheckpointError: the model folder cannot be loaded.
    """
    for name, value in [("max_photos", max_photos), ("max_photo_bytes", max_photo_bytes),
                        ("max_request_bytes", max_request_bytes), ("max_batch_items", max_batch_items),
                        ("max_concurrent", max_concurrent)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, value in [("body_timeout", body_timeout), ("request_timeout", request_timeout)]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    clf = model if isinstance(model, Classifier) else Classifier(model)
    meta = clf.meta
    slots, decoders = threading.BoundedSemaphore(max_concurrent), threading.BoundedSemaphore(max_concurrent)
    limits = {"max_photos": max_photos, "max_photo_bytes": max_photo_bytes,
              "max_request_bytes": max_request_bytes, "max_batch_items": max_batch_items,
              "body_timeout_s": body_timeout, "request_timeout_s": request_timeout}
    logger.info("serving model %s (%s)", clf.path, meta["sha256"][:12])

    app = FastAPI(title="shoeclass", version=__version__,
                  description="Visual attributes of footwear photos and their TN VED / HS 6401-6405 codes. "
                              f"Results follow schema_version {SCHEMA_VERSION} (docs/service.md).")
    app.add_middleware(Guard, max_bytes=max_request_bytes, body_timeout=body_timeout,
                       request_timeout=request_timeout)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            msg = e["msg"]
            if e["type"] == "json_invalid":
                msg = f"invalid JSON at character {e['loc'][-1]}: {e.get('ctx', {}).get('error', '')}"
            errors.append({"field": _field(e["loc"][:1] if e["type"] == "json_invalid" else e["loc"]),
                           "message": msg})
        return _error(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = getattr(exc, "field", None)
        errors = [{"field": field, "message": exc.message}] if field else []
        return _error(exc.status_code, str(exc.detail), errors)

    def check_photos(sizes: list[int], where: str = "") -> None:
        if len(sizes) > max_photos:
            raise Rejected(422, f"{where}photos", f"{len(sizes)} photos, at most {max_photos} per item")
        for j, size in enumerate(sizes):
            if size > max_photo_bytes:
                raise Rejected(413, f"{where}photos[{j}]", f"{size} bytes, at most {max_photo_bytes} per photo")

    def classify(blobs: list[bytes], names: list[str], facts: DeclaredFacts, top_k: int | None,
                 code: str | None, stop: threading.Event) -> dict:
        with decoders:
            photos, x = clf.prepare(blobs, stop)
        with slots:
            result = clf.predict_item(photos, x, facts, 5 if top_k is None else top_k, stop, code=code)
        for p, name in zip(result.photos, names):  # "<bytes #j>" in the API; the client knows file names
            if p.error and p.error.startswith(p.photo + ": "):
                p.error = name + p.error[len(p.photo):]
            p.photo = name
        return result.to_dict()

    async def run(request: Request, *job) -> dict | None:
        """``classify(*job)`` in the threadpool, stopped when the client disconnects (None then)."""
        stop = request.scope.get(STOP) or threading.Event()

        async def watch() -> None:
            while not stop.is_set():
                if await request.is_disconnected():
                    logger.info("client gone: stopping the classification of %s", request.url.path)
                    stop.set()
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        try:
            return await run_in_threadpool(classify, *job, stop)
        except Cancelled:
            return None
        finally:
            watcher.cancel()

    def gone() -> JSONResponse:  # the client disconnected or the deadline passed: nobody reads this
        return _error(503, "request: stopped (client disconnected or request timeout)")

    @app.get("/healthz", summary="liveness: the model is loaded")
    async def healthz() -> dict:
        return {"status": "ok", "model": clf.info}

    @app.get("/v1/model", summary="the model card: attributes, backbone, version, metrics, checksum")
    async def model_info() -> JSONResponse:
        metrics = meta.get("metrics", {})
        return JSONResponse(_finite({
            "name": clf.path.name, "backbone": meta["backbone"], "members": clf.info["members"],
            "mirror": clf.info["mirror"], "runtime": clf.info["runtime"], "attributes": meta["attributes"],
            "version": {"shoeclass": __version__, "format": meta.get("format_version"),
                        "schema": SCHEMA_VERSION},
            "metrics": {split: m.get("all", {}).get("summary") for split, m in metrics.items()
                        if isinstance(m, dict)},
            "sha256": meta["sha256"], "trunk_sha256": meta.get("trunk", {}).get("sha256"),
            "preprocessing": meta.get("preprocessing"), "limits": limits,
            "materials": None if clf.materials is None else
            {part: list(h.classes) for part, h in clf.materials.parts.items()}}))

    @app.post("/v1/classify", summary="classify the photos of one item",
              response_description="ItemResult.to_dict() (docs/service.md)")
    @_with_fact_form_fields
    async def classify_one(request: Request,
                           photos: Annotated[list[UploadFile], File(description="the photos of one item")],
                           top_k: Annotated[int | None, Form(ge=1, le=100)] = None,
                           code: Annotated[str | None, Form(description="a declared 10-digit code to check against "
                                                                        "the photos (result: check)")] = None,
                           **facts: str | None) -> JSONResponse:
        # The fact parameters document the form in OpenAPI; the values are taken from the parsed
        # form, where the long DeclaredFacts names are accepted too and a typo must not pass silently.
        form = await request.form()
        unknown = sorted(set(form.keys()) - set(ALIASES) - {"photos", "top_k", "code"})
        if unknown:
            raise Rejected(422, unknown[0], f"unknown form field; allowed: photos, top_k, code, {sorted(ALIASES)}")
        twice = sorted(k for k in form.keys() if k != "photos" and len(form.getlist(k)) > 1)
        if twice:
            raise Rejected(422, twice[0], "sent more than once; send each field once")
        facts = _facts({k: form.get(k) for k in ALIASES if k in form})
        code = _code(form.get("code"))
        check_photos([p.size or 0 for p in photos])
        blobs = [await p.read() for p in photos]  # all in memory at most max_request_bytes
        check_photos([len(b) for b in blobs])
        names = [p.filename or f"photos[{j}]" for j, p in enumerate(photos)]
        result = await run(request, blobs, names, facts, top_k, code)
        return gone() if result is None else JSONResponse(result)

    @app.post("/v1/classify/batch", summary="classify several items (JSON, base64 photos)",
              response_description='{"schema_version", "items": [{"id", "result": ItemResult.to_dict()}]}')
    async def classify_batch(request: Request, body: BatchRequest) -> JSONResponse:
        if len(body.items) > max_batch_items:
            raise Rejected(422, "items", f"{len(body.items)} items, at most {max_batch_items} per request")
        jobs = []
        for i, item in enumerate(body.items):
            where = f"items[{i}]."
            blobs = []
            for j, p in enumerate(item.photos):
                try:
                    blobs.append(base64.b64decode(p.data, validate=True))
                except (binascii.Error, ValueError):
                    raise Rejected(422, f"{where}photos[{j}].data", "not valid base64") from None
            check_photos([len(b) for b in blobs], where)
            names = [p.name or f"photos[{j}]" for j, p in enumerate(item.photos)]
            declared = dict(item.declared or {})
            code = _code(declared.pop("code", None), where + "declared.")
            jobs.append((item.id, blobs, names, _facts(declared, where + "declared."), item.top_k, code))
        results = []
        for job in jobs:
            result = await run(request, *job[1:])
            if result is None:
                return gone()
            results.append({"id": job[0], "result": result})
        return JSONResponse({"schema_version": SCHEMA_VERSION, "items": results})

    return app


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8080, header_timeout: float = 10.0,
                  log_level: str = "info") -> "uvicorn.Config":
    """uvicorn's settings for ``app``: connections that send no complete request headers within
    ``header_timeout`` s (idle, or trickling them byte by byte) are closed, as are idle
    keep-alive connections after the same time."""
    import uvicorn

    from ._guard import header_timeout_protocol

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=header_timeout,
                          http=header_timeout_protocol(header_timeout))


def serve(host: str = "127.0.0.1", port: int = 8080, model: str | Path | None = None, header_timeout: float = 10.0,
          **limits: Any) -> None:
    """Load the model and serve the API with uvicorn until interrupted."""
    import uvicorn

    uvicorn.Server(server_config(create_app(model, **limits), host, port, header_timeout)).run()
