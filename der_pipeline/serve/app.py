"""The HTTP layer: FastAPI routes in the OpenAI chat-completions format, OpenAI-style JSON errors.

POST /v1/chat/completions  the last user message is the question; the passage comes from a ``context``
                           field or, failing that, the system message(s). ``stream: true`` sends the
                           final answer as server-sent events once routing is done.
GET  /v1/models            the model ids (service.py)
GET  /health               200 once the experts and the embedder are loaded (they load before the
                           server listens), with the experts whose circuit breaker is open; never needs the key
GET  /metrics              Prometheus' text format (metrics.py)

The gateway (``Gateway``, a plain ASGI middleware in front of FastAPI) checks, before any body is parsed: the
API key (``Authorization: Bearer KEY``; 401), the bound on chat completions in flight (429 with Retry-After)
and the body's size (413, from its Content-Length, or counted as it arrives); it writes one log line per
request (control characters escaped, so a client cannot forge a line) and counts the request in /metrics.
Routing runs on the event loop (router/live.py ``arun``) under a deadline (504 naming the steps done), and a
client that disconnects cancels the calls left. Every error, 404 and 405 included, has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``, and no response names a path of the server's.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from der_pipeline.router.live import ExpertCallError, ExpertUnavailableError, InputError, PromptTooLongError, Routed
from der_pipeline.serve.metrics import Metrics
from der_pipeline.serve.service import Question, RouterService, Services, UnknownModelError, scrub

log = logging.getLogger("der_pipeline.serve")

CHAT = "/v1/chat/completions"
OPEN_PATHS = ("/health",)  # answered without the API key


@dataclass
class ServeOptions:
    """The gateway's limits (`der-pipeline serve --help` documents each)."""

    api_key: str | None = None
    max_in_flight: int = 64
    timeout_s: float = 300.0
    max_body_bytes: int = 1_000_000
    max_input_chars: int = 100_000


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return " ".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields used. ``n`` other than 1 and a ``max_tokens`` / ``max_completion_tokens`` under 1 are refused
    (400); the rest of the OpenAI request (temperature, top_p, stop, seed, max_tokens, ...) is accepted and
    ignored: decoding follows params.yaml (generation.*), as in the tree the policy was trained on."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    context: str | None = None
    n: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None

    def check_supported(self) -> None:
        if self.n is not None and self.n != 1:
            raise BadRequest(f"n = {self.n}: this router returns one answer per request; send n = 1 or leave it out",
                             "n")
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadRequest(f"{name} = {value}: must be a positive integer (decoding follows the server's "
                                 f"generation.max_tokens; a positive value is accepted and ignored)", name)

    def question(self) -> Question:
        users = [m for m in self.messages if m.role == "user"]
        if not users:
            raise BadRequest("messages has no user message; the last user message is the question", "messages")
        question = users[-1].text()
        if not question.strip():
            raise BadRequest("the question (the last user message) is empty; ask something", "messages")
        context = self.context
        if context is None:
            context = "\n".join(m.text() for m in self.messages if m.role in ("system", "developer"))
        return Question(question, context)


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.code = param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": scrub(message), "type": kind, "param": param, "code": code}}


def error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(message, kind, param, code), headers=headers)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def loggable(text: str, limit: int = 300) -> str:
    """``text`` for a log line: control characters (newlines among them) escaped, cut to ``limit``."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine's loopback only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def bind_warning(host: str, api_key: str | None) -> str | None:
    """The warning `serve` prints when it listens beyond loopback with no API key (None: nothing to say)."""
    if api_key or is_loopback(host):
        return None
    return (f"warning: listening on {host} with no API key: anyone who can reach this address can use the experts; "
            f"set --api-key or DER_API_KEY")


class Gateway:
    """The ASGI middleware in front of the app: key, in-flight bound, body size, one log line, the request count
    (module docstring)."""

    def __init__(self, app, options: ServeOptions, metrics: Metrics):
        self.app, self.options, self.metrics = app, options, metrics
        self.in_flight = 0
        key = options.api_key
        self._auth = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        state["note"] = ""
        status = []

        async def sending(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        path, chat = scope["path"], scope["path"] == CHAT
        counted = False
        try:
            if self._auth is not None and path not in OPEN_PATHS and not self._authorized(scope):
                state["note"] = "no or wrong API key"
                await self._refuse(sending, 401, "Incorrect API key provided: send it as 'Authorization: Bearer "
                                   "KEY' (serve --api-key / DER_API_KEY)", "invalid_request_error", "invalid_api_key")
            elif chat and self.in_flight >= self.options.max_in_flight:
                state["note"] = f"over {self.options.max_in_flight} in flight"
                await self._refuse(sending, 429, f"the server is answering its limit of {self.options.max_in_flight} "
                                   f"requests at once (serve --max-in-flight); retry shortly", "rate_limit_error",
                                   "rate_limit_exceeded", [(b"retry-after", b"1")])
            else:
                if chat:
                    self.in_flight += 1
                    self.metrics.in_flight.inc()
                    counted = True
                replay = await self._body(scope, receive, sending, state)
                if replay is not None:
                    await self.app(scope, replay, sending)
        except Exception as exc:  # noqa: BLE001 - one line in the log and OpenAI's 500, never a traceback
            state["note"] += f" internal error: {type(exc).__name__}: {exc}"
            log.debug("internal error", exc_info=True)
            if not status:
                await self._refuse(sending, 500, "internal server error (the server's log has the details)",
                                   "server_error", "internal_error")
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
            seconds = time.perf_counter() - t0
            code = status[0] if status else 499  # nothing sent: the client went away first
            log.info("%s %s %d %.3fs %s", loggable(scope.get("method", "")), loggable(path), code, seconds,
                     loggable(state.get("note", ""), 600))
            if chat:
                self.metrics.request(state.get("model", "none"), code, seconds)

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._auth)
        return False

    async def _body(self, scope, receive, send, state):
        """The body, read within ``max_body_bytes`` before the app parses it (413 past it), and a ``receive`` that
        replays it and then passes on (the disconnect). None where the request was answered (413) or the client left."""
        limit = self.options.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > limit:
                    await self._too_large(send, state, f"{length} bytes")
                    return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                state["note"] += " client disconnected while sending"
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(send, state, f"over {limit} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return replay

    async def _too_large(self, send, state, size: str) -> None:
        state["note"] = f"body too large ({size})"
        await self._refuse(send, 413, f"the request body ({size}) is over this server's limit of "
                           f"{self.options.max_body_bytes} bytes (serve --max-body-bytes)", "invalid_request_error",
                           "request_too_large", [(b"connection", b"close")])

    @staticmethod
    async def _refuse(send, status: int, message: str, kind: str, code: str, headers=()) -> None:
        data = json.dumps(error_body(message, kind, None, code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                *headers]})
        await send({"type": "http.response.body", "body": data})


def done_so_far(routed: Routed) -> str:
    steps = [f"{s.action} by {s.expert} ({s.latency_s:.2f} s)" for s in routed.steps]
    done = f"{len(steps)} step(s) finished: {', '.join(steps)}" if steps else "no step finished"
    return done + (f"; in progress and cancelled: {routed.in_progress}" if routed.in_progress else "")


async def wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (the body has been read, so the next message is the disconnect)."""
    for _ in range(100):  # bounded: a server sends nothing else after the body
        if (await request.receive())["type"] == "http.disconnect":
            return
    await asyncio.Event().wait()


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a task cancelled too late may still end in an error


def create_app(service: RouterService | Services, options: ServeOptions | None = None,
               close_experts: bool = False) -> FastAPI:
    """The app for one dataset's service, or for several (``Services``: ids qualified by the dataset);
    ``close_experts``: stop the experts' engines (llama-server children) at shutdown (a worker process)."""
    options = options or ServeOptions()
    services = service if isinstance(service, Services) else Services([service])
    metrics = Metrics(services.experts())
    for live in services.lives():
        live.on_call = metrics.expert_call

    @asynccontextmanager
    async def lifespan(app):
        yield
        for live in services.lives():
            await live.aclose()
        if close_experts:
            for live in services.lives():
                live.close()

    app = FastAPI(title="der-pipeline router", description="DER: a PPO policy routing each question through a "
                  "pool of local LLM experts; OpenAI-compatible.", lifespan=lifespan)
    app.add_middleware(Gateway, options=options, metrics=metrics)
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = f"invalid request body: {where or 'body'}: {first.get('msg', 'malformed')}"
        request.state.note = msg
        return error(400, msg, "invalid_request_error", where or None, "invalid_body")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        msg = (f"no route {request.method} {request.url.path}; this server has POST {CHAT}, GET /v1/models, "
               f"GET /health, GET /metrics" if exc.status_code in codes else str(exc.detail))
        request.state.note = f"{exc.status_code}"
        return error(exc.status_code, msg, "invalid_request_error", None, codes.get(exc.status_code, "http_error"),
                     headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health() -> dict:
        breakers = {k: {**v, "last_error": scrub(v["last_error"])} for k, v in services.open_breakers().items()}
        return {"status": "degraded" if breakers else "ok", "dataset": services.default.dataset,
                "datasets": services.datasets, "models": services.model_ids(), "open_breakers": breakers,
                "worker": os.getpid()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(services.open_breakers()), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": services.created,
                                            "owned_by": "der-pipeline", **services.describe(m)}
                                           for m in services.model_ids()]}

    @app.post(CHAT)
    async def chat(body: ChatRequest, request: Request):
        t0 = time.perf_counter()
        state = request.state
        state.note = f"model={body.model}"
        state.model = services.canonical(body.model) or "unknown"
        try:
            body.check_supported()
            q = body.question()
            chars = len(q.question) + len(q.context)
            if chars > options.max_input_chars:
                raise BadRequest(f"the question and context are {chars} characters, over this server's limit of "
                                 f"{options.max_input_chars} (serve --max-input-chars)", "messages", "input_too_long")
            svc, target = services.resolve(body.model)
            routed = svc.live.start(q.question, q.context)
        except UnknownModelError as exc:
            state.note += f" error={exc}"
            return error(404, str(exc), "invalid_request_error", "model", "model_not_found")
        except (BadRequest, InputError) as exc:
            state.note += f" error={exc}"
            return error(400, str(exc), "invalid_request_error", getattr(exc, "param", "messages"),
                         getattr(exc, "code", "invalid_value"))
        work = asyncio.ensure_future(svc.aanswer(target, routed))
        work.add_done_callback(_retrieve)
        gone = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({work, gone}, timeout=options.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
        if not work.done() or work.cancelled():
            if gone.done() and not gone.cancelled():
                state.note += f" client disconnected; {done_so_far(routed)}; no further expert call"
                return Response(status_code=499)
            msg = (f"the request's deadline of {options.timeout_s:g} s (serve --timeout-s) passed; "
                   f"{done_so_far(routed)}")
            state.note += f" error={msg}"
            return error(504, msg, "timeout_error", None, "deadline_exceeded")
        try:
            routed = work.result()
        except PromptTooLongError as exc:
            state.note += f" error={exc}"
            return error(400, str(exc), "invalid_request_error", "messages", "context_length_exceeded")
        except InputError as exc:
            state.note += f" error={exc}"
            return error(400, str(exc), "invalid_request_error", "messages", "invalid_value")
        except ExpertUnavailableError as exc:
            state.note += f" error={exc}"
            return error(503, str(exc), "expert_error", None, "expert_unavailable",
                         headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})
        except ExpertCallError as exc:
            state.note += f" error={exc}"
            return error(502, str(exc), "expert_error", None, "expert_failed")
        latency = time.perf_counter() - t0
        state.note += (f" path={routed.path} steps={len(routed.steps)} cost={routed.cost_gflops:.1f}GFLOPs "
                       f"latency={latency:.2f}s")
        if routed.degraded:
            state.note += " degraded=" + ",".join(f"{d['expert']}({d['reason'][:80]})" for d in routed.degraded)
        metrics.answered(state.model, routed.cost_gflops, [d["expert"] for d in routed.degraded])
        body_out = svc.completion(body.model, routed, latency, local=services.split(body.model)[1])
        if not body.stream:
            return JSONResponse(body_out)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(sse_chunks(body_out, include_usage), media_type="text/event-stream")

    return app


async def sse_chunks(done: dict, include_usage: bool):
    """The finished completion as chat.completion.chunk events: the role, the answer word by word, then
    finish_reason with the ``der`` extension, the usage if asked for, and [DONE]."""
    base = {"id": done["id"], "object": "chat.completion.chunk", "created": done["created"], "model": done["model"]}

    def event(delta: dict, finish: str | None = None, **extra) -> str:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    text = done["choices"][0]["message"]["content"]
    words = text.split(" ")
    for i, word in enumerate(words):
        yield event({"content": word if i == 0 else " " + word})
    yield event({}, "stop", der=done["der"])
    if include_usage:
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': done['usage']})}\n\n"
    yield "data: [DONE]\n\n"
