"""A small client for OpenAI-compatible chat servers (vLLM, ``transformers serve``, llama.cpp's
server, hosted APIs): used by the endpoint judge and by generation through a server.

Standard library only (urllib): one POST per request, a timeout, retries with exponential backoff
on connection errors, timeouts, HTTP 429 and 5xx, no retry on other 4xx (the request itself is
wrong), and errors that name the server and the fix.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rosi.errors import RosiError

API_KEY_ENV = ("ROSI_API_KEY", "OPENAI_API_KEY")


class EndpointError(RosiError):
    """An OpenAI-compatible server could not be reached or gave an unusable answer."""


def parse_spec(spec: str, what: str = "server") -> tuple[str, str | None]:
    """``openai:BASE_URL[#MODEL]`` (the ``openai:`` prefix optional) -> (base URL, model)."""
    rest = spec.removeprefix("openai:")
    if not rest.startswith(("http://", "https://")):
        raise EndpointError(f"the {what} needs a base URL: openai:http://HOST:PORT/v1[#MODEL], got {spec!r}")
    url, _, model = rest.partition("#")
    return url.rstrip("/"), model or None


@dataclass
class Endpoint:
    base_url: str
    model: str | None = None
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    api_key_env: tuple[str, ...] = API_KEY_ENV
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.api_key is None:
            self.api_key = next((os.environ[k] for k in self.api_key_env if os.environ.get(k)), None)

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        """The server's JSON answer (its shape is checked by the caller)."""
        request = urllib.request.Request(
            f"{self.base_url}{path}", data=json.dumps(payload).encode(), headers=self._headers(), method="POST"
        )
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code != 429:  # the request is wrong: retrying will not help
                    detail = e.read().decode(errors="replace")[:300]
                    raise EndpointError(f"{self.base_url} refused the request: HTTP {e.code} {detail}") from None
                last = e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = e
            except json.JSONDecodeError:
                raise EndpointError(
                    f"{self.base_url}{path} answered with something that is not JSON; is this an OpenAI-compatible server?"
                ) from None
            except UnicodeDecodeError as e:
                raise EndpointError(
                    f"{self.base_url}{path} answered with bytes that are not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                    f"{e.start}); is this an OpenAI-compatible server?"
                ) from None
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise EndpointError(
            f"{self.base_url} is unreachable after {self.retries + 1} tries ({last}); check that the server is running and the URL ends in /v1"
        )

    def check_reachable(self, timeout: float = 10.0) -> None:
        """Fail now, not after hours of generation, when nothing answers at the base URL (any HTTP
        answer, even an error, means a server is there)."""
        request = urllib.request.Request(f"{self.base_url}/models", headers=self._headers(), method="GET")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as e:
            raise EndpointError(f"{self.base_url} does not answer ({e}); start the server, or check the URL (it ends in /v1)") from None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int) -> str:
        """The reply text of one greedy chat completion."""
        payload: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if self.model:
            payload["model"] = self.model
        answer = self.post("/chat/completions", payload)
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.base_url} answered without choices[0].message.content: {str(answer)[:200]}") from None
        if text is not None and not isinstance(text, str):
            raise EndpointError(
                f"{self.base_url} answered with choices[0].message.content of type {type(text).__name__}, not text: {str(text)[:200]}"
            )
        return text or ""

    def chat_many(self, conversations: list[list[dict[str, str]]], *, max_tokens: int, workers: int = 8) -> list[str]:
        """Replies to many conversations, ``workers`` requests in flight (servers batch them)."""
        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(conversations)))) as pool:
            return list(pool.map(lambda m: self.chat(m, max_tokens=max_tokens), conversations))
