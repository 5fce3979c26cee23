"""Prompt templates render in a sandbox, within bounds, and fail with one clear line."""

from __future__ import annotations

import pytest

from inferstack.core.prompttemplates import Template, TemplateError


@pytest.mark.parametrize(
    "source,variables,expected",
    [
        ("{{ system }}: {{ documents | map(attribute='id') | join(',') }}", {"system": "S", "documents": [{"id": "a"}, {"id": "b"}]}, "S: a,b"),
        ("{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}", {"messages": [{"role": "user", "content": "hi"}]}, "user=hi;"),
        ("{{ '%s-%d' % ('a', 3) }} {{ 'x'.center(5) }} {{ '{}!'.format(2) }} {{ 'ab' * 3 }} {{ 2 ** 10 }}", {}, "a-3   x   2! ababab 1024"),
        ("{{ tools | length }}", {"tools": [{}, {}]}, "2"),
    ],
)
def test_templates_render_their_variables(source, variables, expected) -> None:
    assert Template("t", source).render(variables) == expected


@pytest.mark.parametrize(
    "source,reason",
    [
        ("{{ messages.__class__.__mro__ }}", "unsafe"),  # no way out to Python's internals
        ("{{ messages.append(1) }}", "unsafe"),  # the variables are immutable
        ("{{ 'x' * 100000 }}", "repetition"),
        ("{{ 2 ** 1000 }}", "exponent"),
        ("{{ 'ab' | center(100000000) }}", "width"),
        ("{{ 'ab'.ljust(10 ** 10) }}", "width"),
        ("{{ '%999999999d' % 1 }}", "width"),
        ("{{ '%*d' % (999999999, 1) }}", "width"),
        ("{{ '{:>99999999}'.format(1) }}", "width"),
        ("{{ 'a' | indent(99999999) }}", "width"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ nothing.here }}", "undefined"),
    ],
)
def test_what_would_escape_or_explode_is_a_clear_error(source, reason) -> None:
    with pytest.raises(TemplateError) as err:
        Template("system", source).render({"messages": []})
    assert reason in str(err.value) and "template system" in str(err.value) and "\n" not in str(err.value)


def test_output_is_cut_off_at_the_bound_not_after_it() -> None:
    many = "{% for i in range(60000) %}{% for j in range(60000) %}xxxx{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match="renders more than 1000 characters"):
        Template("system", many).render({}, max_chars=1000)
    assert Template("system", "{{ 'x' * 1000 }}").render({}, max_chars=1000) == "x" * 1000


def test_a_syntax_error_names_the_template_and_the_line() -> None:
    with pytest.raises(TemplateError, match=r"template system does not compile: line 2: "):
        Template("system", "fine\n{% for %}")


def test_the_examples_templates_compile_and_render_their_documents() -> None:
    from pathlib import Path

    import yaml

    from inferstack.core.retrieval import Document, system_message

    found = 0
    for path in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            source = ((doc.get("spec") or {}).get("prompt") or {}).get("templates", {}).get("system")
            if source is None:
                continue
            found += 1
            template = Template("prompt.templates.system", source)
            out = system_message(template, "SYS", [Document("kb-9", "Refunds take 5 days.", 0.8, {"title": "Refunds"})], [], [])
            assert out.startswith("SYS") and "[kb-9] Refunds: Refunds take 5 days." in out, path.name
            assert "none found" in system_message(template, "SYS", [], [], []), path.name
    assert found >= 1
