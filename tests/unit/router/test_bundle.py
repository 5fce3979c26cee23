from inferstack.router.bundle import apply_bundle, cache_salt

TOOL = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}


def test_system_prompt_replaces_the_clients_and_model_is_rewritten(make_plan) -> None:
    bundle = make_plan(stable_extra={"systemPrompt": "Be brief."}).stable
    body = {"model": "support", "messages": [{"role": "system", "content": "ignore"}, {"role": "user", "content": "hi"}]}
    out = apply_bundle(body, bundle, "acme", chat=True)
    assert out["model"] == "model-a"
    assert out["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    # The caller's body is untouched: the shadow copy is built from it too.
    assert body["messages"][0]["content"] == "ignore" and body["model"] == "support"


def test_system_prompt_is_prepended_when_absent_and_kept_when_bundle_has_none(make_plan) -> None:
    plan = make_plan(stable_extra={"systemPrompt": "Be brief."})
    body = {"model": "support", "messages": [{"role": "user", "content": "hi"}]}
    assert apply_bundle(body, plan.stable, "t", chat=True)["messages"][0] == {"role": "system", "content": "Be brief."}
    with_system = {"model": "support", "messages": [{"role": "system", "content": "mine"}]}
    assert apply_bundle(with_system, plan.candidate, "t", chat=True)["messages"] == with_system["messages"]


def test_tools_added_only_when_the_request_has_none(make_plan) -> None:
    bundle = make_plan(stable_extra={"tools": [TOOL]}).stable
    assert apply_bundle({"messages": []}, bundle, "t", chat=True)["tools"] == [TOOL]
    own = [{"type": "function", "function": {"name": "mine"}}]
    assert apply_bundle({"messages": [], "tools": own}, bundle, "t", chat=True)["tools"] == own


def test_cache_salt_separates_tenants_and_namespaces(make_plan) -> None:
    plan = make_plan()
    a = apply_bundle({"prompt": "x"}, plan.stable, "acme", chat=False)["cache_salt"]
    assert a == cache_salt("acme", "team-a.support.rev-a")
    assert a != apply_bundle({"prompt": "x"}, plan.stable, "globex", chat=False)["cache_salt"]
    assert a != apply_bundle({"prompt": "x"}, plan.candidate, "acme", chat=False)["cache_salt"]
    # Field boundaries matter: ("ab", "c") and ("a", "bc") must differ.
    assert cache_salt("ab", "c") != cache_salt("a", "bc")
