"""Several API tokens at once, so a token can be rotated without downtime."""

from __future__ import annotations

import dataclasses

from flask.testing import FlaskClient

from calsync import create_app
from calsync.config import Secret
from calsync.runtime import Runtime


def client_with_tokens(runtime: Runtime, value: str) -> FlaskClient:
    settings = dataclasses.replace(runtime.settings, api_token=Secret(value))
    return create_app(runtime=dataclasses.replace(runtime, settings=settings)).test_client()


def status(client: FlaskClient, token: str) -> int:
    return client.get("/api/calendars", headers={"Authorization": f"Bearer {token}"}).status_code


def test_two_tokens_both_work_and_removing_one_refuses_it(runtime: Runtime) -> None:
    during = client_with_tokens(runtime, "token-old-1234,token-new-5678")
    assert status(during, "token-old-1234") == 200
    assert status(during, "token-new-5678") == 200
    for wrong in ("token-old-1234,token-new-5678", "token-old", "token-new-56789", ","):
        assert status(during, wrong) == 401

    after = client_with_tokens(runtime, "token-new-5678")
    assert status(after, "token-new-5678") == 200
    refused = after.get("/api/calendars", headers={"Authorization": "Bearer token-old-1234"})
    assert refused.status_code == 401 and refused.get_json()["message"] == "missing or wrong bearer token"


def test_a_list_without_any_token_leaves_the_api_disabled(runtime: Runtime) -> None:
    none = client_with_tokens(runtime, " , ")
    resp = none.get("/api/calendars", headers={"Authorization": "Bearer ,"})
    assert resp.status_code == 401 and "CALSYNC_API_TOKEN" in resp.get_json()["message"]
