"""LLM judge for SEED-Story's aspects through any OpenAI-compatible chat-completions endpoint.

Single mode: each story's first `max_frames` sentences and frames, scored 1-10 for style consistency,
engagement and text-image coherence (SEED-Story Table 7). Pairwise mode: two samples folders of the
same stories, A/B/tie per aspect, asked in both orders so the judge's position bias cancels (SEED-Story's
script always put the baseline first, docs/seed_story.md). A reply without a parsable verdict is asked again
`retries` times, then counted as missing; HTTP and network errors count the same way, never a crash.
Plain urllib: no client library to install.
"""
import base64
import io
import json
import os
import re
import urllib.error
import urllib.request

from eval.stories_io import EvalInputError, load_frame

ASPECTS = {
    "style": "Judge the visual style consistency of the images of this story: do characters, drawing "
             "style, colours and settings stay consistent from frame to frame?",
    "engaging": "Judge how engaging this story is: is the plot interesting, does it develop, would a "
                "reader want to know what happens next?",
    "coherence": "Judge the coherence between text and images: does each image show what its sentence "
                 "says, with the right characters, actions and setting?",
}
SCORE_FORMAT = ("Explain briefly, then give a score from 1 to 10 in exactly this format: [[score]], "
                "for example [[6]].")
VERDICT_FORMAT = ("Be objective and ignore the order in which the assistants are shown. Explain briefly, "
                  "then answer [[A]] if assistant A's story is better, [[B]] if assistant B's is better, "
                  "or [[C]] for a tie.")
SCORE_PATTERN = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
VERDICT_PATTERN = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_score(reply):
    """The last [[n]] with 1 <= n <= 10 in a reply, or None."""
    values = [float(match) for match in SCORE_PATTERN.findall(reply or "")]
    values = [value for value in values if 1 <= value <= 10]
    return values[-1] if values else None


def parse_verdict(reply):
    """"A", "B" or "C" (tie) from the last [[X]] of a reply, or None."""
    verdicts = VERDICT_PATTERN.findall(reply or "")
    return verdicts[-1] if verdicts else None


class JudgeClient:
    """POSTs chat requests to an OpenAI-compatible endpoint; `ask` retries until `parse` accepts."""

    def __init__(self, url, model, api_key=None, temperature=0.0, retries=3, timeout_s=120):
        self.url, self.model, self.api_key = url, model, api_key
        self.temperature, self.retries, self.timeout_s = temperature, retries, timeout_s
        self.failures = []  # (reason) of every attempt that gave no answer, for the report

    @classmethod
    def from_protocol(cls, section):
        for key in ("url", "model"):
            if not section.get(key):
                raise EvalInputError(f"judge: protocol key 'judge.{key}' is not set")
        api_key = None
        if section.get("api_key_env"):
            api_key = os.environ.get(section["api_key_env"])
            if not api_key:
                raise EvalInputError(f"judge: environment variable {section['api_key_env']} (protocol key "
                                     "'judge.api_key_env') is not set; export the endpoint's key there, or set "
                                     "judge.api_key_env=null for an endpoint without a key")
        return cls(section["url"], section["model"], api_key, section["temperature"], section["retries"],
                   section["timeout_s"])

    def chat(self, content):
        """One request; the assistant's text. content: a list of OpenAI content parts."""
        body = json.dumps({"model": self.model, "temperature": self.temperature,
                           "messages": [{"role": "user", "content": content}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            reply = json.loads(response.read().decode("utf-8"))
        return reply["choices"][0]["message"]["content"]

    def ask(self, content, parse):
        """parse(reply) of the first reply it accepts, or None after 1 + retries attempts."""
        for _ in range(1 + self.retries):
            try:
                value = parse(self.chat(content))
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
                self.failures.append(f"{type(err).__name__}: {err}")
                continue
            if value is not None:
                return value
            self.failures.append("reply without a parsable answer")
        return None


def _image_part(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": uri}}


def story_parts(story, root, max_frames, label=None):
    """Content parts showing a story: for each of its first max_frames beats, the sentence then the frame."""
    parts = [{"type": "text", "text": f"{label}:" if label else "The story:"}]
    for k, (image_path, caption) in enumerate(zip(story["images"][:max_frames], story["captions"][:max_frames])):
        parts.append({"type": "text", "text": f"{k + 1}. {caption}"})
        parts.append(_image_part(load_frame(root, image_path)))
    return parts


def judge_scores(client, stories, root, max_frames):
    """({aspect: {"mean", "scored", "missing"}}, {story id: {aspect: score or None}})."""
    per_story, summary = {}, {}
    for aspect, instruction in ASPECTS.items():
        values = []
        for story in stories:
            parts = story_parts(story, root, max_frames) + [{"type": "text", "text": f"{instruction} {SCORE_FORMAT}"}]
            score = client.ask(parts, parse_score)
            per_story.setdefault(story["id"], {})[f"judge_{aspect}"] = score
            values.append(score)
        scored = [value for value in values if value is not None]
        summary[aspect] = {"mean": sum(scored) / len(scored) if scored else None, "scored": len(scored),
                           "missing": len(values) - len(scored)}
    return summary, per_story


def judge_pairwise(client, ours, ours_root, others, others_root, max_frames):
    """{aspect: {"ours", "other", "tie", "missing", "win_rate", "loss_rate", "tie_rate"}} over both orders.

    ours/others: stories with the same ids (the others are matched by id). Each story is asked twice
    per aspect: ours as A, then ours as B; every answered order is one vote.
    """
    others_by_id = {story["id"]: story for story in others}
    results = {}
    for aspect, instruction in ASPECTS.items():
        votes = {"ours": 0, "other": 0, "tie": 0, "missing": 0}
        for story in ours:
            if story["id"] not in others_by_id:
                raise EvalInputError(f"judge pairwise: story id {story['id']!r} is not in the compared samples")
            ours_parts = lambda label: story_parts(story, ours_root, max_frames, label)  # noqa: E731
            other_parts = lambda label: story_parts(others_by_id[story["id"]], others_root, max_frames, label)  # noqa: E731
            for ours_is_a in (True, False):
                first, second = (ours_parts, other_parts) if ours_is_a else (other_parts, ours_parts)
                parts = (first("Assistant A") + second("Assistant B")
                         + [{"type": "text", "text": f"Two assistants told the same story. {instruction} "
                                                     f"{VERDICT_FORMAT}"}])
                verdict = client.ask(parts, parse_verdict)
                if verdict is None:
                    votes["missing"] += 1
                elif verdict == "C":
                    votes["tie"] += 1
                else:
                    votes["ours" if (verdict == "A") == ours_is_a else "other"] += 1
        answered = votes["ours"] + votes["other"] + votes["tie"]
        for name, key in (("win_rate", "ours"), ("loss_rate", "other"), ("tie_rate", "tie")):
            votes[name] = votes[key] / answered if answered else None
        results[aspect] = votes
    return results
