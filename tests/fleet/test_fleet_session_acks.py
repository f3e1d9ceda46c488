"""Acknowledgements by message id: an ack nobody collected (a fire-and-forget publish, formerly every
`sync()`) must not answer a later request that reuses its id once paho's ids wrap after 65,535. The board is
driven with an injected clock; the last test runs the real session against a real broker."""

from __future__ import annotations

import pytest

from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.session import BrokerSession, _AckBoard


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _never() -> str | None:
    return None


def test_a_stale_ack_for_a_reused_id_is_dropped_when_the_id_is_issued_again() -> None:
    clock = _Clock()
    board = _AckBoard(clock)
    board.done(7, "ack of the publish 65,535 ids ago")
    clock.t += 5
    board.issued(7, since=clock())
    with pytest.raises(TimeoutError):
        board.take(7, timeout=0.0, alive=_never)


def test_an_ack_that_arrives_before_the_id_is_returned_still_counts() -> None:
    clock = _Clock()
    board = _AckBoard(clock)
    since = clock()  # taken just before the request goes out
    clock.t += 0.001
    board.done(9, "fresh ack")  # paho's network thread was faster than publish() returning
    board.issued(9, since)
    assert board.take(9, timeout=0.0, alive=_never) == "fresh ack"


def test_sync_collects_its_own_publish_ack(broker: MosquittoProcess) -> None:
    session = BrokerSession(broker.url, "test-sync-acks").open()
    try:
        for _ in range(5):
            session.sync()
        assert session._acks._results == {}  # nothing left behind to answer a reused id
    finally:
        session.close()
