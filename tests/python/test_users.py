"""User features with pusher-http-python: send_to_user and terminate_user_connections."""

import json


def test_send_to_user_reaches_the_signed_in_connection(sdk, ws, uniq):
    """WS-USER-6, WS-USER-7, HTTP-EVENTS-8: send_to_user / trigger to #server-to-user-<id>."""
    user = "user-%s" % uniq
    other_user = "other-%s" % uniq
    channel = "#server-to-user-" + user
    other_channel = "#server-to-user-" + other_user

    target = ws()
    target.signin(sdk, user)
    target.subscribe(channel)
    other = ws()
    other.signin(sdk, other_user)
    other.subscribe(other_channel)

    payload = {"hello": "you"}
    assert sdk.send_to_user(user, "notice", payload) == {}
    assert target.wait_event(channel, "notice") == {
        "event": "notice",
        "channel": channel,
        "data": json.dumps(payload, ensure_ascii=False),
    }

    # A plain trigger to the server-to-user channel is the same thing.
    assert sdk.trigger(channel, "via-trigger", "t") == {}
    assert target.wait_event(channel, "via-trigger") == {"event": "via-trigger", "channel": channel, "data": "t"}

    # The other user's connection got neither (proved by a later event addressed to it).
    assert sdk.send_to_user(other_user, "marker", "m") == {}
    other.wait_event(other_channel, "marker")
    assert other.events_seen("notice") == [] and other.events_seen("via-trigger") == []


def test_server_to_user_channels_are_not_listed(sdk, ws, uniq):
    """HTTP-CHANNELS-5: internal #server-to-user-... channels do not appear in GET /channels."""
    user = "hidden-%s" % uniq
    client = ws()
    client.signin(sdk, user)
    client.subscribe("#server-to-user-" + user)
    client.subscribe("visible-%s" % uniq)

    channels = sdk.channels_info()["channels"]
    assert "visible-%s" % uniq in channels
    assert [name for name in channels if name.startswith("#")] == []


def test_terminate_user_connections_closes_only_that_users_signed_in_connections(sdk, ws, uniq):
    """HTTP-TERM-1, HTTP-TERM-2, WS-USER-8: POST /users/<id>/terminate_connections (no /apps prefix)."""
    victim = "victim-%s" % uniq
    bystander = "bystander-%s" % uniq

    tab1 = ws()
    tab1.signin(sdk, victim)
    tab2 = ws()
    tab2.signin(sdk, victim)
    tab2.subscribe("#server-to-user-" + victim)
    survivor = ws()
    survivor.signin(sdk, bystander)
    # Same user id, but only as a presence member, not signed in: must be unaffected.
    presence_only = ws()
    presence_only.subscribe_presence(sdk, "presence-term-%s" % uniq, victim)

    # The premise of this test: the SDK calls the path without the /apps/<id> prefix.
    request = sdk._pusher_client.terminate_user_connections.make_request(victim)
    assert (request.method, request.path) == ("POST", "/users/%s/terminate_connections" % victim)

    assert sdk.terminate_user_connections(victim) == {}

    for tab in (tab1, tab2):
        frames, close_code = tab.wait_closed()
        errors = [f for f in frames if f.get("event") == "pusher:error"]
        assert len(errors) == 1, frames
        assert isinstance(errors[0]["data"], dict), errors[0]
        assert errors[0]["data"]["code"] == 4009, errors[0]
        assert isinstance(errors[0]["data"].get("message"), str), errors[0]
        assert close_code == 4009, (close_code, frames)

    survivor.assert_alive()
    presence_only.assert_alive()


def test_terminate_user_connections_without_connections_succeeds(sdk, uniq):
    """HTTP-TERM-1: 200 {} even when no connection of that user exists."""
    assert sdk.terminate_user_connections("nobody-%s" % uniq) == {}
