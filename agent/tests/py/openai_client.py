"""The official OpenAI Python SDK against a running tollgate gateway.

Run by agent/tests/it/openai_sdk.rs, which starts the gateway in-process and gives this script
its address and two API keys through the environment (never argv):

  TOLLGATE_BASE_URL  http://127.0.0.1:PORT/v1
  TOLLGATE_KEY_RICH  a user with credit
  TOLLGATE_KEY_POOR  a user with almost none

Each check is run with the SDK as an application would use it, and its outcome recorded. The
script prints exactly one JSON line on stdout (what each call returned, or the exception it
raised), then exits 1 if any of its own checks failed; the Rust test asserts on the JSON too, and
checks the books.
"""

import json
import os
import sys
import traceback

import openai

BASE_URL = os.environ["TOLLGATE_BASE_URL"]
RICH = os.environ["TOLLGATE_KEY_RICH"]
POOR = os.environ["TOLLGATE_KEY_POOR"]
CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
MESSAGES = [{"role": "user", "content": "hello there"}]


def client(api_key):
    # No retries: a refusal must surface as the first answer, not be retried into a different one.
    return openai.OpenAI(base_url=BASE_URL, api_key=api_key, max_retries=0, timeout=20.0)


results = {"sdk_version": openai.__version__}
failures = []


def check(name, ok, detail):
    if not ok:
        failures.append(f"{name}: {detail}")


def step(name, fn):
    """Runs one check; an unexpected exception is recorded, not raised, so the others still run."""
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 - anything the SDK raises is a finding
        results[name] = {"unexpected_exception": f"{type(e).__name__}: {e}"}
        failures.append(f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")


def chat():
    raw = client(RICH).chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES
    )
    completion = raw.parse()
    choice = completion.choices[0]
    usage = completion.usage
    out = {
        "id": completion.id,
        "model": completion.model,
        "content": choice.message.content,
        "role": choice.message.role,
        "finish_reason": choice.finish_reason,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "total_tokens": usage.total_tokens if usage else None,
        "credits_charged": raw.headers.get("x-tollgate-credits-charged"),
        "balance": raw.headers.get("x-tollgate-balance"),
        "request_id": raw.headers.get("x-tollgate-request-id"),
    }
    check("chat", bool(choice.message.content), f"empty content: {out}")
    check("chat", usage is not None and usage.total_tokens > 0, f"no usage: {out}")
    return out


def stream(include_usage):
    def run():
        kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
        chunks = client(RICH).chat.completions.create(
            model=CHAT_MODEL, messages=MESSAGES, stream=True, **kwargs
        )
        content, finish_reason, usage, count = [], None, None, 0
        with chunks:
            for chunk in chunks:
                count += 1
                for choice in chunk.choices:
                    if choice.delta.content:
                        content.append(choice.delta.content)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                if chunk.usage is not None:
                    usage = {
                        "prompt_tokens": chunk.usage.prompt_tokens,
                        "completion_tokens": chunk.usage.completion_tokens,
                        "total_tokens": chunk.usage.total_tokens,
                    }
        out = {
            "chunks": count,
            "content": "".join(content),
            "deltas": len(content),
            "finish_reason": finish_reason,
            "usage": usage,
        }
        name = "stream_usage" if include_usage else "stream"
        check(name, finish_reason == "stop", f"did not finish: {out}")
        check(name, bool(out["content"]), f"empty content: {out}")
        check(name, (usage is not None) == include_usage, f"usage chunk: {out}")
        return out

    return run


def embeddings():
    # The SDK asks for base64 unless told otherwise and decodes either form; ask for neither.
    response = client(RICH).embeddings.create(
        model=EMBEDDING_MODEL, input=["hello there", "general kenobi"]
    )
    out = {
        "count": len(response.data),
        "dims": [len(d.embedding) for d in response.data],
        "all_floats": all(isinstance(x, float) for d in response.data for x in d.embedding),
        "prompt_tokens": response.usage.prompt_tokens if response.usage else None,
    }
    check("embeddings", out["count"] == 2 and min(out["dims"]) > 0, f"vectors: {out}")
    return out


def completions():
    response = client(RICH).completions.create(
        model=CHAT_MODEL, prompt="hello there", max_tokens=8
    )
    out = {
        "text": response.choices[0].text,
        "finish_reason": response.choices[0].finish_reason,
        "prompt_tokens": response.usage.prompt_tokens if response.usage else None,
        "completion_tokens": response.usage.completion_tokens if response.usage else None,
    }
    check("completions", bool(out["text"]), f"empty text: {out}")
    return out


def models():
    ids = [m.id for m in client(RICH).models.list()]
    check("models", CHAT_MODEL in ids, f"{CHAT_MODEL} not listed: {ids}")
    return {"ids": ids}


def refusal(name, api_key, expected, status, streaming=False):
    """A request the gateway must refuse: the SDK must raise `expected` with `status`."""

    def run():
        try:
            response = client(api_key).chat.completions.create(
                model=CHAT_MODEL, messages=MESSAGES, stream=streaming
            )
            if streaming:
                for _ in response:
                    pass
        except openai.APIStatusError as e:
            out = {
                "error_class": type(e).__name__,
                "is_api_status_error": True,
                "status": e.status_code,
                "code": e.code,
                "type": e.type,
                "message": e.message,
                "body": e.body,
            }
            check(name, isinstance(e, expected), f"raised {type(e).__name__}, not {expected.__name__}")
            check(name, e.status_code == status, f"status {e.status_code}, not {status}")
            return out
        check(name, False, "no exception raised")
        return {"error_class": None}

    return run


step("chat", chat)
step("stream", stream(include_usage=False))
step("stream_usage", stream(include_usage=True))
step("embeddings", embeddings)
step("completions", completions)
step("models", models)
# openai-python has no subclass for 402: it raises APIStatusError itself.
step("poor", refusal("poor", POOR, openai.APIStatusError, 402))
step("poor_stream", refusal("poor_stream", POOR, openai.APIStatusError, 402, streaming=True))
step("bogus", refusal("bogus", "sk-not-a-tollgate-key", openai.AuthenticationError, 401))
for name in ("poor", "poor_stream"):
    code = results[name].get("code")
    check(name, code == "insufficient_quota", f"code {code!r}, not 'insufficient_quota'")

results["failures"] = failures
print(json.dumps(results), flush=True)
sys.exit(1 if failures else 0)
