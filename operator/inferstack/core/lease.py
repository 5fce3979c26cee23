"""Leader election on a ``coordination.k8s.io/v1`` Lease: the rules, no I/O.

The rules are client-go's (``k8s.io/client-go/tools/leaderelection``):

* A replica may take the lease when it has no holder, or when the record has
  not changed for a whole lease duration measured on the taker's *own*
  monotonic clock from the moment it first saw that record. Clocks of two
  machines are never compared: ``renewTime`` is written for people to read,
  and only its changing matters.
* The leader renews every retry period. It stops acting as leader once the
  renew deadline has passed since the last renewal it *sent* (sent, not
  landed: the earlier instant, so its deadline falls early, never late).
* ``leaseDuration - renewDeadline`` is the margin between the old leader's
  last possible write and a new leader's first: a standby starts counting
  only once it has seen the last renewal, which landed after it was sent.

Every write is an update with the resourceVersion read (or a create), so two
replicas that both find the lease free cannot both take it: one gets a
conflict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec, as the elector reads and writes it."""

    holder: str | None
    lease_duration_seconds: int
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


def taken(record: LeaseRecord, identity: str, observed_at: float, now: float, lease_duration: float) -> bool:
    """Whether another replica holds the lease: it names a holder that is not us, and that
    record was first seen (at ``observed_at``, our monotonic clock) less than a lease duration ago."""
    return bool(record.holder) and record.holder != identity and now < observed_at + lease_duration


def claim(record: LeaseRecord | None, identity: str, wall: datetime, lease_duration: float) -> LeaseRecord:
    """The record that makes ``identity`` the holder: a renewal of our own lease, or a takeover."""
    seconds = max(1, math.ceil(lease_duration))
    if record is not None and record.holder == identity:
        return replace(record, lease_duration_seconds=seconds, renew_time=wall)
    transitions = record.transitions + 1 if record is not None else 0
    return LeaseRecord(identity, seconds, acquire_time=wall, renew_time=wall, transitions=transitions)


def released(record: LeaseRecord, wall: datetime) -> LeaseRecord:
    """Given up on a clean shutdown: no holder, so a standby takes it at its next try
    instead of waiting out a lease duration (client-go's ReleaseOnCancel)."""
    return replace(record, holder=None, lease_duration_seconds=1, renew_time=wall)
