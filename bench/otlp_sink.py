"""A minimal OTLP/HTTP receiver for bench/router_overhead.py: accepts ``POST <prefix>/v1/traces`` and drops it.

The bench measures what tracing costs the router (building spans, batching, encoding,
exporting), not a trace backend: this sink answers every export at once, on the load
generator's core. It decodes each export only to count it, per path prefix (each traced
router exports to its own, ``--otlp-endpoint http://sink/trace10``): exports, bytes, spans,
and SERVER spans (one per sampled client request), served as JSON by ``GET /count``, so a
row can say how many of its requests' spans really left the router.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
from collections import defaultdict

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

TRACES = "/v1/traces"
FIELDS = ("exports", "bytes", "spans", "server_spans", "undecodable")


def counts() -> dict[str, int]:
    return dict.fromkeys(FIELDS, 0)


class Sink(asyncio.Protocol):
    by_prefix: defaultdict[str, dict[str, int]] = defaultdict(counts)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            length, gzipped = 0, False
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "content-encoding":
                    gzipped = value.strip().lower() == "gzip"
            if len(self.buf) < head_end + 4 + length:
                return
            payload = self.buf[head_end + 4:head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            if head.startswith("GET /count"):
                body = json.dumps(Sink.by_prefix).encode()
                kind = b"application/json"
            else:
                path = head.split(" ", 2)[1] if head.count(" ") >= 2 else ""
                self.count(path.removesuffix(TRACES), payload, gzipped)
                body, kind = b"", b"application/x-protobuf"  # an empty ExportTraceServiceResponse: all accepted
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "  # type: ignore[attr-defined]
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)

    @staticmethod
    def count(prefix: str, payload: bytes, gzipped: bool) -> None:
        c = Sink.by_prefix[prefix]
        c["exports"] += 1
        c["bytes"] += len(payload)
        try:
            request = ExportTraceServiceRequest.FromString(gzip.decompress(payload) if gzipped else payload)
        except Exception:  # counted, never fatal: the bench reports it
            c["undecodable"] += 1
            return
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                c["spans"] += len(scope.spans)
                c["server_spans"] += sum(1 for span in scope.spans if span.kind == Span.SPAN_KIND_SERVER)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    asyncio.run(main(p.parse_args().port))
