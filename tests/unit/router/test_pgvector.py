"""pgvector's SQL: names quoted as identifiers (never pasted), refused when Postgres would cut them."""

from __future__ import annotations

import pytest

from inferstack.router.pgvector import PgVectorStore, StoreError, search_sql, table_identifier, vector_literal


@pytest.mark.parametrize(
    "index,version,expected",
    [
        ("support-articles", "2026-11-20", '"support-articles__2026-11-20"'),
        ('x"; DROP TABLE docs; --', "v1", '"x""; DROP TABLE docs; --__v1"'),  # the quote is doubled: still one identifier
        ("Docs", "V1", '"Docs__V1"'),  # case kept: quoted identifiers are not folded
    ],
)
def test_index_versions_are_quoted_identifiers(index, version, expected) -> None:
    assert table_identifier(index, version) == expected


@pytest.mark.parametrize(
    "index,version",
    [
        ("a" * 60, "v1"),  # 64 bytes: Postgres would silently search a63 characters' table
        ("é" * 31, "v1"),  # 62 characters but 66 bytes
        ("docs\x00", "v1"),
    ],
)
def test_names_postgres_would_cut_or_refuse_are_refused(index, version) -> None:
    with pytest.raises(StoreError) as err:
        table_identifier(index, version)
    assert err.value.kind == "bad_index"


def test_the_search_is_parameterized_and_bounded() -> None:
    sql = search_sql('"docs__v1"')
    assert "$1::vector" in sql and "LIMIT $2" in sql and "<=>" in sql and "left(text, 16384)" in sql
    assert vector_literal([1, 0.5, -2e-3]) == "[1.0,0.5,-0.002]"


def test_the_store_never_shows_its_dsn() -> None:
    store = PgVectorStore("postgresql://bot:pw-secret@db/docs")
    assert "pw-secret" not in repr(store) and "pw-secret" not in str(store)
