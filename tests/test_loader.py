"""Reading the archive ahead of the engine's load: order, errors and stopping."""
from __future__ import annotations

import threading

import pytest

from installer.loader import read_ahead


def test_items_come_through_in_order_while_the_next_are_produced_on_another_thread() -> None:
    producers: set[str] = set()

    def numbers():
        for number in range(50):
            producers.add(threading.current_thread().name)
            yield number

    assert list(read_ahead(numbers(), depth=2)) == list(range(50))
    assert producers == {"read-ahead"}


def test_an_error_while_producing_is_raised_to_the_reader_after_the_items_before_it() -> None:
    def failing():
        yield 1
        yield 2
        raise ValueError("member changed after verification")

    got = []
    with pytest.raises(ValueError, match="changed after verification"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2]


def test_closing_the_reader_stops_the_producer_and_closes_its_source() -> None:
    closed = threading.Event()
    produced = []

    def endless():
        try:
            number = 0
            while True:
                produced.append(number)
                yield number
                number += 1
        finally:
            closed.set()

    reader = read_ahead(endless(), depth=3)
    assert [next(reader) for _ in range(5)] == [0, 1, 2, 3, 4]
    reader.close()
    assert closed.wait(5)
    assert len(produced) <= 5 + 3 + 1  # it ran at most ``depth`` (and the one in hand) ahead
