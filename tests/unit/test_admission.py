"""Admission rules, one at a time: what a screened delivery becomes before anything runs."""

from datetime import UTC, datetime, timedelta

from llm_worker.admission import AdmissionRules, Join, Known, Settle, Start, decide
from llm_worker.intake import IntakeLimits, Parsed, Refusal, parse_delivery
from llm_worker.queues.protocol import Attempts, Delivery, Screened
from llm_worker.schemas import ErrorCode, Job, JobStatus, Result, job_digest

RULES = AdmissionRules(worker_id="w", max_deliveries=10, max_solo_deaths=3)
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _delivery(job: Job | bytes, count: int = 1) -> Delivery:
    payload = job if isinstance(job, bytes) else job.model_dump_json().encode()
    return Delivery(payload, None, count, 0, "test/0")


FRESH = Screened(Attempts(), None)


def _decide(job: Job | bytes, screened: Screened = FRESH,
            known: Known | None = None, count: int = 1) -> tuple[Delivery, object]:
    delivery = _delivery(job, count)
    parsed = parse_delivery(delivery, IntakeLimits(1 << 20, 32))
    return delivery, decide(delivery, parsed, screened, known or Known({}, set(), {}, NOW), RULES)


JOB = Job(id="j", prompt="hello")


def test_a_fresh_job_starts_and_is_no_suspect() -> None:
    _, decision = _decide(JOB)
    assert isinstance(decision, Start) and not decision.suspect


def test_an_id_bound_to_other_content_is_dead_lettered_and_publishes_nothing() -> None:
    for bad in (JOB, b'{"id": "j", "prompt": 5}'):  # a valid job or a refusal: same rule
        delivery, decision = _decide(bad, Screened(Attempts(), "sha256:other"))
        assert isinstance(decision, Settle)
        assert decision.outcome.result is None and decision.outcome.deliveries == [delivery]
        assert decision.outcome.dead_letter.startswith(ErrorCode.DUPLICATE_ID)


def test_a_result_stored_for_other_content_is_a_conflict_too() -> None:
    stored = Result(id="j", status=JobStatus.COMPLETED, job_digest="sha256:other")
    _, decision = _decide(JOB, known=Known({"j": stored}, set(), {}, NOW))
    assert isinstance(decision, Settle) and decision.outcome.dead_letter is not None


def test_a_copy_of_a_settled_job_is_acked_without_a_result() -> None:
    stored = Result(id="j", status=JobStatus.COMPLETED, job_digest=job_digest(JOB))
    for screened, known in ((Screened(Attempts(), None, settled=True), None),
                            (Screened(Attempts(), None), Known({"j": stored}, set(), {}, NOW))):
        _, decision = _decide(JOB, screened, known)
        assert isinstance(decision, Settle)
        assert decision.outcome.result is None and decision.outcome.dead_letter is None


def test_a_copy_of_a_running_job_joins_it_and_other_content_conflicts() -> None:
    _, joined = _decide(JOB, known=Known({}, set(), {"j": job_digest(JOB)}, NOW))
    assert joined == Join("j")
    _, conflict = _decide(JOB, known=Known({}, set(), {"j": "sha256:other"}, NOW))
    assert isinstance(conflict, Settle) and conflict.outcome.dead_letter is not None


def test_a_job_whose_worker_died_runs_alone_until_its_solo_deaths_run_out() -> None:
    _, suspect = _decide(JOB, Screened(Attempts(deaths=1, solo_deaths=0), None))
    assert isinstance(suspect, Start) and suspect.suspect and not suspect.runs_alone
    _, alone = _decide(JOB, Screened(Attempts(deaths=1, solo_deaths=1), None))
    assert isinstance(alone, Start) and alone.runs_alone
    _, still = _decide(JOB, Screened(Attempts(deaths=3, solo_deaths=2), None))
    assert isinstance(still, Start) and still.runs_alone
    _, poison = _decide(JOB, Screened(Attempts(3, 3, "engine crashed: boom"), None))
    assert isinstance(poison, Settle)
    failed = poison.outcome.result
    assert failed is not None and failed.error is not None and failed.error.code == ErrorCode.POISON
    assert "boom" in failed.error.message and failed.attempts == 4
    assert poison.outcome.dead_letter is not None and "died 3 times" in poison.outcome.dead_letter


def test_delivery_count_is_a_backstop_on_brokers_that_count() -> None:
    _, decision = _decide(JOB, count=11)
    assert isinstance(decision, Settle) and "delivered 11 times" in decision.outcome.dead_letter


def test_refusals_fail_under_their_id_or_go_to_the_dead_letters() -> None:
    _, named = _decide(b'{"id": "j", "prompt": 5}')
    assert isinstance(named, Settle) and named.outcome.dead_letter is None
    assert named.outcome.result is not None and named.outcome.result.job_digest.startswith("raw")
    _, anonymous = _decide(b"\xff")
    assert isinstance(anonymous, Settle) and anonymous.outcome.result is None
    assert anonymous.outcome.dead_letter.startswith(ErrorCode.MALFORMED)


def test_misrouted_expired_and_cancelled() -> None:
    _, misrouted = _decide(JOB, Screened(Attempts(), None, unbindable="wrong partition"))
    assert isinstance(misrouted, Settle) and misrouted.outcome.result is None
    assert misrouted.outcome.dead_letter == f"{ErrorCode.MISROUTED}: wrong partition"
    late = JOB.model_copy(update={"deadline": NOW - timedelta(seconds=1)})
    _, expired = _decide(late)
    assert isinstance(expired, Settle) and expired.outcome.result.status == JobStatus.EXPIRED
    _, cancelled = _decide(JOB, known=Known({}, {"j"}, {}, NOW))
    assert isinstance(cancelled, Settle)
    assert cancelled.outcome.result.status == JobStatus.CANCELLED


def test_parsed_and_refusal_digests_differ_for_the_same_id() -> None:
    parsed = parse_delivery(_delivery(JOB), IntakeLimits(1 << 20, 32))
    refused = parse_delivery(_delivery(b'{"id": "j", "prompt": 5}'), IntakeLimits(1 << 20, 32))
    assert isinstance(parsed, Parsed) and isinstance(refused, Refusal)
    assert parsed.digest != refused.digest
