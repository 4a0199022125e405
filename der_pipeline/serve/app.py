"""The HTTP layer: FastAPI routes in the OpenAI chat-completions format, OpenAI-style JSON errors.

POST /v1/chat/completions  the last user message is the question; the passage comes from a ``context``
                           field or, failing that, the system message(s). ``stream: true`` sends the
                           final answer as server-sent events once routing is done.
GET  /v1/models            the model ids (service.py)
GET  /health               200 once the experts and the embedder are loaded (they load before the
                           server listens)

Handlers are plain ``def``s, so FastAPI runs each request on its thread pool; the experts' locks
(router/live.py) serialise calls to one model. One log line per request, errors included.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from der_pipeline.router.live import ExpertCallError, InputError, PromptTooLongError
from der_pipeline.serve.service import Question, RouterService, UnknownModelError

log = logging.getLogger("der_pipeline.serve")


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
    """The fields used; the rest of the OpenAI request (temperature, max_tokens, ...) is accepted and
    ignored: decoding follows params.yaml (generation.*), as in the tree the policy was trained on."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    context: str | None = None

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
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def create_app(service: RouterService) -> FastAPI:
    app = FastAPI(title="der-pipeline router", description="DER: a PPO policy routing each question through a "
                  "pool of local LLM experts; OpenAI-compatible.")

    @app.middleware("http")
    async def one_line_per_request(request: Request, call_next):
        t0 = time.perf_counter()
        request.state.note = ""
        response = await call_next(request)
        log.info("%s %s %d %.2fs %s", request.method, request.url.path, response.status_code,
                 time.perf_counter() - t0, request.state.note)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = f"invalid request body: {where or 'body'}: {first.get('msg', 'malformed')}"
        request.state.note = msg
        return error(400, msg, "invalid_request_error", where or None, "invalid_body")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "dataset": service.dataset, "models": service.model_ids()}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": service.created,
                                            "owned_by": "der-pipeline"} for m in service.model_ids()]}

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest, request: Request):
        t0 = time.perf_counter()
        request.state.note = f"model={body.model}"
        try:
            q = body.question()
            routed = service.answer(body.model, q)
        except UnknownModelError as exc:
            request.state.note += f" error={exc}"
            return error(404, str(exc), "invalid_request_error", "model", "model_not_found")
        except (BadRequest, InputError) as exc:
            request.state.note += f" error={exc}"
            code = "context_length_exceeded" if isinstance(exc, PromptTooLongError) else "invalid_value"
            return error(400, str(exc), "invalid_request_error", getattr(exc, "param", "messages"), code)
        except ExpertCallError as exc:
            log.exception("expert %s failed", exc.expert)
            request.state.note += f" error={exc}"
            return error(502, str(exc), "expert_error", None, "expert_failed")
        latency = time.perf_counter() - t0
        request.state.note += (f" path={routed.path} steps={len(routed.steps)} cost={routed.cost_gflops:.1f}GFLOPs "
                               f"latency={latency:.2f}s")
        body_out = service.completion(body.model, routed, latency)
        if not body.stream:
            return body_out
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(sse_chunks(body_out, include_usage), media_type="text/event-stream")

    return app


def sse_chunks(done: dict, include_usage: bool):
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
