"""The REST API under /v1: every verb of `Memory`, bodies being the package's pydantic models.

Endpoints are plain (sync) functions: FastAPI runs them on its thread pool, and `Memory` is
thread-safe, so a slow call never blocks the event loop. Those that use the local model or wait
for a consolidation job (answer, plan, backup) take their turn on the model's lane instead; answer
and plan are skipped if their client has gone by then (a backup asked for is made).
"""
from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, TextIO

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import transfer
from ..errors import InvalidInputError
from ..notes import Answer, DecayReport, Decision, Hit, ImportReport, LedgerEntry, MemoryStats, Note
from .access import ScopedMemory
from .auth import STATE_KEY, Caller
from .errors import AccessDeniedError
from .jobs import JobRunner
from .model_lane import ModelLane
from .models import (
    AnswerRequest, AtRequest, BackedUp, BackupRequest, ConsolidateRequest, ErrorBody, Forgotten, HistoryEntry, IsoTime,
    Job, Linked, LinkRequest, PlanRequest, RecallRequest, ReinforceRequest, RememberBatch, RememberRequest, Reindexed,
    Retention, UpdateRequest,
)

JSONL = "application/x-ndjson"
IMPORT_TYPES = (JSONL, "application/jsonl", "application/json")
ERRORS = {status: {"model": ErrorBody} for status in (401, 403, 404, 413, 421, 422, 503)}
MAX_ANSWER_TOKENS = 512   # the most tokens an answer over HTTP may ask the local model for (models.AnswerRequest's le)
LANE_FULL = {429: {"model": ErrorBody}}  # the routes on the model's lane, whose queue is bounded

router = APIRouter(prefix="/v1", responses=ERRORS)


async def scoped(request: Request) -> ScopedMemory:
    """Async (it does no I/O): a sync dependency would cost every request a hop through the thread pool."""
    caller = getattr(request.state, STATE_KEY, None) or Caller()
    return ScopedMemory(request.app.state.memory, caller)


async def runner(request: Request) -> JobRunner:
    return request.app.state.jobs


async def model_lane(request: Request) -> ModelLane:
    return request.app.state.lane


Scoped = Annotated[ScopedMemory, Depends(scoped)]


class AnswerAsked(AnswerRequest):
    """An answer's request, `max_new_tokens` from 1 to MAX_ANSWER_TOKENS: one limit, in one message, whatever
    the bad value (below 1 it was `Memory.answer`'s "from 1 to 4096", above 512 the model's "at most 512")."""

    max_new_tokens: int = Field(32, ge=1, le=MAX_ANSWER_TOKENS)


Runner = Annotated[JobRunner, Depends(runner)]
Lane = Annotated[ModelLane, Depends(model_lane)]


# ---- writing ---------------------------------------------------------------------------------

@router.post("/notes", response_model=Note, tags=["notes"], summary="remember one note")
def remember(item: RememberRequest, mem: Scoped) -> Note:
    mem.may_mark_shared(item.metadata)
    return mem.memory.remember(
        item.text, user_id=mem.user(item.user_id), agent_id=item.agent_id, session_id=item.session_id,
        at=mem.at(item.at), tags=item.tags, metadata=item.metadata, fact=item.fact,
    )


@router.post("/notes/batch", response_model=list[Note], tags=["notes"], summary="remember many notes at once")
def remember_many(batch: RememberBatch, mem: Scoped) -> list[Note]:
    default_user = mem.user(batch.user_id)
    for item in batch.items:  # every item's user and mark is checked before anything is written
        if not isinstance(item, str):
            mem.user(default_user if item.user_id is None else item.user_id)
            mem.may_mark_shared(item.metadata)
            mem.at(item.at)
    return mem.memory.remember_many(batch.items, user_id=default_user, agent_id=batch.agent_id,
                                    session_id=batch.session_id, at=mem.at(batch.at))


@router.patch("/notes/{note_id}", response_model=Note, tags=["notes"], summary="update a note (history kept)")
def update(note_id: str, change: UpdateRequest, mem: Scoped) -> Note:
    mem.may_change(mem.note(note_id))
    mem.may_mark_shared(change.metadata)
    optional = {"fact": change.fact} if "fact" in change.model_fields_set else {}
    return mem.memory.update(note_id, text=change.text, tags=change.tags, metadata=change.metadata,
                             at=mem.at(change.at), **optional)


@router.delete("/notes/{note_id}", response_model=Forgotten, tags=["notes"], summary="forget a note for good")
def forget(note_id: str, mem: Scoped) -> Forgotten:
    mem.note(note_id)
    mem.memory.forget(note_id)
    return Forgotten(forgotten=note_id)


@router.post("/notes/{note_id}/links", response_model=Linked, tags=["notes"], summary="link two notes by hand")
def link(note_id: str, body: LinkRequest, mem: Scoped) -> Linked:
    mem.note(note_id)
    mem.note(body.note_id)
    mem.memory.link(note_id, body.note_id, weight=body.weight, at=mem.at(body.at))
    return Linked(linked=(note_id, body.note_id), weight=body.weight)


@router.post("/notes/{note_id}/restore", response_model=Note, tags=["forgetting"], summary="bring an archived note back")
def restore(note_id: str, body: AtRequest, mem: Scoped) -> Note:
    mem.note(note_id)
    return mem.memory.restore(note_id, at=mem.at(body.at))


# ---- reading ---------------------------------------------------------------------------------

@router.post("/recall", response_model=list[Hit], tags=["notes"], summary="find the notes that best answer a query")
def recall(body: RecallRequest, mem: Scoped) -> list[Hit]:
    return mem.memory.recall(
        body.query, k=body.k, user_id=mem.user(body.user_id), agent_id=body.agent_id, session_id=body.session_id,
        at=mem.at(body.at), filters=body.filters, include_archived=body.include_archived, reinforce=body.reinforce,
    )


@router.post("/reinforce", response_model=list[Note], tags=["notes"],
             summary="count notes as recalled: those a recall with reinforce false found and the agent used")
def reinforce(body: ReinforceRequest, mem: Scoped) -> list[Note]:
    at = mem.at(body.at)  # checked before any note is read
    if body.strict:
        for note_id in body.note_ids:
            mem.note(note_id)  # another user's note is not found for a bound key
        return mem.memory.reinforce(body.note_ids, at=at)
    hidden = mem.hidden(set(body.note_ids))  # left out, as a note that is not there
    note_ids = [note_id for note_id in body.note_ids if note_id not in hidden]
    return mem.memory.reinforce(note_ids, at=at, strict=False)


@router.get("/notes", response_model=list[Note], tags=["notes"], summary="list notes of a scope, oldest first")
def list_notes(mem: Scoped, user_id: str | None = None, agent_id: str | None = None, session_id: str | None = None,
               include_archived: bool = False, limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
               offset: Annotated[int, Query(ge=0)] = 0) -> list[Note]:
    return mem.memory.notes(user_id=mem.user(user_id), agent_id=agent_id, session_id=session_id,
                            include_archived=include_archived, limit=limit, offset=offset)


@router.get("/notes/{note_id}", response_model=Note, tags=["notes"], summary="one note")
def get(note_id: str, mem: Scoped) -> Note:
    return mem.note(note_id)


@router.get("/notes/{note_id}/history", response_model=list[HistoryEntry], tags=["notes"],
            summary="earlier versions of a note")
def history(note_id: str, mem: Scoped) -> list[HistoryEntry]:
    mem.note(note_id)
    return [HistoryEntry(at=at, change=change, note=note) for at, change, note in mem.memory.history(note_id)]


@router.get("/notes/{note_id}/neighbors", response_model=list[Note], tags=["notes"],
            summary="the notes linked to this one, strongest link first")
def neighbors(note_id: str, mem: Scoped) -> list[Note]:
    mem.note(note_id)
    return [note for note in mem.memory.neighbors(note_id) if mem.visible(note)]


@router.get("/notes/{note_id}/retention", response_model=Retention, tags=["forgetting"],
            summary="how well a note is retained at a time")
def retention(note_id: str, mem: Scoped, at: IsoTime | None = None) -> Retention:
    mem.note(note_id)
    when = at or datetime.now(timezone.utc)
    return Retention(note_id=note_id, at=when, retention=mem.memory.retention(note_id, at=when))


# ---- the forgetting curve and the whole store ----------------------------------------------------

@router.post("/decay", response_model=DecayReport, tags=["forgetting"], summary="archive faded notes")
def decay(body: AtRequest, mem: Scoped) -> DecayReport:
    mem.require_all_users("decay")
    return mem.memory.decay(at=body.at)


@router.get("/stats", response_model=MemoryStats, tags=["store"], summary="counts of notes, links and users")
def stats(mem: Scoped) -> MemoryStats:
    mem.require_all_users("stats")
    return mem.memory.stats()


@router.get("/export", tags=["store"], summary="every note (of the key's user, if bound) as JSON lines",
            response_class=StreamingResponse,
            responses={200: {"content": {JSONL: {"schema": {"type": "string"}}}, "description": "one Note per line"}})
def export(mem: Scoped) -> StreamingResponse:
    folder = Path(tempfile.mkdtemp())  # readable by this user alone
    try:
        mem.memory.export(folder / "export.jsonl", user_id=mem.user(None))  # a bound key: its user's notes only
        lines = (folder / "export.jsonl").open(encoding="utf-8", newline="\n")  # lines end at "\n", as `import_` reads
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the open file keeps its contents, nothing on disk names them
    return StreamingResponse(_lines(lines), media_type=JSONL)


def _lines(lines: TextIO) -> Iterator[str]:
    """The exported file, line by line; a response never sent (its client gone) leaves it to be closed unread."""
    with lines:
        yield from lines


@router.post("/import", response_model=ImportReport, tags=["store"], summary="load notes written by export",
             openapi_extra={"requestBody": {"required": True, "content": {JSONL: {"schema": {"type": "string"}}}}})
async def import_(request: Request, mem: Scoped) -> ImportReport:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in IMPORT_TYPES:  # a web page may send text/plain, form data or no type to any site, unasked
        raise InvalidInputError(f"the body must be JSON lines, sent as Content-Type: {JSONL} (not {media_type!r})")
    body = await request.body()
    return await run_in_threadpool(_import, body, mem)


def _import(body: bytes, mem: ScopedMemory) -> ImportReport:
    if mem.bound:  # the notes as the import will read them: a line the check skipped could not be imported
        try:
            notes = transfer.notes_in(body.decode("utf-8"), "the request body")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"the request body is not UTF-8 text: {exc}") from None
        if any(note.user_id != mem.caller.user_id for note in notes):
            raise AccessDeniedError(f"this API key may only import notes of user {mem.caller.user_id!r}")
        for note in notes:
            mem.may_mark_shared(note.metadata)
        body = _without_hidden_ids(notes, mem)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "import.jsonl"
        source.write_bytes(body)
        try:
            return mem.memory.import_(source)
        except InvalidInputError as exc:   # a bad line is the body's, by its line number: the file is the server's own
            raise InvalidInputError(str(exc).replace(str(source), "the request body")) from None


def _without_hidden_ids(notes: list[transfer.ExportedNote], mem: ScopedMemory) -> bytes:
    """The import's lines with other users' note ids treated as unknown, as reads treat them: a line with such
    an id is imported under a new one (skipping it would tell that the id exists), and links and absorbed
    keywords pointing at one that the file does not hold are dropped, as for an id that exists nowhere."""
    hidden = mem.hidden({i for n in notes for i in [n.id, *(link.note_id for link in n.links), *n.absorbed.values()]})
    fresh = {n.id: uuid.uuid4().hex for n in notes if n.id in hidden}
    lines = []
    for note in notes:
        links = [link.model_copy(update={"note_id": fresh.get(link.note_id, link.note_id)}) for link in note.links
                 if link.note_id not in hidden or link.note_id in fresh]
        absorbed = {word: fresh.get(origin, origin) for word, origin in note.absorbed.items()
                    if origin not in hidden or origin in fresh}
        note = note.model_copy(update={"id": fresh.get(note.id, note.id), "links": links, "absorbed": absorbed})
        lines.append(note.model_dump_json() + "\n")
    return "".join(lines).encode()


@router.post("/repair", response_model=Reindexed, tags=["store"],
             summary="rebuild the vector index from the note graph (which holds every embedding)")
def repair(mem: Scoped) -> Reindexed:
    mem.require_all_users("repair")
    return Reindexed(reindexed=mem.memory.rebuild_index())


@router.post("/backup", response_model=BackedUp, tags=["store"], responses=LANE_FULL,
             summary="copy the store, while in use, into a new or empty folder on the server's disk")
async def backup(body: BackupRequest, mem: Scoped, lane: Lane) -> BackedUp:
    mem.require_all_users("backup")
    return BackedUp(backup=str(await lane.run(mem.memory.backup, body.target)))


# ---- consolidation -------------------------------------------------------------------------------

@router.post("/plan", response_model=list[Decision], tags=["consolidation"], responses=LANE_FULL,
             summary="what consolidation would do now and why; changes nothing")
async def plan(request: Request, body: PlanRequest, mem: Scoped, lane: Lane) -> list[Decision]:
    mem.require_all_users("plan")
    return await lane.run(lambda: mem.memory.plan(body.policy, at=body.at), client=request)


@router.post("/consolidate", response_model=Job, status_code=202, tags=["consolidation"],
             summary="start a consolidation job in the background")
def consolidate(body: ConsolidateRequest, mem: Scoped, jobs: Runner) -> Job:
    mem.require_all_users("consolidation")
    return jobs.submit(body.policy, body.dry_run, body.at)


@router.get("/jobs", response_model=list[Job], tags=["consolidation"],
            summary="the unfinished and the last finished jobs of every server on this store's folder")
def list_jobs(mem: Scoped, jobs: Runner) -> list[Job]:
    mem.require_all_users("the job list")
    return jobs.jobs()


@router.get("/jobs/{job_id}", response_model=Job, tags=["consolidation"], summary="a job's status and progress")
def get_job(job_id: str, mem: Scoped, jobs: Runner) -> Job:
    mem.require_all_users("a consolidation job")
    return jobs.get(job_id)


@router.get("/ledger", response_model=list[LedgerEntry], tags=["consolidation"],
            summary="which note became which edit (of one note, if given)")
def ledger(mem: Scoped, note_id: str | None = None) -> list[LedgerEntry]:
    if note_id is None:
        mem.require_all_users("the whole ledger")
    else:
        mem.note(note_id)
    return mem.memory.ledger(note_id)


@router.post("/answer", response_model=Answer, tags=["consolidation"], responses=LANE_FULL,
             summary="answer from the weights where edits cover the question, else from recalled notes")
async def answer(request: Request, body: AnswerAsked, mem: Scoped, lane: Lane) -> Answer:
    user_id = mem.user(body.user_id)  # before queueing: the lane counts per user
    at = mem.at(body.at)
    return await lane.run(lambda: mem.memory.answer(
        body.question, k=body.k, user_id=user_id, agent_id=body.agent_id, session_id=body.session_id,
        at=at, retrieval=body.retrieval, max_new_tokens=body.max_new_tokens,
    ), user=user_id, client=request)


@router.api_route("/health", methods=["GET", "HEAD"], tags=["store"],  # load balancers probe with either
                  summary="the server is up (no key needed: it tells nothing else)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


HEALTH = router.prefix + "/health"  # the path answered without a key
