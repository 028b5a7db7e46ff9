"""bench.broadcast_replica's Delivery stand-in keeps up with the Delivery it replaces."""

from __future__ import annotations

import inspect

from bench.broadcast_replica import BroadcastDelivery
from messaging.delivery import Delivery


def test_the_stand_in_has_every_public_member_of_delivery() -> None:
    public = {name for name in dir(Delivery) if not name.startswith("_")}
    assert public - set(dir(BroadcastDelivery)) == set()


def test_the_stand_in_is_built_with_the_arguments_of_delivery() -> None:
    ours = inspect.signature(BroadcastDelivery.__init__).parameters
    theirs = inspect.signature(Delivery.__init__).parameters
    assert list(ours) == list(theirs)
