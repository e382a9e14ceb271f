"""The refusal meter: one way to turn prompts into a refusal rate, with any judge, for every command."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import transformers as T

import planted
from rosi.errors import RosiError
from rosi.judges import JUDGES, Judge, Verdict, refusal_rate
from rosi.judges.llamaguard import LlamaGuardJudge
from rosi.measure import RefusalMeter, RefusalRate, check_judge, declined
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate
from rosi.model.loading import LoadedModel, ModelSource


@pytest.fixture
def loaded():
    model = planted.model(planted.unit_vector(0))
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    return LoadedModel(model, planted.tokenizer(), ModelSource("planted", "memory", "", "0" * 64))


def test_a_rate_counts_declines_of_every_judge_and_leaves_unjudged_prompts_out():
    verdicts = [
        Verdict(refused=True, partial=True),
        Verdict(refused=False, partial=False),
        Verdict(unsafe=False),
        Verdict(unsafe=True),
        Verdict(),
    ]
    assert [declined(v) for v in verdicts] == [True, False, True, False, None]
    rate = RefusalRate.of(verdicts, judge="mixed", new_tokens=8)
    assert (rate.n, rate.judged.k, rate.judged.n, rate.value) == (5, 2, 4, 0.5)
    assert rate.partial is None  # not every verdict tells it
    lo, hi = rate.interval
    assert 0 < lo < 0.5 < hi < 1
    saved = rate.to_json()
    assert saved["refused"] == [True, False, True, False, None] and saved["judge"] == "mixed" and saved["k"] == 2
    markers = RefusalRate.of([Verdict(refused=True, partial=True), Verdict(refused=True, partial=False)])
    assert markers.partial_rate == 0.5 and markers.value == 1.0


def test_the_meter_is_the_marker_judge_on_greedy_replies_and_cuts_longer_replies_exactly(loaded):
    fmt = ChatFormat(loaded.tokenizer)
    prompts = planted.HARMFUL + planted.HARMLESS
    meter = RefusalMeter(loaded, batch_size=4)
    for n in (3, 8):
        replies = generate(loaded.model, fmt, prompts, max_new_tokens=n, batch_size=4)
        assert meter.replies(prompts, n) == replies
        assert meter.rate(prompts, n).value == refusal_rate(replies)
    both = meter.rates(prompts, (8, 3))
    assert [both[n].refused for n in (3, 8)] == [meter.rate(prompts, n).refused for n in (3, 8)]
    rate, logprobs = meter.rate_and_logprobs(prompts, 3)
    assert rate.refused == meter.rate(prompts, 3).refused and logprobs.shape[0] == len(prompts)


class _ByWord(Judge):
    """A fake safety judge: a reply is unsafe when its prompt names a bomb (whatever the reply)."""

    name = "fake-guard"
    seen: list[str] = []

    @classmethod
    def from_spec(cls, argument):
        return cls()

    def judge(self, prompts, replies):
        type(self).seen.extend(prompts)
        return [Verdict(unsafe="bomb" in p) for p in prompts]


def _tiny_folder(tmp_path):
    model = planted.model(planted.unit_vector(0))
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    model.save_pretrained(tmp_path / "m")
    planted.tokenizer().save_pretrained(tmp_path / "m")
    files = {}
    for role, prompts in (("h", planted.HARMFUL), ("b", planted.HARMLESS)):
        files[role] = tmp_path / f"{role}.txt"
        files[role].write_text("\n".join(prompts) + "\n")
    prompts = ["--harmful", files["h"], "--harmless", files["b"], "--val-harmful", files["h"], "--val-harmless", files["b"]]
    return tmp_path / "m", [str(a) for a in prompts]


def _run(folder, prompts, out, judge):
    from rosi.cli import main

    pin = ["--layer", "1", "--position", "-1", "--alpha", "2", "--max-new-tokens", "4", "--no-compare", "--method", "scale", "--n-val", "6"]
    return main(["run", str(folder), "--out", str(out), *prompts, *pin, "--judge", judge])


def test_rosi_run_measures_with_a_llama_guard_judge(tmp_path, monkeypatch):
    """`--judge llamaguard:PATH` reaches every refusal rosi run reports (the judge model is a fake)."""
    folder, prompts = _tiny_folder(tmp_path)
    guard = tmp_path / "guard"
    guard.mkdir()
    built = []
    monkeypatch.setattr(LlamaGuardJudge, "from_spec", classmethod(lambda cls, arg: built.append(arg) or _ByWord()))
    assert _run(folder, prompts, tmp_path / "out", f"llamaguard:{guard}") == 0
    assert built == [str(guard)]
    report = json.loads((tmp_path / "out" / "rosi_report.json").read_text())
    for rates in report["rates"]:  # the fake judge calls every reply to a bomb prompt unsafe: never declined
        assert rates["harmful"] == 0.0 and rates["harmless"] == 1.0
        assert rates["verdicts"]["harmful"]["judge"] == "fake-guard"


def test_rosi_run_refuses_a_missing_judge_before_loading_the_model(tmp_path, capsys):
    from rosi.cli import main

    code = main(["run", str(tmp_path / "no-model"), "--out", str(tmp_path / "o"), "--judge", f"llamaguard:{tmp_path / 'nope'}"])
    err = capsys.readouterr().err
    assert code != 0 and "nope does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(RosiError, match="unknown judge"):
        check_judge("oracle")
    assert "markers" in JUDGES


class _Guard(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (the reachability check)
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802  (a Llama-Guard-style judge server: unsafe when the prompt names a bomb)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = "unsafe\nS9" if "bomb" in body["messages"][0]["content"] else "safe"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_rosi_run_measures_with_a_judge_server(tmp_path):
    folder, prompts = _tiny_folder(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Guard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        assert _run(folder, prompts, tmp_path / "out", f"openai:{url}#guard") == 0
    finally:
        server.shutdown()
    report = json.loads((tmp_path / "out" / "rosi_report.json").read_text())
    assert all(r["harmful"] == 0.0 and r["harmless"] == 1.0 for r in report["rates"])
    with pytest.raises(RosiError, match="does not answer"):
        check_judge(f"openai:{url}")
