"""Publishing with pusher-http-python: trigger, trigger_batch, socket_id exclusion."""

import json


def sdk_json(value):
    """The string the SDK sends as `data` for a non-string payload."""
    return json.dumps(value, ensure_ascii=False)


def test_trigger_to_one_channel_is_delivered_verbatim(sdk, ws, uniq):
    """HTTP-EVENTS-1, WS-DELIVER-1, WS-DELIVER-4: 200 {} and the data string arrives untouched."""
    channel = "news-%s" % uniq
    client = ws()
    client.subscribe(channel)

    # Key order, a big number, non-ASCII text and spacing must all survive byte for byte.
    data = '{"z": 1,"a":"caf\u00e9 \u2603","big":123456789012345678901234567890,"s":"x\\"y"}'
    assert sdk.trigger(channel, "price-update", data) == {}

    frame = client.wait_event(channel, "price-update")
    assert frame == {"event": "price-update", "channel": channel, "data": data}


def test_trigger_with_object_data_delivers_the_sdk_json_string(sdk, ws, uniq):
    """HTTP-EVENTS-1, WS-DELIVER-1: the SDK JSON-encodes dicts; subscribers get that string."""
    channel = "private-orders-%s" % uniq
    client = ws()
    client.subscribe_private(sdk, channel)

    payload = {"id": 7, "items": ["a", "b"], "note": "\u00fcber"}
    assert sdk.trigger([channel], "App\\Events\\OrderShipped", payload) == {}

    frame = client.wait_event(channel, "App\\Events\\OrderShipped")
    assert frame == {"event": "App\\Events\\OrderShipped", "channel": channel, "data": sdk_json(payload)}


def test_trigger_to_several_channels_delivers_once_per_channel(sdk, ws, uniq):
    """HTTP-EVENTS-1, WS-DELIVER-3, WS-SUB-8: one frame per subscribed target channel, none elsewhere."""
    a, b, p = "multi-a-%s" % uniq, "multi-b-%s" % uniq, "private-multi-%s" % uniq
    on_all = ws()
    on_all.subscribe(a)
    on_all.subscribe(b)
    on_all.subscribe_private(sdk, p)
    only_b = ws()
    only_b.subscribe(b)

    assert sdk.trigger([a, b, p], "fanout", "payload-1") == {}

    for channel in (a, b, p):
        assert on_all.wait_event(channel, "fanout") == {"event": "fanout", "channel": channel, "data": "payload-1"}
    assert only_b.wait_event(b, "fanout") == {"event": "fanout", "channel": b, "data": "payload-1"}

    # A later marker on every channel proves nothing more was (or will be, per-connection order) sent.
    assert sdk.trigger([a, b, p], "marker", "m") == {}
    for channel in (a, b, p):
        on_all.wait_event(channel, "marker")
    only_b.wait_event(b, "marker")
    assert on_all.events_seen("fanout") == [], "duplicate deliveries"
    assert [f for f in only_b.backlog if f.get("channel") in (a, p)] == [], "delivered to a non-subscriber"


def test_trigger_with_socket_id_excludes_that_connection(sdk, ws, uniq):
    """HTTP-EVENTS-7, WS-DELIVER-2: the connection named by socket_id does not receive the event."""
    channel = "exclude-%s" % uniq
    excluded = ws()
    other = ws()
    excluded.subscribe(channel)
    other.subscribe(channel)

    assert sdk.trigger(channel, "echo", "from-excluded", socket_id=excluded.socket_id) == {}
    assert other.wait_event(channel, "echo") == {"event": "echo", "channel": channel, "data": "from-excluded"}

    assert sdk.trigger(channel, "marker", "m") == {}
    excluded.wait_event(channel, "marker")
    assert excluded.events_seen("echo") == [], "excluded socket received the event"


def test_trigger_batch_delivers_each_event_in_order(sdk, ws, uniq):
    """HTTP-BATCH-1, HTTP-BATCH-5, WS-DELIVER-2: 200 {}, published in array order, per-item socket_id."""
    a, b = "batch-a-%s" % uniq, "batch-b-%s" % uniq
    client = ws()
    client.subscribe(a)
    client.subscribe(b)
    excluded = ws()
    excluded.subscribe(a)

    batch = [
        {"channel": a, "name": "first", "data": "1"},
        {"channel": b, "name": "second", "data": {"n": 2}},
        {"channel": a, "name": "third", "data": "3", "socket_id": excluded.socket_id},
        {"channel": a, "name": "fourth", "data": "4"},
    ]
    assert sdk.trigger_batch(batch) == {}

    names = {"first", "second", "third", "fourth"}
    received = [client.wait_for(lambda f: f.get("event") in names, "batch event") for _ in range(4)]
    assert received == [
        {"event": "first", "channel": a, "data": "1"},
        {"event": "second", "channel": b, "data": sdk_json({"n": 2})},
        {"event": "third", "channel": a, "data": "3"},
        {"event": "fourth", "channel": a, "data": "4"},
    ]

    excluded.wait_event(a, "fourth")
    assert excluded.events_seen("third") == [], "batch item socket_id was not excluded"
    assert [f["event"] for f in excluded.events_seen("first")] == ["first"]


def test_trigger_batch_with_info_returns_batch_aligned_by_index(sdk, ws, uniq):
    """HTTP-BATCH-4: any item with info -> {"batch":[...]} with one object per item, {} where none."""
    public = "batch-info-%s" % uniq
    presence = "presence-batch-info-%s" % uniq
    vacant = "batch-info-vacant-%s" % uniq

    c1 = ws()
    c1.subscribe(public)
    c1.subscribe_presence(sdk, presence, "alice")
    c2 = ws()
    c2.subscribe_presence(sdk, presence, "alice")  # second connection of the same user
    c3 = ws()
    c3.subscribe_presence(sdk, presence, "bob")

    batch = [
        {"channel": public, "name": "e0", "data": "0"},
        {"channel": presence, "name": "e1", "data": "1", "info": "user_count,subscription_count"},
        {"channel": public, "name": "e2", "data": "2", "info": "subscription_count"},
        {"channel": public, "name": "e3", "data": "3", "info": "user_count"},
        {"channel": vacant, "name": "e4", "data": "4", "info": "subscription_count"},
    ]
    response = sdk.trigger_batch(batch)
    assert response == {
        "batch": [
            {},
            {"user_count": 2, "subscription_count": 3},
            {"subscription_count": 1},
            {},  # user_count does not apply to a public channel: omitted, not an error
            {"subscription_count": 0},
        ]
    }

    assert c1.wait_event(public, "e3")["data"] == "3"
    for client in (c1, c2, c3):
        assert client.wait_event(presence, "e1") == {"event": "e1", "channel": presence, "data": "1"}
