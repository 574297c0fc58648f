"""A graceful stop (SIGTERM) releases waiting /sync long-polls at once: they get their
(empty) 200 and the server exits promptly instead of waiting out the polls."""
import threading
import time

import requests


def test_sigterm_releases_long_polls_and_stops_promptly(start_atrium):
    server = start_atrium()
    creds = server.register("poller", "pw-poller")
    h = {"Authorization": f"Bearer {creds['access_token']}"}
    idle = requests.Session()  # a pooled client: its connection stays open between requests
    first = idle.get(server.base_url + "/_matrix/client/v3/sync", headers=h, timeout=30)
    since = first.json()["next_batch"]
    result: dict = {}

    def poll() -> None:
        try:
            r = requests.get(server.base_url + "/_matrix/client/v3/sync", headers=h,
                             params={"since": since, "timeout": 30000}, timeout=60)
            result["status"] = r.status_code
            result["at"] = time.monotonic()
            result["body"] = r.json()
        except requests.RequestException as e:
            result["error"] = repr(e)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    time.sleep(1.0)  # the poll is parked on the notifier
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    t.join(10)
    assert result.get("status") == 200, result
    assert "next_batch" in result["body"]
    assert took < 10, f"graceful stop took {took:.1f}s; poll answered after {result['at'] - started:.1f}s"
