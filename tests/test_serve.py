"""Tests of `llm_tutorial.serve`: every route with small injected services, what bad requests
get back (and that the service stays up), timeouts and model failures, micro-batching, the
metrics, the real models behind the routes, and a real uvicorn server under load and under
`kill -9`."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from llm_tutorial import serve
from llm_tutorial.serve import MicroBatcher, Services, Settings, create_app

SPORT_WORDS = {"match", "goal", "striker", "cup"}


def keyword_classify(texts: list[str]) -> list[dict]:
    """A deterministic stand-in for the classifier: sport if a sport word occurs."""
    out = []
    for text in texts:
        p = 0.9 if SPORT_WORDS & set(text.lower().split()) else 0.2
        label = "sport" if p > 0.5 else "business"
        out.append({"label": label, "probabilities": {"business": 1 - p, "sport": p}})
    return out


def capitalised_ner(texts: list[str]) -> list[list[dict]]:
    out = []
    for text in texts:
        entities, start = [], 0
        for word in text.split(" "):
            if word[:1].isupper():
                out_word = word.strip(".,")
                entities.append({"text": out_word, "label": "GPE", "start": start, "end": start + len(out_word)})
            start += len(word) + 1
        out.append(entities)
    return out


PASSAGES = ["Chelsea won the cup final.", "Shares fell in London.", "The election was close."]


def word_ask(question: str, k: int) -> dict:
    words = set(question.lower().strip("?").split())
    hits = [p for p in PASSAGES if words & set(p.lower().strip(".").split())][:k]
    return {"answer": None, "citations": [{"id": n, "doc": str(n), "section": "", "text": t}
                                          for n, t in enumerate(hits, 1)]}


def next_recommend(history: list[str], k: int) -> list[dict]:
    return [{"id": i, "title": f"article {i}", "score": 1.0}
            for i in ["0", "1", "2", "3"] if i not in history][:k]


def fake_services(**overrides) -> Services:
    services = Services(classify=keyword_classify, ner=capitalised_ner, ask=word_ask, recommend=next_recommend,
                        labels=["business", "sport"], item_ids={"0", "1", "2", "3"},
                        titles={i: f"article {i}" for i in "0123"})
    for name, value in overrides.items():
        setattr(services, name, value)
    return services


@pytest.fixture
def make_client(tmp_path):
    """`make_client(services=None, **settings)`: a TestClient (lifespan run) of a fresh app
    whose feedback goes to a temporary SQLite file."""
    clients = []

    def make(services: Services | None = None, **settings) -> TestClient:
        settings.setdefault("db", tmp_path / f"feedback{len(clients)}.sqlite3")
        client = TestClient(create_app(services or fake_services(), Settings(**settings)))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# ------------------------------------------------------------------------------ settings


def test_settings_from_env_reads_every_variable(tmp_path):
    assert Settings.from_env({}) == Settings()
    env = {"LLM_TUTORIAL_SERVE_HOST": "0.0.0.0", "LLM_TUTORIAL_SERVE_PORT": "9001",
           "LLM_TUTORIAL_SERVE_COMPONENTS": "Classify, feedback", "LLM_TUTORIAL_SERVE_DB": str(tmp_path / "f.db"),
           "LLM_TUTORIAL_SERVE_MAX_BODY_BYTES": "1000", "LLM_TUTORIAL_SERVE_MAX_TEXT_CHARS": "50",
           "LLM_TUTORIAL_SERVE_TIMEOUT_S": "2.5", "LLM_TUTORIAL_SERVE_BATCH_SIZE": "4",
           "LLM_TUTORIAL_SERVE_BATCH_WAIT_MS": "0", "LLM_TUTORIAL_SERVE_ARTICLES_PER_CLASS": "3",
           "LLM_TUTORIAL_SERVE_GENERATOR": "none"}
    assert Settings.from_env(env) == Settings(
        host="0.0.0.0", port=9001, components=("classify", "feedback"), db=tmp_path / "f.db", max_body_bytes=1000,
        max_text_chars=50, timeout_s=2.5, batch_size=4, batch_wait_ms=0.0, articles_per_class=3, generator="none")


@pytest.mark.parametrize("name, value, allowed", [
    ("PORT", "http", "integer"), ("PORT", "0", "1 to 65535"), ("COMPONENTS", "classify,chat", "ner"),
    ("COMPONENTS", ",", "one or more"), ("TIMEOUT_S", "-1", "> 0"), ("TIMEOUT_S", "soon", "number"),
    ("BATCH_SIZE", "0", ">= 1"), ("MAX_BODY_BYTES", "0", ">= 1"), ("ARTICLES_PER_CLASS", "1", ">= 2"),
    ("GENERATOR", "gpt4", "smollm2 or none"), ("BATCH_WAIT_MS", "-5", ">= 0"),
])
def test_settings_from_env_refuses_bad_values(name, value, allowed):
    with pytest.raises(ValueError, match=f"LLM_TUTORIAL_SERVE_{name}=.*must be.*{allowed}"):
        Settings.from_env({f"LLM_TUTORIAL_SERVE_{name}": value})


# ------------------------------------------------------------------------------ the routes


def test_every_route_answers(make_client):
    client = make_client()
    r = client.post("/classify", json={"texts": ["The striker scored a goal.", "Shares fell."]})
    assert r.status_code == 200
    assert [x["label"] for x in r.json()["results"]] == ["sport", "business"]
    assert len(r.json()["request_id"]) == 32
    r = client.post("/ner", json={"texts": ["Rain fell in London today."]})
    assert r.json()["entities"] == [[{"text": "Rain", "label": "GPE", "start": 0, "end": 4},
                                     {"text": "London", "label": "GPE", "start": 13, "end": 19}]]
    r = client.post("/ask", json={"question": "Who won the cup?", "k": 2})
    assert r.json()["answer"] is None and r.json()["citations"][0]["text"] == PASSAGES[0]
    r = client.post("/recommend", json={"history": ["0", "2"], "k": 5})
    assert [x["id"] for x in r.json()["items"]] == ["1", "3"]
    r = client.get("/items", params={"offset": 1, "limit": 2})
    assert r.json() == {"total": 4, "offset": 1, "limit": 2,
                        "items": [{"id": "1", "title": "article 1"}, {"id": "2", "title": "article 2"}]}
    r = client.post("/feedback", json={"item_id": "1", "rating": 5, "request_id": "abc", "user": "ada"})
    assert r.status_code == 201 and r.json() == {"id": 1}
    assert client.get("/feedback/count").json() == {"count": 1}
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and all(health["components"].values())


def test_feedback_is_committed_to_sqlite_in_wal_mode(make_client, tmp_path):
    client = make_client(db=tmp_path / "ratings.sqlite3")
    ids = [client.post("/feedback", json={"item_id": str(i), "rating": 1 + i % 5}).json()["id"] for i in range(7)]
    assert ids == list(range(1, 8))
    with sqlite3.connect(tmp_path / "ratings.sqlite3") as db:  # another connection sees them: committed
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT id, item_id, rating FROM feedback").fetchall() == [
            (i + 1, str(i), 1 + i % 5) for i in range(7)]


BAD_REQUESTS = [
    # (route, body, status, words the message must contain)
    ("/classify", {"texts": []}, 422, ["texts:", "1 to 32 non-empty strings", '{"texts": ["Shares fell."]}']),
    ("/classify", {"texts": [""]}, 422, ["texts[0]:", "non-empty"]),
    ("/classify", {"texts": ["ok", "   "]}, 422, ["texts[1]:", "non-empty"]),
    ("/classify", {"texts": "Shares fell."}, 422, ["texts:", "list"]),
    ("/classify", {"texts": [1, 2]}, 422, ["texts[0]:", "strings"]),
    ("/classify", {"texts": ["a"] * 33}, 422, ["texts:", "1 to 32"]),
    ("/classify", {"texts": ["x" * 101]}, 422, ["texts[0]: 101 characters", "LLM_TUTORIAL_SERVE_MAX_TEXT_CHARS"]),
    ("/classify", {"texts": ["ok"], "lang": "en"}, 422, ["lang: unknown key", "/classify takes texts"]),
    ("/classify", {"text": "ok"}, 422, ["text: unknown key", "texts: must be"]),
    ("/classify", ["ok"], 422, ["body: must be a JSON object"]),
    ("/ner", {}, 422, ["texts:", "Field required"]),
    ("/ask", {"question": "Who?", "k": 0}, 422, ["k: must be an integer from 1 to 10"]),
    ("/ask", {"question": "Who?", "k": 11}, 422, ["k: must be an integer from 1 to 10"]),
    ("/ask", {"question": "Who?", "k": "3"}, 422, ["k: must be an integer"]),
    ("/ask", {"question": ""}, 422, ["question: must be a non-empty string"]),
    ("/recommend", {"history": ["0", "99", "x"]}, 404, ["unknown item ids ['99', 'x']", "GET /items"]),
    ("/recommend", {"history": ["0"], "k": 51}, 422, ["k: must be an integer from 1 to 50"]),
    ("/recommend", {"history": [0]}, 422, ["history[0]:", "item ids (strings"]),
    ("/recommend", {"history": []}, 422, ["history: must be a list of 1 to 100"]),
    ("/feedback", {"item_id": "1", "rating": 0}, 422, ["rating: must be an integer from 1 to 5"]),
    ("/feedback", {"item_id": "1", "rating": 6}, 422, ["rating: must be an integer from 1 to 5"]),
    ("/feedback", {"item_id": "1", "rating": 4.5}, 422, ["rating: must be an integer"]),
    ("/feedback", {"item_id": "1", "rating": True}, 422, ["rating: must be an integer"]),
    ("/feedback", {"rating": 3}, 422, ["item_id:", "Field required"]),
]


@pytest.mark.parametrize("route, body, status, words", BAD_REQUESTS)
def test_bad_requests_get_a_message_naming_the_fix(make_client, route, body, status, words):
    client = make_client(max_text_chars=100)
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, detail
    assert client.get("/healthz").status_code == 200
    assert client.post("/classify", json={"texts": ["fine"]}).status_code == 200


def test_bad_bodies_that_are_not_json(make_client):
    client = make_client(max_body_bytes=1000)
    r = client.post("/classify", content=b'{"texts": ["unclosed"', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = client.post("/classify", content=b'{"texts": ["ok"]}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"]
    r = client.post("/classify")
    assert r.status_code == 422 and "body: must be a JSON object" in r.json()["detail"]
    r = client.get("/items", params={"limit": 101})
    assert r.status_code == 422 and "limit: must be an integer from 1 to 100" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_oversize_bodies_get_413(make_client):
    client = make_client(max_body_bytes=1000)
    r = client.post("/classify", json={"texts": ["word " * 300]})  # declared by Content-Length
    assert r.status_code == 413
    assert "over the limit of 1000 bytes (LLM_TUTORIAL_SERVE_MAX_BODY_BYTES)" in r.json()["detail"]

    def chunks():  # no Content-Length: the bytes are counted as they arrive
        yield b'{"texts": ["'
        for _ in range(20):
            yield b"x" * 100
        yield b'"]}'

    r = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "LLM_TUTORIAL_SERVE_MAX_BODY_BYTES" in r.json()["detail"]
    assert client.post("/classify", json={"texts": ["small"]}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_switched_off_components_say_how_to_switch_them_on(make_client):
    client = make_client(Services(classify=keyword_classify, labels=["business", "sport"]),
                         components=("classify",))
    for method, route, body in [("post", "/ner", {"texts": ["x"]}), ("post", "/ask", {"question": "x"}),
                                ("post", "/recommend", {"history": ["0"]}), ("get", "/items", None),
                                ("post", "/feedback", {"item_id": "1", "rating": 3}),
                                ("get", "/feedback/count", None)]:
        r = client.request(method, route, json=body)
        assert r.status_code == 404, route
        assert "switched off" in r.json()["detail"] and "LLM_TUTORIAL_SERVE_COMPONENTS" in r.json()["detail"]
        assert "(now: classify)" in r.json()["detail"]
    assert client.get("/healthz").json()["components"] == {
        "classify": True, "ner": False, "ask": False, "recommend": False, "feedback": False}
    assert client.post("/classify", json={"texts": ["a match"]}).json()["results"][0]["label"] == "sport"


def test_a_slow_model_gets_504_and_the_service_goes_on(make_client):
    def slow_ner(texts):
        time.sleep(1.0)
        return capitalised_ner(texts)

    def slow_classify(texts):
        if any("slow" in t for t in texts):
            time.sleep(1.0)
        return keyword_classify(texts)

    client = make_client(fake_services(ner=slow_ner, classify=slow_classify), timeout_s=0.2)
    start = time.perf_counter()
    r = client.post("/ner", json={"texts": ["London"]})
    assert r.status_code == 504 and time.perf_counter() - start < 0.9
    assert "longer than 0.2 s (LLM_TUTORIAL_SERVE_TIMEOUT_S)" in r.json()["detail"]
    assert client.post("/classify", json={"texts": ["slow"]}).status_code == 504
    time.sleep(1.0)  # the abandoned batch finishes in its thread
    assert client.post("/classify", json={"texts": ["a match"]}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert 'llm_tutorial_serve_model_errors_total{kind="timeout",route="/ner"} 1.0' in client.get("/metrics").text


def test_a_model_exception_gets_500_and_the_next_request_is_served(make_client):
    def fragile(texts):
        if "boom" in texts:
            raise RuntimeError("the model fell over")
        return keyword_classify(texts)

    client = make_client(fake_services(classify=fragile))
    r = client.post("/classify", json={"texts": ["boom"]})
    assert r.status_code == 500
    assert "failed inside the model (RuntimeError)" in r.json()["detail"]
    assert "fell over" not in r.json()["detail"]  # internals stay in the log
    assert client.post("/classify", json={"texts": ["a cup match"]}).json()["results"][0]["label"] == "sport"
    r = client.post("/ask", json={"question": "x"})
    assert r.status_code == 200
    metrics = client.get("/metrics").text
    assert 'llm_tutorial_serve_model_errors_total{kind="exception",route="/classify"} 1.0' in metrics
    assert 'llm_tutorial_serve_requests_total{route="/classify",status="500"} 1.0' in metrics


def test_metrics_count_requests_latency_and_batches(make_client):
    client = make_client()
    for _ in range(3):
        client.post("/classify", json={"texts": ["a", "b"]})
    client.post("/classify", json={"texts": []})
    client.get("/no-such-page")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'llm_tutorial_serve_requests_total{route="/classify",status="200"} 3.0' in text
    assert 'llm_tutorial_serve_requests_total{route="/classify",status="422"} 1.0' in text
    assert 'llm_tutorial_serve_requests_total{route="other",status="404"} 1.0' in text
    assert 'llm_tutorial_serve_request_seconds_count{route="/classify"} 4.0' in text
    assert "llm_tutorial_serve_batch_size_sum 6.0" in text
    assert "llm_tutorial_serve_model_errors_total" in text
    assert create_app(fake_services(), Settings(components=("classify",)))  # a second app: no clash


# ------------------------------------------------------------------------------ micro-batching


def test_micro_batcher_batches_concurrent_callers_and_keeps_their_order():
    calls = []

    def double(items):
        calls.append(list(items))
        time.sleep(0.01)
        return [2 * x for x in items]

    async def main():
        batcher = MicroBatcher(double, max_batch=4, wait_ms=50)
        results = await asyncio.gather(*(batcher([i, 100 + i]) for i in range(10)))
        await batcher.aclose()
        return batcher, results

    batcher, results = asyncio.run(main())
    assert results == [[2 * i, 200 + 2 * i] for i in range(10)]
    assert all(len(c) <= 4 for c in calls) and batcher.items == 20
    assert batcher.calls == len(calls) == 5  # 20 items, 4 at a time


def test_micro_batcher_raises_a_batch_error_to_each_caller_and_recovers():
    def fragile(items):
        if "bad" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    async def main():
        batcher = MicroBatcher(fragile, max_batch=8, wait_ms=20)
        failed = await asyncio.gather(batcher(["bad"]), batcher(["a"]), return_exceptions=True)
        return failed, await batcher(["b", "c"])

    failed, later = asyncio.run(main())
    assert all(isinstance(e, ValueError) for e in failed)  # one batch: both callers hear of it
    assert later == ["B", "C"]


def test_concurrent_requests_are_micro_batched_with_the_unbatched_results(tmp_path):
    calls = []

    def counted(texts):
        calls.append(len(texts))
        time.sleep(0.02)
        return keyword_classify(texts)

    app = create_app(fake_services(classify=counted),
                     Settings(batch_size=16, batch_wait_ms=50, db=tmp_path / "f.db"))
    texts = [f"report {i} on the {'match' if i % 3 else 'markets'}" for i in range(16)]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/classify", json={"texts": [t]}) for t in texts))

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["results"][0] for r in responses] == keyword_classify(texts)
    assert app.state.batcher.calls == len(calls) < 16 and sum(calls) == 16
    assert max(calls) > 1


# ------------------------------------------------------------------------------ the real models


@pytest.mark.slow
def test_the_real_models_behind_the_routes(tmp_path):
    settings = Settings(articles_per_class=4, generator="none", db=tmp_path / "f.db",
                        components=("classify", "ner", "ask", "recommend"))
    services = serve.build_services(settings)
    assert services.labels == ["business", "entertainment", "politics", "sport", "tech"]
    with TestClient(create_app(services, settings)) as client:
        texts = ["The striker scored twice as Chelsea beat Arsenal in the cup match.",
                 "Shares in the bank fell after its profits dropped."]
        results = client.post("/classify", json={"texts": texts}).json()["results"]
        assert [r["label"] for r in results] == ["sport", "business"]
        for mine, direct in zip(results, services.classify(texts), strict=True):  # batched = unbatched
            assert mine["label"] == direct["label"]
            assert mine["probabilities"] == pytest.approx(direct["probabilities"], abs=1e-5)
            assert sum(mine["probabilities"].values()) == pytest.approx(1.0)

        entities = client.post("/ner", json={"texts": ["Ada Lovelace was born in London."]}).json()["entities"]
        assert {"text": "London", "label": "GPE", "start": 25, "end": 31} in entities[0]

        r = client.post("/ask", json={"question": "Who won the election?", "k": 3}).json()
        assert r["answer"] is None and len(r["citations"]) == 3
        assert [c["id"] for c in r["citations"]] == [1, 2, 3]
        assert any(w in c["text"].lower() for c in r["citations"] for w in ("won", "election"))

        ids = [item["id"] for item in client.get("/items", params={"limit": 100}).json()["items"]]
        assert ids == [str(i) for i in range(20)]
        items = client.post("/recommend", json={"history": ["0", "1"], "k": 5}).json()["items"]
        assert len(items) == 5 and not {"0", "1"} & {i["id"] for i in items}
        assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
        assert client.post("/recommend", json={"history": ["20"]}).status_code == 404


# ------------------------------------------------------------------------------ a real server


def test_a_real_server_under_load(tmp_path, capsys):
    env = {"LLM_TUTORIAL_SERVE_COMPONENTS": "feedback", "LLM_TUTORIAL_SERVE_DB": str(tmp_path / "f.db")}
    with serve.running_server(env, startup_timeout_s=60) as server:
        bodies = [{"item_id": str(i), "rating": 1 + i % 5} for i in range(50)]
        result = serve.load_test(server.url, "/feedback", bodies, requests=500, concurrency=8, timeout_s=60)
        count = httpx.get(f"{server.url}/feedback/count", trust_env=False).json()["count"]
        metrics = httpx.get(f"{server.url}/metrics", trust_env=False).text
    assert server.process.poll() is not None  # stopped at the end of the block
    assert result["statuses"] == {201: 500} and result["failed"] == 0
    assert count == 500
    assert 'llm_tutorial_serve_requests_total{route="/feedback",status="201"} 500.0' in metrics
    with capsys.disabled():
        print(f"\nload test, POST /feedback (fsync per commit): {result['requests']} requests at concurrency "
              f"{result['concurrency']} in {result['seconds']:.1f} s = {result['throughput']:.0f} requests/s, "
              f"p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms")


def test_acknowledged_feedback_survives_kill_9(tmp_path, capsys):
    result = serve.crash_test(tmp_path / "crash.sqlite3", workers=8, acknowledged=100, timeout_s=60)
    assert result["acknowledged"] >= 100
    assert result["acknowledged_missing"] == []
    assert result["acknowledged_present"] == result["acknowledged"]
    assert result["rows"] == result["count_after_restart"]
    assert result["rows"] == result["acknowledged"] + result["unacknowledged_present"]
    assert result["sent"] - result["acknowledged"] <= 8  # at most one request in flight per client
    with capsys.disabled():
        print(f"\ncrash test: {result['acknowledged']} acknowledged, all {result['acknowledged_present']} present "
              f"after kill -9 and restart; {result['sent'] - result['acknowledged']} sent but unacknowledged, "
              f"of which {result['unacknowledged_present']} stored")
