"""Ids drawn from ``ir.random_hex``'s pool: the shape of ``uuid4().hex``, never repeated, and a forked worker's own."""

import os
import re

from ccproxyd import ir


def test_ids_have_uuid4_hex_shape_and_the_length_asked_for() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", ir.random_hex())
    assert re.fullmatch(r"[0-9a-f]{24}", ir.random_hex(24))
    assert re.fullmatch(r"[0-9a-f]{22}", ir.random_hex(22))


def test_ids_do_not_repeat_across_refills_of_the_pool() -> None:
    ids = [ir.random_hex() for _ in range(1000)]  # 32 KB: the 4 KB pool refills several times
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    ir.random_hex()  # the pool is filled and partly used before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "".join(ir.random_hex() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
    parent = "".join(ir.random_hex() for _ in range(4))
    assert len(child) == 128 and child.decode() != parent
