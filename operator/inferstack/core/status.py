"""Status conditions with kstatus semantics, so kubectl wait, Flux and Argo CD agree.

* ``Ready=True``: the stack serves its desired revision at 100 % and the
  observed generation is current.
* ``Reconciling=True``: work is in progress (first deploy, a rollout). kstatus
  treats it as "InProgress" and GitOps tools wait instead of flapping.
* ``Stalled=True``: the operator cannot make progress without a change from
  the user (rolled back candidate, bad reference).

Conditions that do not hold are written as ``False`` rather than removed, so
``kubectl wait --for=condition=Ready=false`` also works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"


@dataclass(frozen=True)
class ConditionState:
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    previous: list[dict[str, Any]],
    wanted: dict[str, ConditionState],
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """New conditions list; lastTransitionTime only moves when status flips.

    Keeping it stable is what makes a steady state write nothing.
    """
    by_type = {c.get("type"): c for c in previous}
    out = []
    for ctype, state in wanted.items():
        status = "True" if state.status else "False"
        old = by_type.get(ctype)
        changed = old is None or old.get("status") != status
        out.append(
            {
                "type": ctype,
                "status": status,
                "reason": state.reason,
                "message": state.message,
                "observedGeneration": generation,
                "lastTransitionTime": now if old is None or changed or not old.get("lastTransitionTime") else old["lastTransitionTime"],
            }
        )
    # Keep conditions that others (or later versions) wrote, untouched.
    out.extend(c for c in previous if c.get("type") not in wanted)
    return out


def stalled(reason: str, message: str) -> dict[str, ConditionState]:
    """The conditions of a stack that cannot progress until the user changes something."""
    return {
        READY: ConditionState(False, reason, message),
        RECONCILING: ConditionState(False, reason, ""),
        STALLED: ConditionState(True, reason, message),
    }
