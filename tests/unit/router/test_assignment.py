from collections import Counter

import pytest

from inferstack.core.trafficplan import TrafficPlan
from inferstack.router.assignment import bearer_token, choose, identity

USERS = [f"user-{i}" for i in range(2000)]


def _candidates(plan: TrafficPlan) -> set[str]:
    return {u for u in USERS if choose(plan, {"x-user-id": u}, "req").role == "candidate"}


def test_same_user_same_revision_every_time_and_every_replica(make_plan) -> None:
    plan = make_plan(candidate_weight=25)
    # A second replica parses the same plan independently.
    replica = TrafficPlan.model_validate_json(plan.model_dump_json(by_alias=True))
    for user in USERS[:200]:
        roles = {choose(p, {"x-user-id": user}, f"r{i}").role for i, p in enumerate([plan, replica] * 5)}
        assert len(roles) == 1, user


def test_canary_users_only_grow_as_weight_goes_1_5_25_100(make_plan) -> None:
    sets = [_candidates(make_plan(candidate_weight=w)) for w in (1, 5, 25, 100)]
    assert sets[0] <= sets[1] <= sets[2] <= sets[3] == set(USERS)
    assert 0 < len(sets[0]) < len(sets[1]) < len(sets[2]) < len(USERS)
    # Shares land near the weights (2000 users: generous bounds, still catches a wrong scale).
    assert 0.15 < len(sets[2]) / len(USERS) < 0.35


def test_weight_zero_sends_nobody_to_the_candidate(make_plan) -> None:
    assert _candidates(make_plan(candidate_weight=0)) == set()


def test_api_key_is_the_fallback_identity(make_plan) -> None:
    plan = make_plan(candidate_weight=50)
    headers = {"Authorization": "Bearer sk-123"}
    assert identity(plan, headers) == "key:sk-123"
    assert len({choose(plan, headers, f"r{i}").role for i in range(50)}) == 1
    # The header wins over the key.
    assert identity(plan, {**headers, "x-user-id": "alice"}) == "user:alice"


def test_without_identity_requests_split_per_request(make_plan) -> None:
    plan = make_plan(candidate_weight=50, stickiness={"header": "x-user-id", "fallbackToApiKey": False})
    assert identity(plan, {"Authorization": "Bearer sk-123"}) is None
    roles = Counter(choose(plan, {}, f"r{i}").role for i in range(400))
    assert 120 < roles["candidate"] < 280
    assert not choose(plan, {}, "r").sticky


def test_shadow_only_mirrors_stable_served_requests(make_plan) -> None:
    plan = make_plan(candidate_weight=50, shadow_percent=100)
    for user in USERS[:100]:
        route = choose(plan, {"x-user-id": user}, "req-" + user)
        assert (route.shadow is not None) == (route.role == "stable")


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer ", None), (None, None)],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_a_route_is_the_frozen_dataclass(make_plan) -> None:
    import dataclasses

    from inferstack.router.assignment import Route

    plan = make_plan(candidate_weight=0, shadow_percent=100)
    route = choose(plan, {"x-user-id": "u1"}, "req-1")
    expected = Route("stable", plan.stable, plan.candidate, True)
    assert route == expected and repr(route) == repr(expected) and vars(route) == vars(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.role = "candidate"  # type: ignore[misc]
