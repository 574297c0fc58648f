"""The federation wiring: every part installed when on; nothing served when off."""
import pytest

from tests.apps import app_factory
from web.app import runtime_of


@pytest.fixture
def make(tmp_path):
    yield from app_factory(tmp_path)


def test_every_part_is_installed(make):
    fed = runtime_of(make(trusted_key_servers=[])).parts["federation"]
    for part in ("client", "keyring", "verifier", "sender", "transactions", "edus",
                 "remote_devices", "queries", "pdu_handler"):
        assert getattr(fed, part) is not None, part
    for extra in ("pdu_out", "membership_received", "room_edus_out", "remote_media"):
        assert extra in fed.extras, extra


def test_switched_off_serves_no_federation(make):
    app = make(federation={"enabled": False})
    c = app.test_client()
    r = c.get("/_matrix/federation/v1/version")
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_UNRECOGNIZED"
    r = c.get("/_matrix/key/v2/server")
    assert r.status_code == 404
    fed = runtime_of(app).parts["federation"]
    assert fed.sender is None and fed.client is None
