"""Group commit: batchable messages queued behind one another are handled together, each
caller still gets its own reply or error."""
import gevent
import pytest

from supervision import ActorFailed, SupervisedActor, Supervisor, message


class Refused(Exception):
    pass


@message
class Put:
    value: int


@message
class Other:
    pass


class Batcher(SupervisedActor):
    domain_errors = (Refused,)
    batch_types = (Put,)
    batches: list = []

    def handle(self, msg):
        if isinstance(msg, Other):
            return "other"
        return self.handle_batch([msg])[0]

    def handle_batch(self, msgs):
        Batcher.batches.append(len(msgs))
        if any(m.value == 666 for m in msgs):
            raise RuntimeError("poisoned batch")
        return [Refused("odd") if m.value % 2 else m.value * 10 for m in msgs]


@pytest.fixture
def sup(supervisors):
    Batcher.batches = []
    s = Supervisor("batch", lambda key: Batcher(), ask_timeout=2, idle_timeout=None,
                   restart_delay=0.01)
    supervisors.append(s)
    s.ask("k", Other())  # first load happens one-by-one
    return s


def test_queued_messages_share_one_batch_and_get_their_own_replies(sup):
    jobs = [gevent.spawn(sup.ask, "k", Put(i)) for i in range(20)]
    gevent.joinall(jobs)
    for i, j in enumerate(jobs):
        if i % 2:
            assert isinstance(j.exception, Refused)
        else:
            assert j.value == i * 10
    assert max(Batcher.batches) > 1
    assert sum(Batcher.batches) == 20


def test_non_batchable_message_is_not_swallowed(sup):
    jobs = [gevent.spawn(sup.ask, "k", Put(2)), gevent.spawn(sup.ask, "k", Other()),
            gevent.spawn(sup.ask, "k", Put(4))]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value for j in jobs] == [20, "other", 40]


def test_crash_in_a_batch_fails_its_members_and_restarts(sup):
    jobs = [gevent.spawn(sup.ask, "k", Put(v)) for v in (2, 666, 4)]
    gevent.joinall(jobs)
    assert all(isinstance(j.exception, ActorFailed) for j in jobs if not j.successful())
    assert isinstance(jobs[1].exception, ActorFailed)
    assert sup.ask("k", Put(8)) == 80  # restarted and serving
