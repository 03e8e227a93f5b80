"""The status page in headless Chromium, against a two-worker gateway: what a person sees (each model's
health, request count, latency against its target, its admission queue and saturation), the same whichever
worker answers, and a key prompt when no key is given. Leaves a screenshot in tests/artifacts/."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.support.catalogs import ADMIN_KEY, chat_entry
from tests.support.gateway import gateway_env, running_gateway

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUESTS = 20
# Requests to the `slow` model (3 s each at the fake upstream, one at a time per worker): enough to keep it
# saturated for a while after they have all arrived.
SLOW_REQUESTS = 8

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture
def gateway(tmp_path: Path, fake_upstream_url: str) -> Iterator[str]:
    models = {
        "ok": chat_entry(fake_upstream_url),
        "gone": chat_entry(f"http://127.0.0.1:{free_port()}"),
        "slow": {**chat_entry(fake_upstream_url, upstream_model="slow"), "max_concurrency": 1},
    }
    env = gateway_env(tmp_path, models, CITADEL_HEALTH_INTERVAL_S="0.5")
    with running_gateway(tmp_path, env, workers=2) as gateway:
        yield gateway.url


def chromium(tmp_path: Path, url: str, *extra: str) -> str:
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=4000",  # page load, the first poll of /status/data and its rendering
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Table(HTMLParser):
    """The rows of the page's table (cell texts by data-model), the message and the key form's visibility."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.message = ""
        self.keyform_style = ""
        self._row: str | None = None
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get("data-model"):
            self._row = found["data-model"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self.rows[self._row].append("")
            self._in = "td"
        elif tag == "div" and found.get("id") == "message":
            self._in = "message"
        elif tag == "form" and found.get("id") == "keyform":
            self.keyform_style = found.get("style") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag in ("td", "div"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "td" and self._row is not None:
            self.rows[self._row][-1] += data
        elif self._in == "message":
            self.message += data


def read(dom: str) -> Table:
    table = Table()
    table.feed(dom)
    return table


async def traffic_and_settled_status(url: str) -> dict[str, dict[str, object]]:
    """REQUESTS chats on fresh connections (both workers serve some), then the data once 'gone' is probed down."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_keepalive_connections=0), timeout=30) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body, headers=headers) for _ in range(REQUESTS))
        )
        assert [a.status_code for a in answers] == [200] * REQUESTS
        for _ in range(100):
            views = [(await client.get("/status/data", headers=headers)).json() for _ in range(4)]
            rows = [{row["model"]: row for row in view["models"]} for view in views]
            if all(r["gone"]["health"] == "down" for r in rows):
                break
            await asyncio.sleep(0.1)
    # Whichever worker answered, the same global view: every request, both workers' counts together.
    assert {r["ok"]["requests"] for r in rows} == {REQUESTS}
    return rows[-1]


async def test_a_person_sees_each_models_health_and_latency(gateway: str, tmp_path: Path) -> None:
    data = await traffic_and_settled_status(gateway)
    assert data["gone"]["health"] == "down"

    page = read(chromium(tmp_path, f"{gateway}/status#key={ADMIN_KEY}", "--dump-dom"))
    assert set(page.rows) == {"ok", "gone", "slow"}, page.rows
    model, health, requests, p50, p95, target, tokens, errors, cache, load, waiting = page.rows["ok"]
    assert model == "ok (Test model)" and health == "up" and requests == str(REQUESTS)
    assert p50.endswith("ms") and p95.endswith("ms") and target == "100 ms"
    assert float(tokens) > 0 and errors == "0.0 %" and cache == "-"
    # Every answer is over: nothing in flight (capacity: the workers' shares of the default concurrency).
    assert re.fullmatch(r"0 / \d+", load) and waiting == "0 / 0", (load, waiting)
    assert page.rows["gone"][1] == "down" and page.rows["gone"][2] == "0"
    assert page.rows["gone"][-2:] == ["-", "-"]  # no request reached its admission queue: no figures
    assert page.message == ""

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, f"{gateway}/status#key={ADMIN_KEY}", f"--screenshot={shot}", "--window-size=1280,420")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"status page screenshot: {shot}")


async def slow_queue(client: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    """The `slow` model's admission figures in /status/data (from whichever worker answers)."""
    view = (await client.get("/status/data", headers=headers)).json()
    [row] = [row for row in view["models"] if row["model"] == "slow"]
    return row["admission"]


async def test_a_saturated_model_shows_the_same_queue_on_every_worker(gateway: str, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    fresh = httpx.Limits(max_keepalive_connections=0)  # every call a new connection: both workers answer some
    async with httpx.AsyncClient(base_url=gateway, limits=fresh, timeout=60) as client:
        flood = [
            asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=headers))
            for _ in range(SLOW_REQUESTS)
        ]
        # Every request at the gateway: in flight or waiting, counted over both workers.
        for _ in range(50):
            views = [await slow_queue(client, headers) for _ in range(4)]
            if all(v and v["in_flight"] + v["waiting"]["interactive"] == SLOW_REQUESTS for v in views):
                break
            await asyncio.sleep(0.1)
        assert all(view == views[0] for view in views), views  # the same queue, whichever worker answered
        queue = views[0]
        assert queue["saturated"] is True, queue
        # One slot per worker (max_concurrency 1 shared by 2 workers rounds up to 1 each); the rest wait.
        assert 1 <= queue["in_flight"] <= 2, queue
        assert queue["waiting"] == {"interactive": SLOW_REQUESTS - queue["in_flight"], "batch": 0}, queue

        dom = await asyncio.to_thread(chromium, tmp_path, f"{gateway}/status#key={ADMIN_KEY}", "--dump-dom")
        load, waiting = read(dom).rows["slow"][-2:]
        assert load.endswith(" saturated") and re.fullmatch(r"\d+ / 0", waiting), (load, waiting)

        answers = await asyncio.gather(*flood)
        assert [a.status_code for a in answers] == [200] * SLOW_REQUESTS
        for _ in range(20):  # a slot is given back just after its answer is sent
            after = await slow_queue(client, headers)
            if after["in_flight"] == 0:
                break
            await asyncio.sleep(0.1)
        assert after["in_flight"] == 0 and after["saturated"] is False, after


async def test_without_a_key_the_page_asks_for_one(gateway: str, tmp_path: Path) -> None:
    page = read(chromium(tmp_path, f"{gateway}/status", "--dump-dom"))
    assert page.rows == {}
    assert page.message == "A key is needed to see the status."
    assert "none" not in page.keyform_style
