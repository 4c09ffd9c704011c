"""Fixtures for the pusher-http-python end-to-end suite.

A Herald binary is started once per session on a loopback port chosen by the OS; the tests
talk to it with the unchanged official `pusher` SDK (HTTP API) and observe deliveries with a
plain WebSocket client speaking Pusher protocol 7.
"""

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pusher
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# The default app's key and secret. pusher-http-python only accepts numeric app ids
# (`app_id_re = \A[0-9]+\Z` in pusher/util.py), so the default app's id "app-id" cannot be
# used with it; the server is told to serve the default app under a numeric id instead.
APP_ID = "4242"
APP_KEY = "app-key"
APP_SECRET = "app-secret"

STARTUP_TIMEOUT = 10.0
FRAME_TIMEOUT = 5.0


class HeraldProcess:
    """A running Herald binary whose stdout/stderr are drained by background threads."""

    def __init__(self, binary):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update(
            {
                "HERALD_HOST": HOST,
                "HERALD_PORT": "0",
                "HERALD_METRICS_PORT": "0",
                "HERALD_DEFAULT_APP_ID": APP_ID,
                "HERALD_LOG": os.environ.get("HERALD_LOG", "warn"),
            }
        )
        self.stdout_lines = []
        self.stderr_lines = []
        self.port = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [str(binary)],
            env=env,
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._threads = [
            threading.Thread(target=self._drain_stdout, daemon=True),
            threading.Thread(target=self._drain_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _drain_stdout(self):
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            if self.port is None and line.startswith("Herald listening on "):
                addr = line[len("Herald listening on "):].strip()
                self.port = int(addr.rsplit(":", 1)[1])
                self._ready.set()
        self._ready.set()  # EOF: let the waiter notice the exit

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def wait_ready(self, timeout):
        self._ready.wait(timeout)
        if self.port is None:
            self.stop()
            for thread in self._threads:
                thread.join(timeout=2)
            raise RuntimeError(
                "Herald exited or did not print 'Herald listening on <addr>' within %.0f s "
                "(exit status %r)\n--- stdout ---\n%s\n--- stderr ---\n%s"
                % (
                    timeout,
                    self.proc.poll(),
                    "".join(self.stdout_lines),
                    "".join(self.stderr_lines),
                )
            )

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="session")
def herald():
    binary = Path(os.environ.get("HERALD_BIN", REPO_ROOT / "target" / "release" / "herald"))
    if not binary.is_file():
        pytest.fail("Herald binary not found at %s (build it or set HERALD_BIN)" % binary)
    server = HeraldProcess(binary)
    server.wait_ready(STARTUP_TIMEOUT)
    try:
        yield server
    finally:
        server.stop()


def make_pusher(herald, secret=APP_SECRET):
    return pusher.Pusher(
        app_id=APP_ID,
        key=APP_KEY,
        secret=secret,
        ssl=False,
        host=HOST,
        port=herald.port,
        timeout=5,
        # Loopback only: never route through a proxy taken from the environment.
        proxies={"http": None, "https": None},
    )


@pytest.fixture
def sdk(herald):
    """The official SDK client, configured for the running server."""
    return make_pusher(herald)


@pytest.fixture
def uniq():
    """A short unique token so that each test uses its own channels and users."""
    return uuid.uuid4().hex[:10]


class WsClient:
    """Minimal Pusher protocol 7 client over a synchronous WebSocket."""

    def __init__(self, port):
        url = "ws://%s:%d/app/%s?protocol=7&client=py&version=1&flash=false" % (HOST, port, APP_KEY)
        self.conn = connect(url, open_timeout=FRAME_TIMEOUT, close_timeout=2, proxy=None)
        # Frames received while waiting for something else, in arrival order.
        self.backlog = []
        first = self._recv(FRAME_TIMEOUT)
        assert first["event"] == "pusher:connection_established", first
        assert isinstance(first["data"], str), first
        self.socket_id = json.loads(first["data"])["socket_id"]

    # -- low level -------------------------------------------------------------------------
    def _recv(self, timeout):
        raw = self.conn.recv(timeout=timeout)
        assert isinstance(raw, str), "server sent a binary frame: %r" % (raw,)
        return json.loads(raw)

    def send(self, event, data):
        self.conn.send(json.dumps({"event": event, "data": data}))

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass

    # -- waiting ---------------------------------------------------------------------------
    def wait_for(self, predicate, what, timeout=FRAME_TIMEOUT):
        """Returns the first frame (backlog first) matching predicate; others go to the backlog."""
        for i, frame in enumerate(self.backlog):
            if predicate(frame):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    "timed out after %.1f s waiting for %s on socket %s; other frames: %r"
                    % (timeout, what, self.socket_id, self.backlog)
                )
            try:
                frame = self._recv(remaining)
            except TimeoutError:
                continue
            if predicate(frame):
                return frame
            self.backlog.append(frame)

    def wait_event(self, channel, event, timeout=FRAME_TIMEOUT):
        return self.wait_for(
            lambda f: f.get("channel") == channel and f.get("event") == event,
            "event %r on %r" % (event, channel),
            timeout,
        )

    def events_seen(self, event):
        """Backlog frames with this event name (frames received but not consumed)."""
        return [f for f in self.backlog if f.get("event") == event]

    def wait_closed(self, timeout=FRAME_TIMEOUT):
        """Reads until the server closes the connection; returns (frames, close code)."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("socket %s was not closed within %.1f s; frames: %r"
                                     % (self.socket_id, timeout, frames))
            try:
                frames.append(self._recv(remaining))
            except TimeoutError:
                continue
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                return frames, code

    def assert_alive(self):
        """Proves the connection is open and served: pusher:ping must get pusher:pong."""
        self.send("pusher:ping", {})
        pong = self.wait_for(lambda f: f.get("event") == "pusher:pong", "pusher:pong")
        assert pong == {"event": "pusher:pong", "data": "{}"}, pong

    # -- protocol actions ------------------------------------------------------------------
    def subscribe(self, channel, auth=None, channel_data=None):
        """Subscribes and waits for subscription_succeeded; returns its (decoded) data."""
        data = {"channel": channel, "auth": auth if auth is not None else ""}
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send("pusher:subscribe", data)
        frame = self.wait_for(
            lambda f: f.get("event") == "pusher:error"
            or (f.get("event") == "pusher_internal:subscription_succeeded" and f.get("channel") == channel),
            "subscription_succeeded for %r" % channel,
        )
        if frame["event"] == "pusher:error":
            raise AssertionError("subscription to %r rejected: %r" % (channel, frame))
        return json.loads(frame["data"]) if isinstance(frame["data"], str) else frame["data"]

    def subscribe_private(self, sdk, channel):
        auth = sdk.authenticate(channel=channel, socket_id=self.socket_id)
        return self.subscribe(channel, auth=auth["auth"])

    def subscribe_presence(self, sdk, channel, user_id, user_info=None):
        custom = {"user_id": user_id, "user_info": user_info or {}}
        auth = sdk.authenticate(channel=channel, socket_id=self.socket_id, custom_data=custom)
        return self.subscribe(channel, auth=auth["auth"], channel_data=auth["channel_data"])

    def signin(self, sdk, user_id):
        auth = sdk.authenticate_user(self.socket_id, {"id": user_id})
        self.send("pusher:signin", {"auth": auth["auth"], "user_data": auth["user_data"]})
        frame = self.wait_for(
            lambda f: f.get("event") in ("pusher:signin_success", "pusher:error"),
            "pusher:signin_success",
        )
        if frame["event"] != "pusher:signin_success":
            raise AssertionError("sign-in as %r rejected: %r" % (user_id, frame))
        return frame


@pytest.fixture
def ws(herald):
    """Factory of connected WebSocket clients; all are closed after the test."""
    clients = []

    def open_client():
        client = WsClient(herald.port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def poll_until(fetch, predicate, what, timeout=FRAME_TIMEOUT, interval=0.05):
    """Calls fetch() until predicate(result) holds; fails with the last result after timeout.

    For state that changes asynchronously after a WebSocket closes (no frame announces it).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if predicate(result):
            return result
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s; last result: %r"
                                 % (timeout, what, result))
        time.sleep(interval)
