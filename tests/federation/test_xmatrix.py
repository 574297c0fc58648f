"""protocol/xmatrix.py: the X-Matrix header (spec "Request Authentication"): format, the
tolerant parser (quoting, escapes, spaces, case), credential splitting, sign/verify."""
import pytest

from protocol.signing import (SignatureError, encode_verify_key_base64, generate_signing_key,
                              get_verify_key, sign_json)
from protocol.xmatrix import (XMatrix, XMatrixError, format_header, is_x_matrix,
                              parse_x_matrix, request_json, sign_request, split_credentials,
                              verify_request)


@pytest.fixture(scope="module")
def key():
    return generate_signing_key("k1")


# -- parsing --------------------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    # the spec's example form
    ('X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",'
     'key="ed25519:key1",sig="ABCDEF"',
     XMatrix("origin.hs.example.com", "destination.hs.example.com", "ed25519:key1", "ABCDEF")),
    # unquoted values, colons allowed unquoted (older servers)
    ("X-Matrix origin=a.example:8448,key=ed25519:k,sig=S1g/+x",
     XMatrix("a.example:8448", None, "ed25519:k", "S1g/+x")),
    # scheme and names case-insensitive, spaces and tabs around commas, several spaces
    ('x-matrix   ORIGIN="a",\t Key = "ed25519:k" ,  SIG="s" , Destination=b',
     XMatrix("a", "b", "ed25519:k", "s")),
    # backslash escapes are unescaped
    (r'X-Matrix origin="a\"b",key="ed25519:\k",sig="x\\y"',
     XMatrix('a"b', None, "ed25519:k", "x\\y")),
    # a comma inside a quoted value does not split
    ('X-Matrix origin="a,b",key="ed25519:k",sig="s"', XMatrix("a,b", None, "ed25519:k", "s")),
    # unknown parameters are ignored; order does not matter
    ('X-Matrix sig="s",foo="bar",key="ed25519:k",origin="o"',
     XMatrix("o", None, "ed25519:k", "s")),
    # an empty destination counts as absent
    ('X-Matrix origin=o,destination="",key=ed25519:k,sig=s', XMatrix("o", None, "ed25519:k", "s")),
])
def test_parse_vectors(header, expected):
    assert parse_x_matrix(header) == expected


@pytest.mark.parametrize("header", [
    "",
    "Bearer abc",
    "X-Matrixorigin=a,key=ed25519:k,sig=s",        # no space after the scheme
    "X-Matrix key=ed25519:k,sig=s",                 # no origin
    "X-Matrix origin=a,sig=s",                      # no key
    "X-Matrix origin=a,key=ed25519:k",              # no sig
    "X-Matrix origin=a,key=ed25519:k,sig=",         # empty sig
    'X-Matrix origin="a,key=ed25519:k,sig=s',       # unterminated quote
    'X-Matrix origin="a"junk,key=ed25519:k,sig=s',  # junk after a quoted value
    "X-Matrix origin a,key=ed25519:k,sig=s",        # parameter without '='
    "X-Matrix origin=a b,key=ed25519:k,sig=s",      # space inside an unquoted value
    "X-Matrix origin=a,key=nocolon,sig=s",          # key id without algorithm
    'X-Matrix origin="a\\',                          # dangling backslash
])
def test_parse_rejects(header):
    with pytest.raises(XMatrixError):
        parse_x_matrix(header)


def test_first_occurrence_of_a_parameter_wins():
    assert parse_x_matrix("X-Matrix origin=a,origin=b,key=ed25519:k,sig=s").origin == "a"


def test_scheme_detection():
    assert is_x_matrix("X-Matrix origin=a")
    assert is_x_matrix("x-MATRIX origin=a")
    assert not is_x_matrix("Bearer x")
    assert not is_x_matrix("X-Matrixy a=b")


def test_split_credentials_as_joined_by_a_wsgi_server():
    joined = ('X-Matrix origin=a,key="ed25519:1",sig="s,1",X-Matrix origin=a,key=ed25519:2,'
              "sig=t, Bearer tok")
    parts = split_credentials(joined)
    assert parts == ['X-Matrix origin=a,key="ed25519:1",sig="s,1"',
                     "X-Matrix origin=a,key=ed25519:2,sig=t", "Bearer tok"]
    assert [parse_x_matrix(p).key for p in parts[:2]] == ["ed25519:1", "ed25519:2"]
    # a spaced-out parameter is not mistaken for a new credential
    assert len(split_credentials("X-Matrix origin=a, key = ed25519:1, sig=s")) == 1


def test_format_round_trips_awkward_values():
    h = format_header('o"r\\g', "d", "ed25519:k", "s")
    assert h.startswith('X-Matrix origin="o\\"r\\\\g",destination="d",')
    assert parse_x_matrix(h) == XMatrix('o"r\\g', "d", "ed25519:k", "s")


# -- signing ---------------------------------------------------------------------------------

def test_request_json_shape():
    assert request_json("GET", "/x", "o", "d") == {"method": "GET", "uri": "/x", "origin": "o",
                                                    "destination": "d"}
    assert request_json("PUT", "/x", "o", "d", {"a": 1})["content"] == {"a": 1}
    # an empty object is content too (only None leaves it out)
    assert request_json("PUT", "/x", "o", "d", {})["content"] == {}


def test_sign_verify_round_trip(key):
    vk = get_verify_key(key)
    body = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"x": "é"}}]}
    uri = "/_matrix/federation/v1/send/1?a=b%20c"
    h = sign_request(key, "PUT", uri, "o.example", "d.example", body)
    x = parse_x_matrix(h)
    assert (x.origin, x.destination, x.key) == ("o.example", "d.example", "ed25519:k1")
    verify_request(vk, "PUT", uri, "o.example", "d.example", body, x.sig)
    # every covered part matters
    for args in [("POST", uri, "o.example", "d.example", body),
                 ("PUT", uri + "&z=1", "o.example", "d.example", body),
                 ("PUT", uri, "other.example", "d.example", body),
                 ("PUT", uri, "o.example", "e.example", body),
                 ("PUT", uri, "o.example", "d.example", {**body, "pdus": [{}]}),
                 ("PUT", uri, "o.example", "d.example", None)]:
        with pytest.raises(SignatureError):
            verify_request(vk, *args, x.sig)
    with pytest.raises(SignatureError):
        verify_request(get_verify_key(generate_signing_key("k1")), "PUT", uri, "o.example",
                       "d.example", body, x.sig)
    with pytest.raises(SignatureError):
        verify_request(vk, "PUT", uri, "o.example", "d.example", body, "!!notbase64")


def test_signature_is_the_json_signature_of_the_request_object(key):
    obj = sign_json(request_json("GET", "/p", "o", "d"), "o", key)
    h = sign_request(key, "GET", "/p", "o", "d")
    assert parse_x_matrix(h).sig == obj["signatures"]["o"]["ed25519:k1"]


def test_interop_with_synapse_parser_and_signer(key):
    """Differential: Synapse's own header parser reads our header, and a header built the
    way Synapse signs verifies with ours."""
    _base = pytest.importorskip("synapse.federation.transport.server._base")
    h = sign_request(key, "GET", "/_matrix/key/v2/query", "o.example", "d.example")
    origin, kid, sig, dest = _base._parse_auth_header(h.encode())
    assert (origin, kid, dest) == ("o.example", "ed25519:k1", "d.example")
    verify_request(get_verify_key(key), "GET", "/_matrix/key/v2/query", "o.example",
                   "d.example", None, sig)
    signedjson_sign = pytest.importorskip("signedjson.sign")
    obj = signedjson_sign.sign_json(
        {"method": "POST", "uri": "/q", "origin": "o", "destination": "d", "content": {"k": 1}},
        "o", key)
    synapse_header = ('X-Matrix origin="o",destination="d",key="ed25519:k1",sig="%s"'
                      % obj["signatures"]["o"]["ed25519:k1"])
    verify_request(get_verify_key(key), "POST", "/q", "o", "d", {"k": 1},
                   parse_x_matrix(synapse_header).sig)
    assert encode_verify_key_base64(get_verify_key(key))
