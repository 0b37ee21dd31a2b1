"""A local OTLP/HTTP trace receiver for tests/traces.rs.

Listens on 127.0.0.1 (port 0: the system picks), prints `PORT <n>`, then for every
`POST /v1/traces` decodes the body with the OpenTelemetry project's own protobuf
classes (pip `opentelemetry-proto`) and prints one JSON line per span: ids in hex,
name, kind, times, attributes, status, the resource's attributes and the scope. It
answers 200 with an empty ExportTraceServiceResponse. A body that does not decode is
printed as `BAD <reason>` and answered 400. Ends after `argv[1]` seconds (default 60).
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

lock = threading.Lock()


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        lines = []
        try:
            if self.path != "/v1/traces":
                raise ValueError("path " + self.path)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                raise ValueError("content type " + str(self.headers.get("Content-Type")))
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        lines.append(json.dumps({
                            "trace": s.trace_id.hex(),
                            "id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "state": s.trace_state,
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "attributes": attributes(s.attributes),
                            "status": [s.status.code, s.status.message],
                            "flags": s.flags,
                            "resource": resource,
                            "schema": rs.schema_url,
                            "scope": ss.scope.name,
                        }, sort_keys=True))
        except Exception as e:  # noqa: BLE001 - any failure is the test's to see
            with lock:
                print("BAD " + repr(e), flush=True)
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with lock:
            for line in lines:
                print(line)
            sys.stdout.flush()
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("PORT %d" % server.server_address[1], flush=True)
threading.Timer(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0, server.shutdown).start()
server.serve_forever()
