"""Hostile judges: no choice on no evidence.

A judge that gives no verdict (a server answering text that is no verdict, bytes that are not
UTF-8, a "Llama Guard" that is an ordinary chat model, one whose context is too short for its
classification prompt), or fewer verdicts than replies, stops the command with one line naming
the judge and what it returned, before anything is saved: no strength is chosen, no table or
report is made of no evidence. The conventions of :mod:`test_hostile`: one ``rosi: error:``
line, a non-zero exit, no traceback, nothing in the world changed.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import transformers as T

from conftest import save_tiny, snapshot
from rosi.cli import main
from rosi.judges import Judge, JudgeError, Verdict
from rosi.measure import RefusalMeter, judged
from rosi.model.loading import load
from test_hostile import World, make_world
from test_hostile_commands import _check, tiny_variant


class _Server(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers every chat request with ``body`` (raw bytes), and
    logs what it is asked in order (``asked``: "GET" for a reachability check, "POST" for a chat)."""

    body: bytes = b""
    asked: list[str] = []

    def do_GET(self):  # noqa: N802 - the reachability check
        type(self).asked.append("GET")
        self._send(b'{"data": []}')

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).asked.append("POST")
        self._send(type(self).body)

    def _send(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def _content(text: object) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture
def server() -> Iterator[str]:
    _Server.asked = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.fixture
def world(tmp_path, tokenizer_dir, monkeypatch) -> World:
    monkeypatch.setenv("ROSI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ROSI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return make_world(tmp_path / "w", tokenizer_dir)


def run(w: World, judge: str) -> list[str]:
    files = ["--harmful", str(w["harmful"]), "--harmless", str(w["harmless"])]
    files += ["--val-harmful", str(w["harmful"]), "--val-harmless", str(w["harmless"]), "--n-val", "4"]
    # pinned, no selection (the tiny tokenizer has no refusal words): the judge is first asked on the base model
    pin = ["--layer", "1", "--position", "-1", "--max-new-tokens", "2", "--no-compare"]
    return ["run", str(w["m"]), "--out", str(w["root"] / "out"), *files, *pin, "--judge", judge]


def short_context(w: World) -> Path:
    """A gpt2 whose context is 64 tokens, with the world's tokenizer: far too short for Llama Guard's prompt."""
    return tiny_variant(w, "short", T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64))


# (name, the server's answer or None, the command, what the error line says)
Case = tuple[str, bytes | None, Callable[[World, str], list[str]], str]


def served(prefix: str = "openai") -> Callable[[World, str], list[str]]:
    return lambda w, url: run(w, f"{prefix}:{url}")


CASES: list[Case] = [
    ("run judge server answers no verdict", _content("I think so."), served(), "gave no verdict on any of the 4 .*'I think so.'"),
    ("run judge server answers nothing", _content(""), served(), "openai:http.*answered nothing"),
    ("run prompted judge answers no verdict", _content("maybe"), served("openai-prompted"), "'maybe'"),
    ("run judge server answers bytes not UTF-8", b'{"choices": "\xff\xfe"}', served(), "not UTF-8"),
    ("run judge server answers a number", _content(7), served(), "content of type int, not text"),
    ("run llamaguard that is a chat model", None, lambda w, url: run(w, f"llamaguard:{w['m']}"), "llamaguard:.*no verdict"),
    ("run llamaguard of short context", None, lambda w, url: run(w, f"llamaguard:{short_context(w)}"), "context of 64 tokens"),
    # a random model as the llm: judge: its tokenizer has no answer letters (or its answers hold no probability)
    ("run llm judge that cannot answer", None, lambda w, url: run(w, f"llm:{w['m']}"), "(no usable answer|no token for the answer)"),
]


def test_there_are_enough_cases():
    assert len(CASES) >= 8 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,answer,argv,match", CASES, ids=[c[0] for c in CASES])
def test_hostile_judge(name, answer, argv, match, world, server, capsys):
    _Server.body = answer or b""
    args = argv(world, server)
    before = snapshot(world["root"])
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    _check(name, code, err, match)
    assert "nan" not in err.lower()
    assert snapshot(world["root"]) == before, f"{name}: files changed"


def test_eval_with_a_judge_of_no_verdict_writes_no_results(world, server, capsys):
    """rosi eval: the replies it generated stay cached (another --judge re-scores them), but no
    results, report or table is made of no evidence."""
    _Server.body = _content("no idea")
    out = world["root"] / "ev"
    args = ["eval", str(world["m"]), "--out", str(out), "--harmful", str(world["harmful"]), "--harmless", str(world["harmless"])]
    args += ["--contrast", str(world["contrast"]), "--jailbreak-templates", str(world["templates"]), "--utility", "none"]
    capsys.readouterr()
    code = main([*args, "--max-new-tokens", "2", "--judge", f"openai:{server}"])
    _check("eval", code, capsys.readouterr().err, "judge openai:.*no verdict on any of the 4 replies.*'no idea'")
    assert sorted(p.name for p in out.iterdir()) == ["eval_setup.json", "generations.jsonl"]
    assert main([*args, "--max-new-tokens", "2", "--no-plots"]) == 0  # the marker judge re-scores the cached replies
    assert "nan" not in (out / "results.json").read_text().lower()


class _Short(Judge):
    """A judge that drops the last reply."""

    def judge(self, prompts, replies):
        return [Verdict(refused=True) for _ in replies][:-1]

    @classmethod
    def from_spec(cls, argument):
        return cls()


class _Silent(Judge):
    """A judge that never decides."""

    def judge(self, prompts, replies):
        return [Verdict(raw="hmm") for _ in replies]

    @classmethod
    def from_spec(cls, argument):
        return cls()


def test_the_meter_refuses_missing_verdicts(tmp_path, tokenizer_dir):
    """Every figure goes through the meter, and the meter takes no rate from missing verdicts;
    a judge that decides some replies only still gives a rate over those (its ``judged`` count)."""
    with pytest.raises(JudgeError, match="_Short returned 1 verdicts for 2 replies"):
        judged(_Short(), ["a", "b"], ["x", "y"])
    with pytest.raises(JudgeError, match="_Silent gave no verdict on any of the 2 replies .*'hmm'"):
        judged(_Silent(), ["a", "b"], ["x", "y"])
    save_tiny("llama", tmp_path / "m", tokenizer_dir=tokenizer_dir)
    meter = RefusalMeter(load(tmp_path / "m", device="cpu"), _Silent())
    with pytest.raises(JudgeError, match="no verdict"):
        meter.rate(["hello world", "world"], 2)
    some = judged(_Half(), ["a", "b", "c"], ["x", "y", "z"])
    assert some.value == 1.0 and some.judged.n == 2 and some.n == 3 and some.refused == (True, None, True)


class _Half(Judge):
    """A judge that decides every reply but the second."""

    def judge(self, prompts, replies):
        return [Verdict(refused=None if i == 1 else True) for i in range(len(replies))]

    @classmethod
    def from_spec(cls, argument):
        return cls()
