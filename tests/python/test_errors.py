"""Error surfaces as pusher-http-python reports them."""

import pusher.errors
import pytest
from pusher.http import make_query_string

from conftest import make_pusher


def test_wrong_secret_raises_pusher_bad_auth_and_publishes_nothing(herald, sdk, ws, uniq):
    """HTTP-AUTH-5: a request signed with the wrong secret -> 401 -> PusherBadAuth, for POST and GET."""
    channel = "auth-%s" % uniq
    client = ws()
    client.subscribe(channel)
    forger = make_pusher(herald, secret="not-the-secret")

    with pytest.raises(pusher.errors.PusherBadAuth):
        forger.trigger(channel, "forged", "x")
    with pytest.raises(pusher.errors.PusherBadAuth):
        forger.trigger_batch([{"channel": channel, "name": "forged", "data": "y"}])
    with pytest.raises(pusher.errors.PusherBadAuth):
        forger.channels_info()
    with pytest.raises(pusher.errors.PusherBadAuth):
        forger.channel_info(channel)
    with pytest.raises(pusher.errors.PusherBadAuth):
        forger.users_info("presence-" + channel)
    with pytest.raises(pusher.errors.PusherBadAuth):
        forger.terminate_user_connections("someone")

    assert sdk.trigger(channel, "marker", "m") == {}
    client.wait_event(channel, "marker")
    assert client.events_seen("forged") == [], "a request with a bad signature was published"


def test_bad_signature_error_body_uses_pusher_signature_wording(herald, uniq):
    """HTTP-AUTH-8: 401 body names the expected string to sign and the signature sent."""
    forger = make_pusher(herald, secret="not-the-secret")
    client = forger._pusher_client
    request = client.channels_info.make_request("sig-%s" % uniq)
    params = {k: v for k, v in request.query_params.items() if k != "auth_signature"}
    string_to_sign = "\n".join([request.method, request.path, make_query_string(params)])

    with pytest.raises(pusher.errors.PusherBadAuth) as err:
        client.http.send_request(request)
    assert str(err.value) == (
        'Invalid signature: you should have sent HmacSHA256Hex("%s", your_secret_key), but you sent "%s"\n'
        % (string_to_sign.replace("\n", "\\n"), request.query_params["auth_signature"])
    )


def test_limits_the_sdk_lets_through_are_refused_by_herald(sdk, ws, uniq):
    """HTTP-EVENTS-6, HTTP-BATCH-2: pusher-http-python lets through event data up to about 30 KB
    and batches of any length; Herald itself refuses what is over its documented limits
    (limits.max_event_data_bytes 10 240 -> 413, limits.max_batch_size 10 -> 400) with a body
    naming the limit, and publishes nothing of the refused request."""
    channel = "limits-%s" % uniq
    client = ws()
    client.subscribe(channel)

    with pytest.raises(pusher.errors.PusherBadStatus) as too_big:
        sdk.trigger(channel, "too-big", "x" * 10241)
    assert str(too_big.value) == "413: Event data too large (max 10240 bytes)\n"
    assert sdk.trigger(channel, "at-limit", "x" * 10240) == {}, "exactly the limit is accepted"

    batch = [{"channel": channel, "name": "in-batch", "data": str(i)} for i in range(11)]
    with pytest.raises(pusher.errors.PusherBadRequest) as too_many:
        sdk.trigger_batch(batch)
    assert str(too_many.value) == "Batch too large (11 > 10)\n"

    assert sdk.trigger(channel, "marker", "m") == {}
    client.wait_event(channel, "marker")
    assert client.events_seen("too-big") == [], "oversized data was published"
    assert client.events_seen("in-batch") == [], "an oversized batch was partly published"
    assert [e["data"] for e in client.events_seen("at-limit")] == ["x" * 10240]


def test_invalid_channel_name_is_rejected_by_the_server_with_400(sdk, ws, uniq):
    """HTTP-BATCH-5, HTTP-EVENTS-10: past the SDK check (already_encoded), the server answers 400
    (PusherBadRequest) naming the channel, and publishes nothing from the batch."""
    good = "good-%s" % uniq
    client = ws()
    client.subscribe(good)
    batch = [
        {"channel": good, "name": "should-not-arrive", "data": "1"},
        {"channel": "bad channel!", "name": "ev", "data": "2"},
    ]
    with pytest.raises(pusher.errors.PusherBadRequest) as err:
        sdk.trigger_batch(batch, already_encoded=True)
    assert str(err.value).startswith("Invalid channel name: bad channel!")

    assert sdk.trigger(good, "marker", "m") == {}
    client.wait_event(good, "marker")
    assert client.events_seen("should-not-arrive") == [], "a rejected batch was partly published"


def test_invalid_channel_name_error_body_is_the_specified_line(sdk):
    """HTTP-GEN-2, http §3.4 error table: the 400 body is exactly `Invalid channel name: <name>\\n`."""
    with pytest.raises(pusher.errors.PusherBadRequest) as err:
        sdk.trigger_batch([{"channel": "bad channel!", "name": "ev", "data": "x"}], already_encoded=True)
    assert str(err.value) == "Invalid channel name: bad channel!\n"
