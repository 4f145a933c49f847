"""
# Serving: the course's models behind HTTP

A model in a notebook answers one person; a model behind HTTP answers whoever asks, as often as
they ask, with whatever they send. This module is the course's small service (notebook 13):
FastAPI routes in front of the models of the earlier notebooks, and the few things that turn a
function call into a service that stays up.

| route | body | answers with |
|---|---|---|
| `POST /classify` | `{"texts": ["Shares fell."]}` | each text's BBC topic and its probabilities (MiniLM embeddings + logistic regression) |
| `POST /ner` | `{"texts": [...]}` | each text's entities (spaCy): text, label, character offsets |
| `POST /ask` | `{"question": "...", "k": 3}` | BM25's `k` best news passages and, with SmolLM2, a short answer citing them as `[n]` |
| `POST /recommend` | `{"history": ["0", "7"], "k": 10}` | unread articles nearest to the mean MiniLM embedding of those read |
| `GET /items?offset=0&limit=20` | | the article ids and titles `/recommend` knows |
| `POST /feedback` | `{"item_id": "7", "rating": 4}` | `201` and the stored row's id, once it is on disk |
| `GET /feedback/count` | | how many ratings are stored |
| `GET /healthz` | | which components are up (a load balancer's readiness probe) |
| `GET /metrics` | | counters and histograms in Prometheus' text format |

Run it with `make serve` or `python -m llm_tutorial.serve`; every setting is an environment
variable (`Settings`). `build_services` loads the models once at start-up; `create_app` wraps
any `Services` (plain functions, so tests inject small fakes) in the routes below.

## What stands between a request and a model

* **Validation.** Each body is a pydantic model that forbids unknown keys and coerces no type
  (`"5"` is not a rating). A bad request gets `422` with one readable sentence that names the
  field and shows a valid body, never a stack trace; invalid JSON gets `400`.
* **Size limits.** A body over `LLM_TUTORIAL_SERVE_MAX_BODY_BYTES` is refused with `413` before
  it is parsed (by its `Content-Length`, and by counting the bytes that actually arrive); a text
  over `LLM_TUTORIAL_SERVE_MAX_TEXT_CHARS` with `422`. A model's cost grows with its input, so
  an unbounded input is a way to stop the service.
* **A thread and a deadline.** A model call is blocking work: run on the event loop it would
  stall every other request. Each runs in a worker thread (`asyncio.to_thread`) under
  `asyncio.wait_for(..., LLM_TUTORIAL_SERVE_TIMEOUT_S)`; past the deadline the client gets
  `504` (the thread cannot be stopped and finishes unobserved). An exception inside a model
  gets `500` with a short message (the traceback goes to the log) and the next request is
  served as usual.
* **A component that is off** (`LLM_TUTORIAL_SERVE_COMPONENTS`) answers `404` saying how to
  switch it on.

## Micro-batching

MiniLM embeds 8 sentences in one forward pass (padded to the longest) in much less time than 8
passes of one: the weights are read once and the matrix products are larger. Requests arrive one
by one, so `MicroBatcher` gathers them: every text of every `/classify` request is queued as one
item, and a single worker runs the model on up to `LLM_TUTORIAL_SERVE_BATCH_SIZE` items as soon
as that many are queued, or once the oldest has waited `LLM_TUTORIAL_SERVE_BATCH_WAIT_MS`; then
it hands each caller its own results. The price is that wait, a few milliseconds, at low load;
under load the queue fills while the previous batch runs, so batches grow exactly when they
help (on the course's 2-core CPU, about 1.5 times the requests per second at 8 concurrent
clients: `docs/results/serving.md`). Queuing texts, not requests, bounds the model's batch
however many texts a request sends. Batches run one at a time, so the model never competes with
itself for the cores. One text that makes the model raise fails every request in its batch; a
production batcher would retry those one by one. (NER is not batched: spaCy's small pipeline
gains little from it.)

## Feedback that survives a crash

`POST /feedback` stores a rating in SQLite (`FeedbackStore`) in WAL mode with
`synchronous=FULL`, and answers `201` with the row id only after the commit has returned, that
is after the row is in the write-ahead log and the log is flushed to disk. So every rating a
client saw acknowledged survives the server being killed: `crash_test` posts from 8 clients at
once, kills the server with SIGKILL while requests are in flight, restarts it on the same file
and checks that every acknowledged row is there. (A request in flight at the kill may or may
not have been stored; its client saw an error and may retry. `kill -9` tests the process
dying, not the machine losing power: the operating system's cache survives a killed process,
and surviving power loss is what the flush of `synchronous=FULL` is for.)

## Watching it

`/metrics` exposes, per app (its own `CollectorRegistry`, so several apps share a process):
requests by route and status, latency histograms by route, model errors (timeouts, exceptions)
by route, and the sizes of micro-batches. Prometheus scrapes this page. From the outside,
`running_server` starts the service in a subprocess and `load_test` measures its throughput and
latency percentiles at a given concurrency (`benchmarks/serve_load.py`,
`docs/results/serving.md`).

## Scaling out

One process holds one copy of each model and serves requests concurrently on one event loop
(`main` runs uvicorn with one worker). To use more cores, or more machines:

* `uvicorn --factory llm_tutorial.serve:app_from_env --workers N` runs N processes on one
  port; each loads its own models (N times the memory). They share the SQLite file: WAL mode
  lets readers run beside the one writer, and the busy timeout makes concurrent writers wait
  their turn instead of failing. Each worker counts its own metrics, so `/metrics` shows the
  worker that answered (prometheus_client's multiprocess mode sums them).
* Several replicas (containers, machines) behind a load balancer (nginx, a Kubernetes
  Service) with `/healthz` as the readiness probe: a replica gets traffic only once its models
  are loaded. Feedback then belongs in a shared database (PostgreSQL) rather than a local file.
* Ray Serve (or a similar engine) adds replicas when the queue grows and removes them when it
  empties, and batches requests across them: the same ideas, managed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

log = logging.getLogger("llm_tutorial.serve")

ENV = "LLM_TUTORIAL_SERVE_"
COMPONENTS = ("classify", "ner", "ask", "recommend", "feedback")
GENERATORS = ("smollm2", "none")
MAX_TEXTS, MAX_K_ASK, MAX_K_RECOMMEND, MAX_HISTORY, MAX_ITEMS_PAGE = 32, 10, 50, 100, 100

# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told, each field read by `from_env` from the environment
    variable `LLM_TUTORIAL_SERVE_` + its name in capitals (`timeout_s` from
    `LLM_TUTORIAL_SERVE_TIMEOUT_S`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    components: tuple[str, ...] = COMPONENTS  # among classify, ner, ask, recommend, feedback
    db: Path = Path("outputs/serve/feedback.sqlite3")  # SQLite file of the feedback
    max_body_bytes: int = 64 * 1024
    max_text_chars: int = 5000
    timeout_s: float = 10.0  # per request, for the model call
    batch_size: int = 16  # most texts in one micro-batch
    batch_wait_ms: float = 5.0  # longest a text waits for company
    articles_per_class: int = 40  # BBC articles per topic behind /classify, /ask, /recommend
    generator: str = "smollm2"  # "none": /ask returns the retrieved passages without an answer

    def __post_init__(self):
        def check(name: str, ok: bool, allowed: str):
            if not ok:
                raise ValueError(f"{ENV}{name.upper()}={getattr(self, name)!r}: must be {allowed}")

        check("host", bool(str(self.host).strip()), "a host name or address, e.g. 127.0.0.1")
        check("port", 1 <= self.port <= 65535, "an integer from 1 to 65535")
        check("components", bool(self.components) and set(self.components) <= set(COMPONENTS),
              f"a comma-separated list of one or more of {', '.join(COMPONENTS)}")
        check("max_body_bytes", self.max_body_bytes >= 1, "an integer >= 1 (bytes)")
        check("max_text_chars", self.max_text_chars >= 1, "an integer >= 1 (characters)")
        check("timeout_s", self.timeout_s > 0, "a number of seconds > 0")
        check("batch_size", self.batch_size >= 1, "an integer >= 1")
        check("batch_wait_ms", self.batch_wait_ms >= 0, "a number of milliseconds >= 0")
        check("articles_per_class", self.articles_per_class >= 2, "an integer >= 2")
        check("generator", self.generator in GENERATORS, " or ".join(GENERATORS))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default: `os.environ`); a variable that is unset or empty
        keeps its default. A value that cannot be read raises `ValueError` naming the variable
        and what it accepts."""
        environ = os.environ if environ is None else environ
        parse: dict[str, Callable[[str], Any]] = {
            "port": int, "max_body_bytes": int, "max_text_chars": int, "batch_size": int,
            "articles_per_class": int, "timeout_s": float, "batch_wait_ms": float, "db": Path,
            "components": lambda raw: tuple(c.strip().lower() for c in raw.split(",") if c.strip()),
            "generator": lambda raw: raw.strip().lower(),
        }
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV + f.name.upper(), "").strip()
            if not raw:
                continue
            try:
                values[f.name] = parse.get(f.name, str)(raw)
            except ValueError:
                kind = "an integer" if parse[f.name] is int else "a number"
                raise ValueError(f"{ENV}{f.name.upper()}={raw!r}: must be {kind}") from None
        return cls(**values)


# ---------------------------------------------------------------------------- the models


@dataclass
class Services:
    """The models behind the routes, as plain functions (None: the component is off).

    * `classify(texts) -> [{"label": str, "probabilities": {label: p}}]`, one per text;
    * `ner(texts) -> [[{"text", "label", "start", "end"}]]`, one list of entities per text;
    * `ask(question, k) -> {"answer": str | None, "citations": [{"id", "doc", "section", "text"}]}`:
      the passages numbered as the model saw them, so that an answer's `[n]` is the citation
      with `id` n (the real one adds each passage's BM25 `score`, the numbers the answer `cited`
      (its own `[n]`, else `applications.attribute`'s post-hoc citation) and whether it is
      `grounded` there, `applications.grounded`);
    * `recommend(history, k) -> [{"id", "title", "score"}]`, best first, none from `history`;

    `labels` are the classifier's labels, `item_ids` the ids `recommend` accepts and `titles`
    their titles (for `GET /items`)."""

    classify: Callable[[list[str]], list[dict]] | None = None
    ner: Callable[[list[str]], list[list[dict]]] | None = None
    ask: Callable[[str, int], dict] | None = None
    recommend: Callable[[list[str], int], list[dict]] | None = None
    labels: list[str] = field(default_factory=list)
    item_ids: set[str] = field(default_factory=set)
    titles: dict[str, str] = field(default_factory=dict)


def one_at_a_time(fn: Callable) -> Callable:
    """`fn` behind a lock: concurrent calls from worker threads run one after another. On a CPU
    two model calls at once only fight over the same cores, and spaCy's string store is not
    safe to write from two threads."""
    lock = threading.Lock()

    def locked(*args):
        with lock:
            return fn(*args)

    return locked


def build_services(settings: Settings) -> Services:
    """The real models, loaded from the course's offline assets (nothing is downloaded).

    BBC News (`articles_per_class` per topic) is the world the service knows: its train split
    fits the classifier, and all its articles (train, then test) are the knowledge base of
    `/ask` and the items of `/recommend`, an item's id being its position in that list."""
    on = set(settings.components)
    services = Services()
    if not on & {"classify", "ner", "ask", "recommend"}:
        return services  # feedback alone needs no model (and starts in a second)
    from llm_tutorial import applications, assets

    start = time.perf_counter()
    if on & {"classify", "ask", "recommend"}:
        n = settings.articles_per_class
        # every topic needs at least one test article, or the stratified split fails
        data = assets.load_bbc_news(max_per_class=n, test_size=max(0.2, 1 / n))
        articles = data.train_texts + data.test_texts
    if on & {"classify", "recommend"}:
        from llm_tutorial.finetuning import embed_texts

        encoder, tokenizer = assets.load_minilm()

        @one_at_a_time
        def embed(texts: list[str]):
            # `embed_texts` pads every text to `max_length`: ask for the longest text's length
            # (at most 128 tokens), or a short sentence would pay for 128 positions
            longest = max(map(len, tokenizer(texts, truncation=True, max_length=128)["input_ids"]))
            return embed_texts(encoder, tokenizer, texts, max_length=longest)

        vectors = embed(articles)  # the first len(train_texts) rows train the classifier

    if "classify" in on:
        from sklearn.linear_model import LogisticRegression

        probe = LogisticRegression(C=1.0, max_iter=2000)
        probe.fit(vectors[: len(data.train_texts)], data.train_labels)
        labels = [data.label_names[c] for c in probe.classes_]
        accuracy = probe.score(vectors[len(data.train_texts):], data.test_labels)
        log.info("classifier: %d train articles, accuracy %.2f on %d held out", len(data.train_texts),
                 accuracy, len(data.test_texts))

        def classify(texts: list[str]) -> list[dict]:
            probabilities = probe.predict_proba(embed(texts))
            return [{"label": labels[int(p.argmax())],
                     "probabilities": {label: float(q) for label, q in zip(labels, p, strict=True)}}
                    for p in probabilities]

        services.classify, services.labels = classify, labels

    if "ner" in on:
        nlp = assets.load_spacy_ner()

        def ner(texts: list[str]) -> list[list[dict]]:
            return [[{"text": e.text, "label": e.label_, "start": e.start_char, "end": e.end_char}
                     for e in doc.ents] for doc in nlp.pipe(texts)]

        services.ner = one_at_a_time(ner)

    if "ask" in on:
        chunks = applications.news_chunks(articles, max_words=60)
        retriever = applications.BM25Retriever(chunks)
        generator = assets.load_smollm2() if settings.generator == "smollm2" else None

        def ask(question: str, k: int) -> dict:
            hits = [(i, score) for i, score in retriever.search([question], k)[0] if score > 0]
            passages = [chunks[i] for i, _ in hits]  # none when no word of the question occurs
            answer, cited, grounded = None, [], None
            if generator is not None and passages:
                prompt = applications.rag_prompt(question, passages, mitigate=True)
                answer = applications.rag_answers(*generator, [prompt], max_new_tokens=24)[0]
                # the model's own [n], else the passage its answer leans on (a post-hoc citation)
                cited = ([n for n in applications.citations(answer) if 1 <= n <= len(passages)]
                         or [applications.attribute(answer, passages, question)])
                grounded = applications.grounded(answer, passages, cited=cited[0], question=question)
            return {"answer": answer, "cited": cited, "grounded": grounded,
                    "citations": [{"id": n, "doc": c.doc, "section": c.section, "text": c.text,
                                   "score": score}
                                  for n, (c, (_, score)) in enumerate(zip(passages, hits, strict=True), 1)]}

        services.ask = one_at_a_time(ask)

    if "recommend" in on:
        unit = applications.normalise(vectors)
        index = applications.VectorIndex(unit)
        titles = [a.strip().partition("\n")[0].strip() for a in articles]

        def recommend(history: list[str], k: int) -> list[dict]:
            read = {int(i) for i in history}
            seen = {articles[i] for i in read}  # BBC News repeats some articles: skip their copies
            query = applications.normalise(unit[sorted(read)].mean(0, keepdims=True))
            scores, ids = index.search(query, len(index))
            best = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True)
                    if int(i) not in read and articles[int(i)] not in seen]
            return [{"id": str(i), "title": titles[i], "score": s} for i, s in best[:k]]

        services.recommend = recommend
        services.titles = {str(i): title for i, title in enumerate(titles)}
        services.item_ids = set(services.titles)
    log.info("models ready in %.1f s: %s", time.perf_counter() - start, ", ".join(sorted(on)))
    return services


# ---------------------------------------------------------------------------- micro-batching


class MicroBatcher:
    """Gathers items submitted by concurrent callers into batches for `fn` (a function from a
    list of items to a list of results, one each, run in a worker thread).

    `await batcher(items)` queues each item and returns the caller's results in order. A batch
    starts when `max_batch` items wait, or when the oldest has waited `wait_ms`; batches run one
    at a time. An exception in `fn` is raised to every caller of that batch, and the next batch
    runs as usual. `calls` and `items` count batches and items run; `on_batch(size)` is called
    before each batch (the service records the sizes in /metrics)."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = 16, wait_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or wait_ms < 0:
            raise ValueError(f"max_batch={max_batch}, wait_ms={wait_ms}: need max_batch >= 1, wait_ms >= 0")
        self.fn, self.max_batch, self.wait_s, self.on_batch = fn, max_batch, wait_ms / 1000, on_batch
        self.calls = self.items = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self, loop: asyncio.AbstractEventLoop):
        """A queue and a worker on this event loop (a test client may run each request on a
        loop of its own; a server runs one loop)."""
        self._loop = loop
        self._pending: list[tuple[Any, asyncio.Future, float]] = []  # (item, its future, queued at)
        self._arrived, self._full = asyncio.Event(), asyncio.Event()
        self._worker = loop.create_task(self._work())

    async def __call__(self, items: Sequence) -> list:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker.done():
            self._start(loop)
        futures = [loop.create_future() for _ in items]
        self._pending += [(item, future, loop.time()) for item, future in zip(items, futures, strict=True)]
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return list(await asyncio.gather(*futures))

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            wait = self._pending[0][2] + self.wait_s - loop.time()
            if len(self._pending) < self.max_batch and wait > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            if len(self._pending) < self.max_batch:
                self._full.clear()
            if not self._pending:
                self._arrived.clear()
            batch = [(item, future) for item, future, _ in batch if not future.done()]  # callers gone
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]):
        self.calls, self.items = self.calls + 1, self.items + len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} items")
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def aclose(self):
        """Stop the worker (at shutdown); callers still waiting are cancelled."""
        if self._loop is asyncio.get_running_loop() and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            for _, future, _ in self._pending:
                future.cancel()


# ---------------------------------------------------------------------------- feedback storage


class FeedbackStore:
    """Ratings in a SQLite file: WAL mode (readers never block the writer), `synchronous=FULL`
    (each commit is flushed to disk before it returns), a busy timeout (writers from other
    processes wait for the lock instead of failing). One connection, shared by the worker
    threads under a lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
        self.lock = threading.Lock()
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode ({mode}); use a local file system")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        with self.db:
            self.db.execute("""CREATE TABLE IF NOT EXISTS feedback (
                id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, request_id TEXT,
                item_id TEXT NOT NULL, rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5), user TEXT)""")

    def add(self, item_id: str, rating: int, request_id: str | None = None, user: str | None = None) -> int:
        """Store one rating; return its row id once the commit has returned (it is on disk)."""
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self.lock, self.db:  # commits at the end of the block, or rolls back on an error
            cursor = self.db.execute(
                "INSERT INTO feedback (created_at, request_id, item_id, rating, user) VALUES (?, ?, ?, ?, ?)",
                (now, request_id, item_id, rating, user))
        return int(cursor.lastrowid)

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def close(self):
        with self.lock:
            self.db.close()


# ---------------------------------------------------------------------------- request bodies

Text = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"\S")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextsRequest(Body):
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)


class AskRequest(Body):
    question: Text
    k: int = Field(3, ge=1, le=MAX_K_ASK)


class RecommendRequest(Body):
    history: list[ItemId] = Field(min_length=1, max_length=MAX_HISTORY)
    k: int = Field(10, ge=1, le=MAX_K_RECOMMEND)


class FeedbackRequest(Body):
    item_id: ItemId
    rating: int = Field(ge=1, le=5)
    request_id: str | None = Field(None, max_length=100)
    user: str | None = Field(None, max_length=100)


def request_hints(settings: Settings) -> dict[str, tuple[str, dict[str, str]]]:
    """Per route: a valid example and, per field, what it must be; the 422 messages use them."""
    texts = (f"must be a list of 1 to {MAX_TEXTS} non-empty strings of at most "
             f"{settings.max_text_chars} characters")
    return {
        "/classify": ('{"texts": ["Shares fell."]}', {"texts": texts}),
        "/ner": ('{"texts": ["Ada Lovelace was born in London."]}', {"texts": texts}),
        "/ask": ('{"question": "Who won the match?", "k": 3}', {
            "question": f"must be a non-empty string of at most {settings.max_text_chars} characters",
            "k": f"must be an integer from 1 to {MAX_K_ASK} (default 3)"}),
        "/recommend": ('{"history": ["0", "7"], "k": 5}', {
            "history": f"must be a list of 1 to {MAX_HISTORY} item ids (strings; GET /items lists them)",
            "k": f"must be an integer from 1 to {MAX_K_RECOMMEND} (default 10)"}),
        "/feedback": ('{"item_id": "7", "rating": 4, "request_id": "..."}', {
            "item_id": "must be a non-empty string of at most 100 characters",
            "rating": "must be an integer from 1 to 5",
            "request_id": "must be a string of at most 100 characters (the rated answer's request_id) or left out",
            "user": "must be a string of at most 100 characters or left out"}),
        "/items": ("GET /items?offset=0&limit=20", {
            "offset": "must be an integer >= 0",
            "limit": f"must be an integer from 1 to {MAX_ITEMS_PAGE}"}),
    }


def validation_message(errors: Sequence[Mapping[str, Any]], path: str,
                       hints: Mapping[str, tuple[str, dict[str, str]]]) -> tuple[int, str]:
    """pydantic's errors as one sentence per problem (the field, what it must be, a valid
    example) and the status: 400 for a body that is not JSON, else 422."""
    example, fixes = hints.get(path, ("", {}))
    example = f", e.g. {example}" if example else ""
    status, messages = 422, []
    for error in errors:
        loc = list(error["loc"][1:])
        if error["type"] == "json_invalid":
            status = 400
            reason = (error.get("ctx") or {}).get("error", "invalid")
            messages.append(f"body: not valid JSON ({reason} at character {loc[0] if loc else 0}); "
                            f"send a JSON object{example}")
            continue
        if not loc or not isinstance(loc[0], str):
            messages.append(f"body: must be a JSON object sent with Content-Type: application/json{example}")
            continue
        where = str(loc[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
        if error["type"] == "extra_forbidden":
            messages.append(f"{where}: unknown key; {path} takes {', '.join(fixes) or 'no body'}{example}")
        elif loc[0] in fixes:
            messages.append(f"{where}: {fixes[loc[0]]}{example} (got: {error['msg']})")
        else:
            messages.append(f"{where}: {error['msg']}{example}")
    return status, "; ".join(dict.fromkeys(messages))


# ---------------------------------------------------------------------------- the app


class Metrics:
    """The service's Prometheus instruments, in a registry of their own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("llm_tutorial_serve_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("llm_tutorial_serve_request_seconds", "time to answer, by route",
                                 ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.model_errors = Counter("llm_tutorial_serve_model_errors", "model calls that timed out or raised",
                                    ["route", "kind"], registry=self.registry)
        self.batch_size = Histogram("llm_tutorial_serve_batch_size", "texts per micro-batch of /classify",
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))


class MeasureRequests:
    """ASGI middleware: counts every response by route and status and times it. Paths that are
    no route count as `other`, so that scanners cannot grow the metrics without bound."""

    def __init__(self, app, metrics: Metrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        status, start = 500, time.perf_counter()

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


class LimitBody:
    """ASGI middleware: refuses a body over `max_bytes` with 413, by its declared
    `Content-Length` and by the bytes that arrive (a chunked body declares none). The body is
    read here, at most `max_bytes`, and handed on to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(int(declared), scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self.refuse(None, scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def refuse(self, size: int | None, scope, receive, send):
        size = f" of {size} bytes" if size is not None else ""
        detail = (f"request body{size} is over the limit of {self.max_bytes} bytes "
                  f"({ENV}MAX_BODY_BYTES): send fewer or shorter texts, or raise the limit")
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def create_app(services: Services, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving `services` under `settings` (default: `Settings()`). The feedback
    store (when `feedback` is among `settings.components`) opens `settings.db` now; the app's
    state holds `metrics`, `batcher` (None without a classifier) and `store` for tests."""
    settings = settings or Settings()
    metrics = Metrics()
    batcher = None
    if services.classify is not None:
        batcher = MicroBatcher(services.classify, settings.batch_size, settings.batch_wait_ms,
                               on_batch=metrics.batch_size.observe)
    store = FeedbackStore(settings.db) if "feedback" in settings.components else None
    up = {"classify": services.classify is not None, "ner": services.ner is not None,
          "ask": services.ask is not None, "recommend": services.recommend is not None,
          "feedback": store is not None}
    hints = request_hints(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if batcher is not None:
            await batcher.aclose()
        if store is not None:
            store.close()

    app = FastAPI(title="llm-tutorial service", version="1", lifespan=lifespan,
                  description="The course's models over HTTP (notebook 13); see llm_tutorial/serve.py.")
    app.state.metrics, app.state.batcher, app.state.store = metrics, batcher, store

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        status, detail = validation_message(error.errors(), request.url.path, hints)
        return JSONResponse({"detail": detail}, status_code=status)

    def require(component: str):
        if not up[component]:
            now = ",".join(c for c in COMPONENTS if up[c]) or "none"
            raise HTTPException(404, f"{component} is switched off in this server: start it with "
                                     f"{component} in {ENV}COMPONENTS (now: {now})")

    def check_lengths(name: str, texts: Sequence[str]):
        for i, text in enumerate(texts):
            if len(text) > settings.max_text_chars:
                where = f"{name}[{i}]" if name == "texts" else name
                raise HTTPException(422, f"{where}: {len(text)} characters, over the limit of "
                                         f"{settings.max_text_chars} ({ENV}MAX_TEXT_CHARS): "
                                         "shorten or split it, or raise the limit")

    async def call_model(route: str, work: Awaitable):
        """Await a model's work under the deadline; a timeout is 504, an exception 500."""
        try:
            return await asyncio.wait_for(work, settings.timeout_s)
        except asyncio.TimeoutError:
            metrics.model_errors.labels(route, "timeout").inc()
            raise HTTPException(504, f"{route} took longer than {settings.timeout_s:g} s "
                                     f"({ENV}TIMEOUT_S): send less text, or raise the limit") from None
        except Exception as error:
            metrics.model_errors.labels(route, "exception").inc()
            log.exception("%s failed", route)
            raise HTTPException(500, f"{route} failed inside the model ({type(error).__name__}); "
                                     "the traceback is in the server's log") from None

    @app.post("/classify")
    async def classify(body: TextsRequest):
        require("classify")
        check_lengths("texts", body.texts)
        results = await call_model("/classify", batcher(body.texts))
        return {"request_id": uuid.uuid4().hex, "results": results}

    @app.post("/ner")
    async def ner(body: TextsRequest):
        require("ner")
        check_lengths("texts", body.texts)
        entities = await call_model("/ner", asyncio.to_thread(services.ner, body.texts))
        return {"request_id": uuid.uuid4().hex, "entities": entities}

    @app.post("/ask")
    async def ask(body: AskRequest):
        require("ask")
        check_lengths("question", [body.question])
        answer = await call_model("/ask", asyncio.to_thread(services.ask, body.question, body.k))
        return {"request_id": uuid.uuid4().hex, **answer}

    @app.post("/recommend")
    async def recommend(body: RecommendRequest):
        require("recommend")
        unknown = [i for i in dict.fromkeys(body.history) if i not in services.item_ids]
        if unknown:
            raise HTTPException(404, f"history: unknown item ids {unknown[:5]}; GET /items?offset=0&limit="
                                     f"{MAX_ITEMS_PAGE} lists the {len(services.item_ids)} valid ids")
        items = await call_model("/recommend", asyncio.to_thread(services.recommend, body.history, body.k))
        return {"request_id": uuid.uuid4().hex, "items": items}

    @app.get("/items")
    async def items(offset: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS_PAGE)] = 20):
        require("recommend")
        ids = sorted(services.item_ids, key=lambda i: (len(i), i))  # "2" before "10"
        page = [{"id": i, "title": services.titles.get(i, "")} for i in ids[offset:offset + limit]]
        return {"total": len(ids), "offset": offset, "limit": limit, "items": page}

    @app.post("/feedback", status_code=201)
    async def feedback(body: FeedbackRequest):
        require("feedback")
        row = await call_model("/feedback", asyncio.to_thread(
            store.add, body.item_id, body.rating, body.request_id, body.user))
        return {"id": row}

    @app.get("/feedback/count")
    async def feedback_count():
        require("feedback")
        return {"count": await asyncio.to_thread(store.count)}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "components": up, "labels": services.labels}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(LimitBody, max_bytes=settings.max_body_bytes)
    app.add_middleware(MeasureRequests, metrics=metrics, routes={r.path for r in app.routes})
    return app


def app_from_env() -> FastAPI:
    """The app as configured by the environment: `uvicorn --factory llm_tutorial.serve:app_from_env`."""
    settings = Settings.from_env()
    return create_app(build_services(settings), settings)


def main():
    """`python -m llm_tutorial.serve`: load the models, then serve on one uvicorn worker."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    app = create_app(build_services(settings), settings)
    uvicorn.run(app, host=settings.host, port=settings.port, workers=1, log_level="info")


# ---------------------------------------------------------------------------- measuring it


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A service running in a subprocess: its base URL, the process and its log file."""

    url: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def running_server(env: Mapping[str, str] | None = None, startup_timeout_s: float = 300.0,
                   log: str | os.PathLike | None = None) -> Iterator[Server]:
    """`python -m llm_tutorial.serve` in a subprocess on 127.0.0.1 and a free port, with `env`
    added to the environment; yields once `/healthz` answers, and stops the server at the end
    (SIGTERM, then SIGKILL). Its output goes to `log` (default: a temporary file, removed at
    the end unless the server failed to start). The clients here ignore proxy settings
    (`trust_env=False`): the server is on this machine."""
    import httpx

    port = free_port()
    temporary = log is None
    if temporary:
        fd, log = tempfile.mkstemp(prefix="serve-", suffix=".log")
        os.close(fd)
    log = Path(log)
    environment = {**os.environ, **(env or {}), f"{ENV}HOST": "127.0.0.1", f"{ENV}PORT": str(port)}
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "llm_tutorial.serve"], env=environment,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server, started = Server(f"http://127.0.0.1:{port}", process, log), False
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode} before answering "
                                   f"/healthz; its log ({log}) ends:\n{log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /healthz within {startup_timeout_s:g} s; "
                                   f"its log: {log}")
            time.sleep(0.1)
        started = True
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if temporary and started:
            log.unlink(missing_ok=True)


def load_test(url: str, path: str, bodies: Sequence[Mapping[str, Any]], requests: int = 500,
              concurrency: int = 8, timeout_s: float = 60.0) -> dict[str, Any]:
    """`requests` POSTs to `url + path` from `concurrency` clients at once, each sending the
    next body of `bodies` (cycled) as soon as its previous answer came. Returns the wall time,
    throughput, latency percentiles (ms) and every latency (`latencies_ms`), the count of each
    status and `failed` (any answer that is not 2xx, or no answer). Raises `TimeoutError` past
    `timeout_s` in all."""
    import httpx

    async def run():
        latencies, statuses = [], Tally()
        todo = iter(range(requests))  # shared: each index is taken by one client
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, trust_env=False) as client:

            async def one_client():
                for i in todo:
                    start = time.perf_counter()
                    try:
                        response = await client.post(path, json=bodies[i % len(bodies)])
                        statuses[response.status_code] += 1
                    except httpx.HTTPError as error:
                        statuses[type(error).__name__] += 1
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(one_client() for _ in range(concurrency))), timeout_s)
            return time.perf_counter() - start, latencies, statuses

    seconds, latencies, statuses = asyncio.run(run())
    latencies_ms = [s * 1000 for s in latencies]
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    ok = sum(n for status, n in statuses.items() if isinstance(status, int) and 200 <= status < 300)
    return {"path": path, "requests": requests, "concurrency": concurrency, "seconds": seconds,
            "throughput": requests / seconds, "p50_ms": cuts[49], "p95_ms": cuts[94], "p99_ms": cuts[98],
            "latencies_ms": latencies_ms, "statuses": dict(statuses), "failed": requests - ok}


def crash_test(db: str | os.PathLike, workers: int = 8, acknowledged: int = 100,
               timeout_s: float = 120.0) -> dict[str, Any]:
    """Durability of `/feedback` under `kill -9`. A server with only the feedback component and
    the SQLite file `db` takes ratings from `workers` concurrent clients; once `acknowledged`
    ratings have been answered 201, the server is killed with SIGKILL while requests are in
    flight; a new server is started on the same file. Returns the counts: `acknowledged`,
    `sent` (acknowledged or in flight at the kill), `rows` in the file, `acknowledged_present`
    (with the rating sent), `acknowledged_missing` (ids; must be empty), `unacknowledged_present`
    (stored, but the client never heard), and `count_after_restart` (the new server's
    `/feedback/count`)."""
    import httpx

    env = {f"{ENV}COMPONENTS": "feedback", f"{ENV}DB": str(db)}
    acked: dict[str, tuple[int, int]] = {}  # request_id -> (row id, rating)
    sent: set[str] = set()
    lock, enough, stop = threading.Lock(), threading.Event(), threading.Event()

    def client(worker: int, url: str):
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
            for i in itertools.count():
                if stop.is_set():
                    return
                request_id, rating = f"w{worker}-{i}", 1 + (worker + i) % 5
                with lock:
                    sent.add(request_id)
                try:
                    response = http.post("/feedback", json={"item_id": str(i), "rating": rating,
                                                            "request_id": request_id})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 201:
                    with lock:
                        acked[request_id] = (response.json()["id"], rating)
                        if len(acked) >= acknowledged:
                            enough.set()

    with running_server(env) as server:
        threads = [threading.Thread(target=client, args=(w, server.url), daemon=True) for w in range(workers)]
        for t in threads:
            t.start()
        try:
            if not enough.wait(timeout_s):
                raise TimeoutError(f"only {len(acked)} ratings acknowledged in {timeout_s:g} s")
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    with running_server(env) as restarted:
        count = httpx.get(f"{restarted.url}/feedback/count", timeout=10, trust_env=False).json()["count"]
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = {request_id: (row, rating) for row, request_id, rating in
                connection.execute("SELECT id, request_id, rating FROM feedback")}
    return {"acknowledged": len(acked), "sent": len(sent), "rows": len(rows),
            "acknowledged_present": sum(rows.get(r) == v for r, v in acked.items()),
            "acknowledged_missing": sorted(r for r, v in acked.items() if rows.get(r) != v),
            "unacknowledged_present": sum(r not in acked for r in rows),
            "count_after_restart": count}


if __name__ == "__main__":
    main()
