"""The LLM judge client against a stub OpenAI-compatible server on 127.0.0.1 (bounded, stops itself)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from eval.judge import ASPECTS, JudgeClient, judge_pairwise, judge_scores, parse_score, parse_verdict


class StubJudge:
    """Answers chat requests from a function of the request; records every request body."""

    def __init__(self, answer):
        self.answer, self.requests = answer, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                reply = stub.answer(body, len(stub.requests))
                if reply is None:
                    self.send_response(500)
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def two_samples(tmp_path):
    """Two samples folders of the same two stories: 'ours' (red frames) and 'other' (blue frames)."""
    roots = {}
    for name, colour in (("ours", (255, 0, 0)), ("other", (0, 0, 255))):
        root = tmp_path / name
        stories = []
        for story_id in ("s1", "s2"):
            (root / story_id).mkdir(parents=True)
            for k in range(3):
                Image.fromarray(np.full((8, 8, 3), colour, dtype=np.uint8)).save(root / story_id / f"{k}.png")
            stories.append({"id": story_id, "images": [f"{story_id}/{k}.png" for k in range(3)],
                            "captions": [f"{name} beat {k}" for k in range(3)]})
        roots[name] = (root, stories)
    return roots


def _texts(body):
    return " ".join(part["text"] for part in body["messages"][0]["content"] if part["type"] == "text")


def test_parsers_take_the_last_valid_answer():
    assert parse_score("I'd say [[11]] no, [[7]]") == 7
    assert parse_score("score: 7/10") is None
    assert parse_verdict("[[A]] ... on reflection [[C]]") == "C"
    assert parse_verdict("A is better") is None


def test_malformed_replies_are_retried_then_counted_missing(two_samples, monkeypatch):
    root, stories = two_samples["ours"]

    def answer(body, number):
        if number == 1:
            return "I cannot decide."            # no score: asked again
        if number == 2:
            return None                          # HTTP 500: asked again
        if number == 3:
            return "Good story. [[8]]"
        return "no score at all"                 # every later request: missing after retries

    monkeypatch.setenv("STUB_JUDGE_KEY", "sk-test")
    with StubJudge(answer) as stub:
        client = JudgeClient.from_protocol({"url": stub.url, "model": "stub", "api_key_env": "STUB_JUDGE_KEY",
                                            "temperature": 0.0, "retries": 2, "timeout_s": 5})
        summary, per_story = judge_scores(client, stories, root, max_frames=2)
    assert per_story["s1"]["judge_style"] == 8.0
    assert per_story["s2"]["judge_style"] is None
    assert summary["style"] == {"mean": 8.0, "scored": 1, "missing": 1}
    assert summary["engaging"] == {"mean": None, "scored": 0, "missing": 2}
    # 3 attempts for s1/style, then 3 (1 + 2 retries) for each of the 5 other (story, aspect) pairs
    assert len(stub.requests) == 3 + 5 * 3
    first = stub.requests[0]
    assert first["auth"] == "Bearer sk-test" and first["body"]["model"] == "stub"
    images = [part for part in first["body"]["messages"][0]["content"] if part["type"] == "image_url"]
    assert len(images) == 2 and images[0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_pairwise_asks_both_orders_and_maps_verdicts_back(two_samples):
    ours_root, ours = two_samples["ours"]
    other_root, other = two_samples["other"]

    def answer(body, number):
        # a judge with a pure position bias: always prefers whoever is shown first
        return "The first one. [[A]]"

    with StubJudge(answer) as stub:
        client = JudgeClient(stub.url, "stub", api_key=None, retries=0, timeout_s=5)
        votes = judge_pairwise(client, ours, ours_root, other, other_root, max_frames=3)
    assert len(stub.requests) == len(ASPECTS) * 2 * 2  # aspects x stories x both orders
    orders = [_texts(request["body"]) for request in stub.requests[:2]]
    assert orders[0].index("ours beat") < orders[0].index("other beat")  # ours shown as A first
    assert orders[1].index("other beat") < orders[1].index("ours beat")  # then as B
    for aspect in ASPECTS:
        # the position bias cancels: each side wins exactly once per story
        assert votes[aspect]["ours"] == 2 and votes[aspect]["other"] == 2 and votes[aspect]["tie"] == 0
        assert votes[aspect]["win_rate"] == 0.5 and votes[aspect]["missing"] == 0
    assert stub.requests[0]["auth"] is None


def test_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="environment variable NO_SUCH_JUDGE_KEY"):
        JudgeClient.from_protocol({"url": "http://127.0.0.1:9/", "model": "m", "api_key_env": "NO_SUCH_JUDGE_KEY",
                                   "temperature": 0.0, "retries": 0, "timeout_s": 1})


def test_unreachable_endpoint_counts_missing_not_crash(two_samples):
    root, stories = two_samples["ours"]
    with StubJudge(lambda body, number: "[[5]]") as stub:
        url = stub.url
    client = JudgeClient(url, "stub", retries=1, timeout_s=2)  # the server is closed now
    summary, _ = judge_scores(client, stories[:1], root, max_frames=1)
    assert all(result["missing"] == 1 for result in summary.values())
    assert len(client.failures) == len(ASPECTS) * 2
