"""The web console's live counter (`gateway/static/segments.js`) must agree
with the service's `measure`: on every boundary, and on a few hundred random
bodies mixing GSM-7, extension and non-GSM characters. Node.js runs the module;
without it the test skips, unless CI=true, where it fails."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from services.messaging.segments import GSM_7_BASIC, GSM_7_EXTENSION, measure

MODULE = Path(__file__).resolve().parents[2] / "gateway" / "static" / "segments.js"

# Reads a JSON list of bodies on stdin, prints a JSON list of measures.
RUNNER = """\
import { measure } from "./segments.mjs";
let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
process.stdout.write(JSON.stringify(JSON.parse(input).map(measure)));
"""

EMOJI = "😀"
BOUNDARIES = [
    "",
    "a" * 160,
    "a" * 161,
    "€" * 80,
    "€" * 81,
    "ç" * 70,
    "ç" * 71,
    "a" * 306,
    "a" * 307,
    "ç" * 134,
    "ç" * 135,
    "a" * 151 + "€" + "a" * 153,
    "a" * 152 + "€" + "a" * 152,
    "ç" * 65 + EMOJI + "ç" * 67,
    "ç" * 66 + EMOJI + "ç" * 66,
    "a" * 69 + EMOJI,
    EMOJI * 36,
    "Ç",
    "ç",
    "\n\r\f",
    "\u2126\u0394",
    "a" * 1600,
    "\ud83d",  # a lone surrogate: one unit in both languages
]

Measurer = Callable[[list[str]], list[dict[str, object]]]


@pytest.fixture(scope="module")
def measure_in_node(tmp_path_factory: pytest.TempPathFactory) -> Measurer:
    node = shutil.which("node")
    if node is None:
        reason = "Node.js (`node`) is not on PATH, so segments.js cannot be checked"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("segments_js")
    # A .mjs copy is an ES module to Node whatever package.json says.
    shutil.copy(MODULE, workdir / "segments.mjs")
    (workdir / "runner.mjs").write_text(RUNNER, encoding="utf-8")

    def run(bodies: list[str]) -> list[dict[str, object]]:
        done = subprocess.run(
            [node, str(workdir / "runner.mjs")],
            input=json.dumps(bodies),  # ASCII escapes carry lone surrogates too
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        results: list[dict[str, object]] = json.loads(done.stdout)
        return results

    return run


def _as_dict(body: str) -> dict[str, object]:
    found = measure(body)
    return {"encoding": found.encoding.value, "units": found.units, "segments": found.segments}


Disagreement = tuple[str, dict[str, object], dict[str, object]]


def _disagreements(bodies: list[str], measure_in_node: Measurer) -> list[Disagreement]:
    in_js = measure_in_node(bodies)
    assert len(in_js) == len(bodies)
    return [
        (body, _as_dict(body), js)
        for body, js in zip(bodies, in_js, strict=True)
        if _as_dict(body) != js
    ]


def _random_bodies(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    basic = sorted(GSM_7_BASIC)
    extension = sorted(GSM_7_EXTENSION)
    foreign = [*"çàâêîôûœ`\t\u0391Ж中文", "😀", "🎉", "👍🏽", "𝄞"]
    edges = (67, 70, 134, 153, 160, 201, 306, 459)
    near_boundaries = [n + d for n in edges for d in (-2, -1, 0, 1)]
    bodies = []
    for _ in range(count):
        length = rng.choice([rng.randrange(0, 480), rng.choice(near_boundaries)])
        # Each body picks its own mix, so pure GSM, GSM with escapes and
        # UCS-2 with surrogate pairs all come up often.
        weights = rng.choice([(1, 0, 0), (8, 2, 0), (6, 2, 1), (50, 5, 1), (1, 1, 3)])
        pools = rng.choices([basic, extension, foreign], weights=weights, k=length)
        bodies.append("".join(rng.choice(pool) for pool in pools))
    return bodies + [_straddling(rng) for _ in range(count // 4)]


def _straddling(rng: random.Random) -> str:
    """A pair placed to straddle (or just fit) a part boundary, where greedy
    packing and plain division disagree."""
    gsm = rng.random() < 0.5
    part, filler, pair = (153, "a", "€") if gsm else (67, "ç", "😀")
    before = part * rng.randint(1, 3) - rng.choice([1, 1, 2])
    # The two disagree only when the whole body just fills its last part.
    after = part * rng.randint(1, 2) - (before + 2) % part + rng.choice([-1, 0, 0, 1])
    return filler * before + pair + filler * max(after, 0)


def test_the_js_counter_agrees_on_every_boundary(measure_in_node: Measurer) -> None:
    assert _disagreements(BOUNDARIES, measure_in_node) == []


def test_the_js_counter_agrees_on_random_bodies(measure_in_node: Measurer) -> None:
    bodies = _random_bodies(400, seed=20_24)
    assert {_as_dict(b)["encoding"] for b in bodies} == {"GSM_7", "UCS_2"}
    assert _disagreements(bodies, measure_in_node) == []


def test_the_js_counter_exports_the_same_alphabet(measure_in_node: Measurer) -> None:
    every_table_char = sorted(GSM_7_BASIC | GSM_7_EXTENSION)
    in_js = measure_in_node(every_table_char)
    assert {r["encoding"] for r in in_js} == {"GSM_7"}
    expected_units = [2 if c in GSM_7_EXTENSION else 1 for c in every_table_char]
    assert [r["units"] for r in in_js] == expected_units
