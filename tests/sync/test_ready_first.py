"""web/app.py ReadyFirstMiddleware: a new request starts only after the greenlets that
were already runnable (the other /syncs one event woke) have had their turn."""
import gevent

from web.app import ReadyFirstMiddleware


def test_runnable_greenlets_go_before_a_new_request():
    order = []

    def app(environ, start_response):
        order.append("request")
        start_response("200 OK", [])
        return [b""]

    wrapped = ReadyFirstMiddleware(app)
    woken = [gevent.spawn(order.append, f"woken {i}") for i in range(3)]
    assert wrapped({}, lambda *a: None) == [b""]
    gevent.joinall(woken)
    assert order == ["woken 0", "woken 1", "woken 2", "request"]


def test_without_the_yield_the_request_would_go_first():
    # the control: the wrapped app alone runs before greenlets spawned but not yet run
    order = []
    woken = [gevent.spawn(order.append, "woken")]
    order.append("request")
    gevent.joinall(woken)
    assert order == ["request", "woken"]
