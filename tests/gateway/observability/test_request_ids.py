"""Request ids the gateway makes: 32 hex digits, new for each request, in a forked worker too."""

from __future__ import annotations

import multiprocessing
import re

from aiohttp.test_utils import make_mocked_request

from gateway.http.middlewares import request_id_of


def _new_id() -> str:
    return request_id_of(make_mocked_request("POST", "/v1/chat/completions"))


def _send_new_id(conn: multiprocessing.connection.Connection) -> None:
    conn.send(_new_id())
    conn.close()


def test_a_request_without_an_id_gets_a_new_one_each_time() -> None:
    ids = [_new_id() for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_the_clients_own_id_is_kept() -> None:
    request = make_mocked_request("POST", "/", headers={"x-request-id": "req-abc-1"})
    assert request_id_of(request) == "req-abc-1"


def test_a_forked_process_makes_other_ids_than_its_parent() -> None:
    # The generator is seeded again in a forked child: a copy of the parent's state would
    # make the child repeat the parent's next ids.
    fork = multiprocessing.get_context("fork")
    receive, send = fork.Pipe(duplex=False)
    child = fork.Process(target=_send_new_id, args=(send,))
    child.start()
    child_id = receive.recv()
    child.join(timeout=10)
    assert child.exitcode == 0
    assert child_id != _new_id()
