"""
The demo backend's Klein app: video generation jobs that progress with the
clock, their content as streamed bytes, their progress as server-sent events,
and injectable faults.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from attrs import define, field, frozen
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.web.server import Request
from zope.interface import implementer

#: Seconds a demo job takes to "generate".
JOB_SECONDS = 6.0
#: Bytes of a finished demo video.
VIDEO_BYTES = 4 * 1024 * 1024
CHUNK = 64 * 1024


@frozen
class Faults:
    """
    Faults to inject.

    @ivar fail_rate: fraction of API answers that are 500s.
    @ivar latency: seconds added before every answer.
    """

    fail_rate: float = 0.0
    latency: float = 0.0


#: Jobs the demo remembers (the oldest are forgotten) and prompt characters kept:
#: memory stays bounded however many requests, or however large, it is sent.
MAX_VIDEOS = 1000
MAX_PROMPT = 1000


@define
class Video:
    """
    One generation job.
    """

    id: str
    prompt: str
    created: float
    size: int = VIDEO_BYTES

    def progress(self, now: float) -> int:
        """
        Percent done at clock time C{now}.
        """
        return min(100, int((now - self.created) / JOB_SECONDS * 100))

    def as_json(self, now: float) -> dict[str, Any]:
        progress = self.progress(now)
        status = "completed" if progress >= 100 else ("queued" if progress == 0 else "in_progress")
        return {"id": self.id, "prompt": self.prompt, "status": status, "progress": progress}


@define
class DemoBackend:
    """
    The demo API on the clock C{clock}.
    """

    _clock: IReactorTime
    faults: Faults = Faults()
    _random: random.Random = field(factory=random.Random)
    videos: dict[str, Video] = field(factory=dict)
    _ids: Any = field(factory=lambda: itertools.count(1))
    app: Klein = field(factory=Klein)

    def __attrs_post_init__(self) -> None:
        app = self.app
        app.route("/api/health", methods=["GET"])(self.health)
        app.route("/api/videos", methods=["POST"])(self.create)
        app.route("/api/videos", methods=["GET"])(self.list)
        app.route("/api/videos/<video_id>", methods=["GET"])(self.show)
        app.route("/api/videos/<video_id>/content", methods=["GET"])(self.content)
        app.route("/api/videos/<video_id>/events", methods=["GET"])(self.events)

    def resource(self) -> Any:
        """
        The app as a twisted.web resource.
        """
        return self.app.resource()

    def _json(self, request: Request, body: Any, status: int = 200) -> Any:
        def answer(_: object = None) -> bytes:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(body).encode()

        def failing(_: object = None) -> bytes:
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": "injected failure (--fail-rate)"}'

        fail = self.faults.fail_rate > 0 and self._random.random() < self.faults.fail_rate
        respond = failing if fail else answer
        if self.faults.latency > 0:
            return deferLater(self._clock, self.faults.latency, respond)
        return respond()

    def health(self, request: Request) -> Any:
        return self._json(request, {"status": "ok", "videos": len(self.videos)})

    def create(self, request: Request) -> Any:
        assert request.content is not None
        try:
            body = json.loads(request.content.read() or b"{}")
            prompt = str(body["prompt"])
        except (ValueError, KeyError, TypeError):
            return self._json(request, {"error": 'send JSON like {"prompt": "a cat on a skateboard"}'}, 400)
        video = Video(f"video_{next(self._ids)}", prompt[:MAX_PROMPT], self._clock.seconds())
        self.videos[video.id] = video
        while len(self.videos) > MAX_VIDEOS:
            del self.videos[next(iter(self.videos))]
        return self._json(request, video.as_json(self._clock.seconds()), 201)

    def list(self, request: Request) -> Any:
        now = self._clock.seconds()
        return self._json(request, {"data": [v.as_json(now) for v in self.videos.values()]})

    def show(self, request: Request, video_id: str) -> Any:
        video = self.videos.get(video_id)
        if video is None:
            return self._json(request, {"error": f"no video {video_id}"}, 404)
        return self._json(request, video.as_json(self._clock.seconds()))

    def content(self, request: Request, video_id: str) -> Any:
        video = self.videos.get(video_id)
        if video is None:
            return self._json(request, {"error": f"no video {video_id}"}, 404)
        if video.progress(self._clock.seconds()) < 100:
            return self._json(request, {"error": "still generating; follow /events"}, 409)
        request.setHeader(b"content-type", b"video/mp4")
        request.setHeader(b"content-length", b"%d" % video.size)
        return _stream_bytes(request, video.size)

    def events(self, request: Request, video_id: str) -> Any:
        video = self.videos.get(video_id)
        if video is None:
            return self._json(request, {"error": f"no video {video_id}"}, 404)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")

        def tick() -> None:
            state = video.as_json(self._clock.seconds())
            request.write(b"event: progress\ndata: " + json.dumps(state).encode() + b"\n\n")
            if state["status"] == "completed":
                loop.stop()

        loop = LoopingCall(tick)
        loop.clock = self._clock

        def client_gone(_: object) -> None:
            if loop.running:
                loop.stop()

        request.notifyFinish().addErrback(client_gone)
        return loop.start(0.5).addCallback(lambda _: b"")


def _stream_bytes(request: Request, size: int) -> Deferred[bytes]:
    """
    Write C{size} bytes with backpressure (a push producer on the request).
    """
    producer = ByteStream(request, size)
    request.registerProducer(producer, True)
    producer.resumeProducing()
    return producer.finished


@implementer(IPushProducer)
class ByteStream:
    """
    Writes C{size} zero bytes to C{request} as fast as it reads them; fires
    C{finished} once all are written (Klein then finishes the request).
    """

    def __init__(self, request: Request, size: int) -> None:
        self._request = request
        self.left = size
        self.paused = False
        self.stopped = False
        self.finished: Deferred[bytes] = Deferred()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.left > 0:
            n = min(CHUNK, self.left)
            self.left -= n
            self._request.write(b"\0" * n)
        if self.left == 0 and not self.stopped:
            self.stopped = True
            self._request.unregisterProducer()
            self.finished.callback(b"")

    def stopProducing(self) -> None:
        self.stopped = True
