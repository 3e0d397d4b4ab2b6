"""The official OpenAI SDK's Responses API and the official Anthropic SDK's Messages API against a
running tollgate gateway.

Run by agent/tests/it/typed_sdks.rs, which starts the gateway in-process (in front of the mock
upstream or a real LiteLLM) and gives this script its address and API keys through the
environment (never argv):

  TOLLGATE_ROOT_URL  http://127.0.0.1:PORT (the Anthropic SDK adds /v1 itself)
  TOLLGATE_KEY_RICH  a user with credit
  TOLLGATE_KEY_POOR  a user with none
  TOLLGATE_RESPONSES_MODEL, TOLLGATE_MESSAGES_MODEL  the models to ask for
  TOLLGATE_RESPONSES_TEXT, TOLLGATE_MESSAGES_TEXT    the prompts (the mock's directives)
  TOLLGATE_SKIP_COUNT_TOKENS                          set: no count_tokens call

Each call is made as an application would make it, and what the SDK made of the answer (or the
exception it raised) recorded. The script prints exactly one JSON line on stdout, then exits 1
if any of its own checks failed; the Rust test asserts on the JSON and on the books.
"""

import json
import os
import sys
import traceback

import anthropic
import openai

ROOT = os.environ["TOLLGATE_ROOT_URL"]
RICH = os.environ["TOLLGATE_KEY_RICH"]
POOR = os.environ["TOLLGATE_KEY_POOR"]
RESPONSES_MODEL = os.environ["TOLLGATE_RESPONSES_MODEL"]
MESSAGES_MODEL = os.environ["TOLLGATE_MESSAGES_MODEL"]
RESPONSES_TEXT = os.environ["TOLLGATE_RESPONSES_TEXT"]
MESSAGES_TEXT = os.environ["TOLLGATE_MESSAGES_TEXT"]


def oai(api_key):
    # No retries: a refusal must surface as the first answer, not be retried into another.
    return openai.OpenAI(base_url=ROOT + "/v1", api_key=api_key, max_retries=0, timeout=30.0)


def claude(api_key):
    return anthropic.Anthropic(base_url=ROOT, api_key=api_key, max_retries=0, timeout=30.0)


results = {"openai_version": openai.__version__, "anthropic_version": anthropic.__version__}
failures = []


def check(name, ok, detail):
    if not ok:
        failures.append(f"{name}: {detail}")


def step(name, fn):
    """Runs one call; an unexpected exception is recorded, not raised, so the others still run."""
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 - anything an SDK raises is a finding
        results[name] = {"unexpected_exception": f"{type(e).__name__}: {e}"}
        failures.append(f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")


def responses_usage(usage):
    return {
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.input_tokens_details.cached_tokens,
        "output_tokens": usage.output_tokens,
    }


def responses_create():
    raw = oai(RICH).responses.with_raw_response.create(
        model=RESPONSES_MODEL, input=RESPONSES_TEXT, max_output_tokens=200
    )
    response = raw.parse()
    check("responses_create", response.output_text != "", "no output text")
    return {
        "id": response.id,
        "status": response.status,
        "text": response.output_text,
        "usage": responses_usage(response.usage),
        "credits_charged": raw.headers.get("x-tollgate-credits-charged"),
    }


def responses_stream():
    stream = oai(RICH).responses.create(
        model=RESPONSES_MODEL, input=RESPONSES_TEXT, max_output_tokens=200, stream=True
    )
    kinds, text, final = [], "", None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    check("responses_stream", final is not None, f"no terminal event in {kinds}")
    return {
        "first": kinds[0],
        "last": kinds[-1],
        "text": text,
        "usage": responses_usage(final.usage) if final else None,
    }


def messages_create():
    raw = claude(RICH).messages.with_raw_response.create(
        model=MESSAGES_MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": MESSAGES_TEXT}],
    )
    message = raw.parse()
    return {
        "id": message.id,
        "type": message.type,
        "text": "".join(b.text for b in message.content if b.type == "text"),
        "stop_reason": message.stop_reason,
        "usage": message.usage.model_dump(exclude_none=True),
        "credits_charged": raw.headers.get("x-tollgate-credits-charged"),
        "request_id": raw.headers.get("request-id"),
    }


def messages_stream():
    with claude(RICH).messages.stream(
        model=MESSAGES_MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": MESSAGES_TEXT}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return {
        "text": text,
        "stop_reason": final.stop_reason,
        "usage": final.usage.model_dump(exclude_none=True),
    }


def count_tokens():
    counted = claude(RICH).messages.count_tokens(
        model=MESSAGES_MODEL, messages=[{"role": "user", "content": "one two three"}]
    )
    return {"input_tokens": counted.input_tokens}


def refused(fn):
    """What the SDK raised for a call that must be refused."""
    try:
        fn()
    except (openai.APIStatusError, anthropic.APIStatusError) as e:
        body = e.body if isinstance(e.body, dict) else {}
        error = body.get("error", body) if isinstance(body, dict) else {}
        return {
            "error_class": type(e).__name__,
            "status": e.status_code,
            "type": error.get("type") if isinstance(error, dict) else None,
            "message": str(e),
        }
    raise AssertionError("the call was not refused")


step("responses_create", responses_create)
step("responses_stream", responses_stream)
step("messages_create", messages_create)
step("messages_stream", messages_stream)
if not os.environ.get("TOLLGATE_SKIP_COUNT_TOKENS"):
    # LiteLLM 1.82.6 sends an Anthropic model's count to api.anthropic.com whatever its
    # api_base: not run in front of it (no traffic leaves this machine).
    step("count_tokens", count_tokens)
step(
    "messages_bogus_key",
    lambda: refused(
        lambda: claude("tg_not_a_real_key").messages.create(
            model=MESSAGES_MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    ),
)
step(
    "messages_poor",
    lambda: refused(
        lambda: claude(POOR).messages.create(
            model=MESSAGES_MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    ),
)
step(
    "messages_poor_stream",
    lambda: refused(
        lambda: list(
            claude(POOR)
            .messages.stream(
                model=MESSAGES_MODEL,
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
            )
            .__enter__()
            .text_stream
        )
    ),
)
step(
    "responses_bogus_key",
    lambda: refused(
        lambda: oai("tg_not_a_real_key").responses.create(model=RESPONSES_MODEL, input="hi")
    ),
)
step(
    "responses_poor",
    lambda: refused(lambda: oai(POOR).responses.create(model=RESPONSES_MODEL, input="hi")),
)
results["failures"] = failures
print(json.dumps(results))
sys.exit(1 if failures else 0)
