"""Channel queries with pusher-http-python.

These are GET requests, and pusher-http-python signs them with `body_md5` of the empty body
(`d41d8cd98f00b204e9800998ecf8427e`) in the query string, unlike the other SDKs.
"""

import pusher.errors
import pytest

from conftest import poll_until

EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def test_sdk_get_request_carries_empty_body_md5_and_is_accepted(sdk, ws, uniq):
    """HTTP-AUTH-4, HTTP-AUTH-5: a GET signed over body_md5 of the empty body is accepted."""
    channel = "md5-%s-x" % uniq
    ws().subscribe(channel)

    client = sdk._pusher_client
    request = client.channels_info.make_request("md5-%s-" % uniq)
    assert request.method == "GET"
    assert request.body == b""
    assert request.query_params["body_md5"] == EMPTY_MD5
    assert "body_md5=%s" % EMPTY_MD5 in request.url

    assert client.http.send_request(request) == {"channels": {channel: {}}}


def test_channels_info_lists_occupied_channels(sdk, ws, uniq):
    """HTTP-CHANNELS-1, HTTP-GEN-1: occupied channels listed as {"channels":{name:{}}}."""
    a, b = "list-%s-a" % uniq, "private-list-%s-b" % uniq
    client = ws()
    client.subscribe(a)
    client.subscribe_private(sdk, b)

    channels = sdk.channels_info()["channels"]
    assert isinstance(channels, dict)
    assert channels[a] == {}
    assert channels[b] == {}
    assert "list-%s-never" % uniq not in channels


def test_channels_info_with_prefix_filter_lists_only_matching_channels(sdk, ws, uniq):
    """HTTP-CHANNELS-1, HTTP-CHANNELS-2, HTTP-GEN-1: plain prefix filter; no match -> {"channels":{}}."""
    prefix = "pf-%s-" % uniq
    a, b, outside = prefix + "a", prefix + "b", "other-pf-%s" % uniq
    c1 = ws()
    c1.subscribe(a)
    c1.subscribe(outside)
    c2 = ws()
    c2.subscribe(b)

    assert sdk.channels_info(prefix_filter=prefix) == {"channels": {a: {}, b: {}}}
    assert sdk.channels_info(prefix_filter="nothing-%s" % uniq) == {"channels": {}}


def test_channels_info_user_count_with_presence_prefix(sdk, ws, uniq):
    """HTTP-CHANNELS-1, HTTP-CHANNELS-2: attributes=['user_count'] with a presence- prefix filter."""
    prefix = "presence-cu-%s-" % uniq
    p1, p2 = prefix + "1", prefix + "2"
    c1 = ws()
    c1.subscribe_presence(sdk, p1, "alice")
    c1.subscribe_presence(sdk, p2, "alice")
    c2 = ws()
    c2.subscribe_presence(sdk, p1, "alice")  # same user again: still one user
    c3 = ws()
    c3.subscribe_presence(sdk, p1, "bob")

    response = sdk.channels_info(prefix_filter=prefix, attributes=["user_count"])
    assert response == {"channels": {p1: {"user_count": 2}, p2: {"user_count": 1}}}


def test_channels_info_user_count_without_presence_prefix_is_rejected(sdk):
    """HTTP-CHANNELS-3: user_count needs a presence- prefix filter -> 400 PusherBadRequest."""
    expected = ("user_count may only be requested for presence channels - "
                "please supply filter_by_prefix begining with presence-\n")
    with pytest.raises(pusher.errors.PusherBadRequest) as no_filter:
        sdk.channels_info(attributes=["user_count"])
    assert str(no_filter.value) == expected
    with pytest.raises(pusher.errors.PusherBadRequest) as private_filter:
        sdk.channels_info(prefix_filter="private-", attributes=["user_count"])
    assert str(private_filter.value) == expected


def test_channel_info_reports_occupied_and_subscription_count(sdk, ws, uniq):
    """HTTP-CHANNEL-1, HTTP-CHANNEL-3, WS-CONNECT-15: counts follow subscribers, also after they close."""
    channel = "info-%s" % uniq
    c1 = ws()
    c2 = ws()
    c1.subscribe(channel)
    c2.subscribe(channel)

    assert sdk.channel_info(channel) == {"occupied": True}
    assert sdk.channel_info(channel, ["subscription_count"]) == {"occupied": True, "subscription_count": 2}

    c1.close()
    poll_until(lambda: sdk.channel_info(channel, ["subscription_count"]),
               lambda r: r == {"occupied": True, "subscription_count": 1},
               "subscription_count 1 after one subscriber closed")
    c2.close()
    poll_until(lambda: sdk.channel_info(channel, ["subscription_count"]),
               lambda r: r == {"occupied": False, "subscription_count": 0},
               "unoccupied after both subscribers closed")


def test_channel_info_on_unoccupied_channel(sdk, uniq):
    """HTTP-CHANNEL-1: an unoccupied channel is 200 {"occupied":false}, not an error."""
    channel = "never-%s" % uniq
    assert sdk.channel_info(channel) == {"occupied": False}
    assert sdk.channel_info(channel, ["subscription_count"]) == {"occupied": False, "subscription_count": 0}
    assert sdk.channel_info("presence-" + channel, ["user_count"]) == {"occupied": False, "user_count": 0}


def test_channel_info_reports_user_count_and_subscription_count_on_presence(sdk, ws, uniq):
    """HTTP-CHANNEL-1, HTTP-CHANNEL-3, WS-PRES-5: distinct users vs. subscribed connections."""
    channel = "presence-info-%s" % uniq
    c1 = ws()
    c1.subscribe_presence(sdk, channel, "alice")
    c2 = ws()
    c2.subscribe_presence(sdk, channel, "alice")
    c3 = ws()
    c3.subscribe_presence(sdk, channel, 42)

    assert sdk.channel_info(channel, ["user_count", "subscription_count"]) == {
        "occupied": True,
        "user_count": 2,
        "subscription_count": 3,
    }
    assert sdk.channel_info(channel, ["user_count"]) == {"occupied": True, "user_count": 2}


def test_channel_info_user_count_on_non_presence_is_rejected(sdk, uniq):
    """HTTP-CHANNEL-2: user_count on a non-presence channel -> 400 PusherBadRequest."""
    with pytest.raises(pusher.errors.PusherBadRequest) as err:
        sdk.channel_info("public-%s" % uniq, ["user_count"])
    assert str(err.value) == "Cannot retrieve the user count unless the channel is a presence channel\n"


def test_users_info_lists_distinct_presence_users(sdk, ws, uniq):
    """HTTP-USERS-1, WS-PRES-1: one entry per distinct user, ids as strings."""
    channel = "presence-users-%s" % uniq
    c1 = ws()
    c1.subscribe_presence(sdk, channel, "alice", {"name": "Alice"})
    c2 = ws()
    c2.subscribe_presence(sdk, channel, "alice", {"name": "Alice"})
    c3 = ws()
    c3.subscribe_presence(sdk, channel, 42)  # numeric user_id -> "42"

    users = sdk.users_info(channel)["users"]
    assert sorted(users, key=lambda u: u["id"]) == [{"id": "42"}, {"id": "alice"}]

    assert sdk.users_info("presence-empty-%s" % uniq) == {"users": []}


def test_users_info_on_non_presence_channel_is_rejected(sdk, uniq):
    """HTTP-USERS-2: users of a non-presence channel -> 400 PusherBadRequest."""
    with pytest.raises(pusher.errors.PusherBadRequest) as err:
        sdk.users_info("private-users-%s" % uniq)
    assert str(err.value) == "Users can only be retrieved for presence channels\n"
