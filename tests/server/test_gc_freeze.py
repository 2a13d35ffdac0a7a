"""The server freezes its startup heap once the models are loaded (app.freeze_startup_heap).

The server test (test_protocol) checks that a real server says so at startup; this one
checks what the freeze does: objects alive before it leave the collector's generations,
objects made after it are tracked by the collector as usual.
"""

import gc

import pytest

from kubeinfer_server.server import freeze_startup_heap


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector can free it


def test_startup_objects_leave_the_collectors_sight_and_new_ones_do_not(unfrozen):
    before = Node()
    assert any(o is before for o in gc.get_objects())
    frozen = freeze_startup_heap()
    assert frozen > 1000  # the interpreter, numpy, grpc, protobuf: far more than a few
    assert gc.get_freeze_count() == frozen
    assert not any(o is before for o in gc.get_objects())
    after = Node()
    assert any(o is after for o in gc.get_objects())
