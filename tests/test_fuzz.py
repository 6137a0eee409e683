"""Property-based fuzzing (hypothesis) of what users send: the filter grammar, checked against
an independent evaluator on both backends, and the search and upload bodies over real HTTP:
never a 5xx, every error in our JSON shape."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from retrieval.errors import InvalidInput
from retrieval.store import parse_filter
from retrieval.store.model import Match, MatchAny, Range
from tests.documents import make_pdf
from tests.server import serving, wait_job
from tests.test_api import settings_for
from tests.test_store import N_DOCS, PAGES_PER_DOC, corpus, store  # noqa: F401 - fixtures

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=0, max_value=8)
    | st.integers(min_value=2018, max_value=2027)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0, max_value=2030)
)
scalars = st.none() | st.booleans() | numbers | st.sampled_from(["doc1", "doc1.pdf", "legal"])
scalars = scalars | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["gt", "gte", "lt", "lte", "eq", ""]), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(
    ["doc_id", "source", "page", "metadata.year", "metadata.team", "metadata.nope", "colour", ""]
)
small = st.integers(min_value=0, max_value=8) | st.integers(min_value=2018, max_value=2027)
plausible = st.dictionaries(  # mostly well-formed: these reach the store
    st.sampled_from(["doc_id", "source", "page", "metadata.year", "metadata.team"]),
    st.sampled_from(["doc1", "doc2.pdf", "legal", "finance"])
    | small
    | st.booleans()
    | st.lists(st.sampled_from(["doc1", "doc3", "doc3.pdf", "legal"]), min_size=1, max_size=3)
    | st.lists(small, min_size=1, max_size=3)
    | st.dictionaries(
        st.sampled_from(["gt", "gte", "lt", "lte"]),
        small | st.floats(min_value=0, max_value=2030),
        min_size=1,
        max_size=2,
    ),
    max_size=3,
)
filters = (
    plausible
    | st.dictionaries(keys, values, max_size=3)
    | st.fixed_dictionaries(
        {"metadata": st.dictionaries(st.sampled_from(["year", "team", "a b"]), values, max_size=2)}
    )
)


def payloads():
    """What the ``corpus`` fixture stored: one payload per page."""
    for d in range(N_DOCS):
        for p in range(1, PAGES_PER_DOC + 1):
            yield {
                "doc_id": f"doc{d}",
                "source": f"doc{d}.pdf",
                "page": p,
                "metadata": {"year": 2020 + d, "team": "finance" if d % 2 else "legal"},
            }


def _same(stored, wanted) -> bool:
    return type(stored) is type(wanted) and stored == wanted


def holds(condition, payload) -> bool:
    """The filter grammar's meaning, evaluated in Python: the oracle."""
    value = payload
    for part in condition.key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(condition, Match):
        return _same(value, condition.value)
    if isinstance(condition, MatchAny):
        return any(_same(value, v) for v in condition.values)
    assert isinstance(condition, Range)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    c = condition
    return (
        (c.gt is None or value > c.gt)
        and (c.gte is None or value >= c.gte)
        and (c.lt is None or value < c.lt)
        and (c.lte is None or value <= c.lte)
    )


@FUZZ
@given(spec=filters)
def test_filters_either_refused_clearly_or_answered_exactly(store, corpus, spec):  # noqa: F811
    try:
        where = parse_filter(spec)
    except InvalidInput as exc:
        assert str(exc)
        return
    expected = sum(all(holds(c, p) for c in (where.must if where else ())) for p in payloads())
    assert store.count_pages("docs", where) == expected, spec
    ints = [
        v
        for c in (where.must if where else ())
        for v in ((c.value,) if isinstance(c, Match) else getattr(c, "values", ()))
        if isinstance(v, int)
    ]
    assert all(-(2**63) <= v < 2**63 for v in ints)
    ranges = [c for c in (where.must if where else ()) if isinstance(c, Range)]
    bounds = [b for c in ranges for b in (c.gt, c.gte, c.lt, c.lte) if b is not None]
    assert all(math.isfinite(b) for b in bounds)


# --- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_api(tiny_model_dir, tmp_path_factory, encoder):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    app = create_app(settings_for(tiny_model_dir, data, max_upload_mb=1), encoder=encoder)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        job = client.post("/v1/documents", files={"file": ("a.pdf", make_pdf([(595, 842)] * 3))})
        assert wait_job(client, job.json()["job_id"])["status"] == "done"
        yield client


def assert_answered(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail", "request_id"} and body["detail"], body


search_bodies = st.fixed_dictionaries(
    {},
    optional={
        "query": st.text(max_size=40) | numbers | st.none(),
        "top_k": numbers | st.text(max_size=3),
        "mode": st.sampled_from(["two_stage", "exact", "pooled", "fuzzy", ""]),
        "prefetch": numbers | st.none(),
        "filter": filters | values,
        "collection": st.sampled_from(["pages", "nope", "../x", "", "a" * 65]),
    },
)


@settings(max_examples=120, deadline=None)
@given(body=search_bodies | values)
def test_search_bodies_never_answer_5xx(live_api, body):
    text = json.dumps(body, allow_nan=True)  # NaN and Infinity: invalid JSON a client may send
    r = live_api.post("/v1/search", content=text, headers={"content-type": "application/json"})
    assert_answered(r)


uploads = st.fixed_dictionaries(
    {},
    optional={
        "file": st.binary(max_size=64)
        | st.builds(lambda tail: b"%PDF-1.4\n" + tail, st.binary(max_size=64))
        | st.just(make_pdf([(300, 300)])),
        "metadata": st.text(max_size=30) | st.builds(json.dumps, values),
        "password": st.text(max_size=10),
        "collection": st.sampled_from(["pages", "other", "../x", "", "a__b", "a" * 65]),
        "extra": st.text(max_size=5),
    },
)


@settings(max_examples=80, deadline=None)
@given(form=uploads, filename=st.text(max_size=20))
def test_upload_bodies_never_answer_5xx(live_api, form, filename):
    files = {"file": (filename or "x", form.pop("file"))} if "file" in form else None
    data = {k: v for k, v in form.items()}
    if files is None:
        files = {"other": ("x", b"")}  # still multipart, without the file part
    assert_answered(live_api.post("/v1/documents", files=files, data=data))
