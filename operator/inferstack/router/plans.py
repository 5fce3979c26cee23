"""The plans in force, and the rules for replacing them."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError

from inferstack.core.trafficplan import TrafficPlan

log = logging.getLogger(__name__)

Listener = Callable[[str, TrafficPlan | None], None]


class PlanError(ValueError):
    """A plan that does not parse or validate; the whole plan is rejected."""


def parse_plan(text: str | bytes) -> TrafficPlan:
    try:
        plan = TrafficPlan.model_validate_json(text)
    except ValidationError as exc:
        raise PlanError(str(exc)) from exc
    for bundle in filter(None, (plan.stable, plan.candidate)):
        if bundle.api_key_secret_ref is not None and not bundle.api_key:
            # Serving without the token would turn every request into a 401.
            ref = bundle.api_key_secret_ref
            raise PlanError(f"revision {bundle.revision}: token from Secret {ref.name} key {ref.key} could not be read")
    return plan


class UnknownModel(LookupError):
    pass


class AmbiguousModel(LookupError):
    pass


class PlanStore:
    """Plans by ``namespace/stack``. Only touched from the event loop's thread.

    A plan with a lower serial than the one in force is ignored: a slow or
    replayed watch event must never roll traffic back behind the operator.
    Equal serials are applied, so a re-list is harmless.
    """

    def __init__(self) -> None:
        self._plans: dict[str, TrafficPlan] = {}
        self._by_name: dict[str, set[str]] = {}
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(key, plan)`` on every applied plan and ``(key, None)`` on removal."""
        self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._plans)

    def plans(self) -> list[TrafficPlan]:
        return [self._plans[k] for k in sorted(self._plans)]

    def get(self, key: str) -> TrafficPlan | None:
        return self._plans.get(key)

    def apply(self, plan: TrafficPlan) -> bool:
        current = self._plans.get(plan.key)
        if current is not None and plan.serial < current.serial:
            log.warning("ignoring plan %s serial %d: serial %d is in force", plan.key, plan.serial, current.serial)
            return False
        self._plans[plan.key] = plan
        self._by_name.setdefault(plan.stack, set()).add(plan.key)
        if current is None or current != plan:
            log.info("plan %s serial %d: stable %s, candidate %s at %d%%, shadow %d%%", plan.key, plan.serial,
                     plan.stable.revision, plan.candidate.revision if plan.candidate else "-",
                     plan.candidate_weight, plan.shadow_percent)
        for listener in self._listeners:
            listener(plan.key, plan)
        return True

    def remove(self, key: str) -> None:
        plan = self._plans.pop(key, None)
        if plan is None:
            return
        names = self._by_name.get(plan.stack, set())
        names.discard(key)
        if not names:
            self._by_name.pop(plan.stack, None)
        log.info("plan %s removed", key)
        for listener in self._listeners:
            listener(key, None)

    def resolve(self, model: str) -> TrafficPlan:
        """The plan for an OpenAI ``model`` value: ``namespace/name`` or a unique ``name``."""
        if "/" in model:
            plan = self._plans.get(model)
            if plan is None:
                raise UnknownModel(model)
            return plan
        keys = self._by_name.get(model)
        if not keys:
            raise UnknownModel(model)
        if len(keys) > 1:
            raise AmbiguousModel(f"{model} exists in several namespaces: use one of {', '.join(sorted(keys))}")
        return self._plans[next(iter(keys))]
