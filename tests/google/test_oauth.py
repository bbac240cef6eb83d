"""Google's OAuth helpers: what leaves calsync about a grant."""

from __future__ import annotations

import dataclasses

import pytest
import requests

from calsync.config import Settings
from calsync.google.oauth import revoke
from tests.conftest import free_port

SECRET = "1//REFRESH-SECRET-TOKEN"


def test_a_revocation_that_fails_does_not_carry_the_token_into_its_error(settings: Settings) -> None:
    """The token goes in the query string, and requests' error text holds the URL: callers logged it
    ("… with url: /revoke?token=1%2F%2FREFRESH-SECRET-TOKEN"), and the token still worked."""
    closed = dataclasses.replace(settings, google_revoke_url=f"http://127.0.0.1:{free_port()}/revoke")
    with pytest.raises(requests.ConnectionError) as caught:
        revoke(closed, SECRET, timeout=2)
    text = str(caught.value) + repr(caught.value) + str(caught.value.__cause__)
    assert "REFRESH-SECRET" not in text and "127.0.0.1" in text
    assert caught.value.__suppress_context__  # a logged traceback does not show the first error either
