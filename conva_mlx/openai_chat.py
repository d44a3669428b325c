"""One OpenAI-compatible chat client, for the judge and the data generator.

The key comes from an environment variable (never printed, logged or written); transient
failures (rate limits, time-outs, lost connections, 5xx) are retried with exponential
backoff; anything else, or running out of retries, is one clear ConvaError.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conva_mlx.errors import ConvaError

NO_KEY = "none"  # --api-key-env none: a local server that needs no key
_DUMMY_KEY = "not-needed"  # the client insists on some string


def api_key_from_env(env_name: str, option: str = "--api-key-env") -> str:
    """The key from the named environment variable; 'none' means the server needs none."""
    if env_name.strip().lower() == NO_KEY:
        return _DUMMY_KEY
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise ConvaError(f"set {env_name} to your API key (or {option} NAME to read "
                         f"another variable, or {option} none for a local server)")
    return key


@dataclass
class RetryPolicy:
    max_retries: int = 5  # retries per request after the first attempt
    backoff: float = 1.0  # first wait in seconds; doubles each retry
    max_backoff: float = 60.0


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


class ChatClient:
    """Chat completions with retries. `complete` returns the answer's text, or None when
    the server's response is malformed (no choices, no text)."""

    def __init__(self, base_url: str | None, api_key: str, timeout: float = 60.0,
                 policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 on_retry: Callable[[], None] | None = None) -> None:
        import openai  # a second of start-up that only the commands that talk need

        self.where = base_url or "the OpenAI API"
        self.policy = policy or RetryPolicy()
        self.sleep, self.on_retry = sleep, on_retry
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                                    timeout=timeout)

    def complete(self, model: str, messages: list[dict[str, str]], temperature: float = 0.0,
                 max_tokens: int | None = None) -> str | None:
        import openai

        retryable = (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                     openai.InternalServerError)
        extra: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
        attempts = max(1, self.policy.max_retries + 1)
        for attempt in range(attempts):
            try:
                response = self.client.chat.completions.create(
                    model=model, messages=messages,  # type: ignore[arg-type]
                    temperature=temperature, **extra)
            except retryable as exc:
                if attempt + 1 >= attempts:
                    raise self._give_up(exc, attempts) from None
                if self.on_retry is not None:
                    self.on_retry()
                self.sleep(min(self.policy.backoff * 2 ** attempt, self.policy.max_backoff))
                continue
            except openai.APIResponseValidationError:
                return None
            except openai.APIStatusError as exc:
                raise ConvaError(f"{self.where} refused the request: HTTP "
                                 f"{exc.status_code} ({_short(exc)})") from None
            try:
                content = response.choices[0].message.content
            except (AttributeError, IndexError, TypeError):
                return None
            return content if isinstance(content, str) else None
        raise AssertionError("unreachable")

    def _give_up(self, exc: Exception, attempts: int) -> ConvaError:
        import openai

        if isinstance(exc, openai.RateLimitError):
            return ConvaError(f"{self.where} kept rate-limiting (HTTP 429) after {attempts} "
                              f"attempt(s); try again later")
        if isinstance(exc, openai.InternalServerError):
            return ConvaError(f"{self.where} kept failing (HTTP {exc.status_code}) after "
                              f"{attempts} attempt(s)")
        return ConvaError(f"cannot reach the server at {self.where} after {attempts} "
                          f"attempt(s) ({_short(exc)})")
