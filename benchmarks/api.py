"""The global model API against a bare Starlette endpoint answering the same bytes, in the same run.

    python benchmarks/api.py [--concurrency 8] [--gets 3000] [--posts 600]
                             [--batch-sizes 100 500] [--batch-updates 6000] [--batch-concurrency 2]

Starts its own embedded MongoDB (and Kafka) on free ports under a temporary home, then two servers,
each one uvicorn worker in its own process: the FLEAD API (`python -m services.global_api`) and a bare
Starlette app whose `GET /model` returns the API's global-model bytes and whose `POST /update` reads
the body and returns the API's 202 body. A keep-alive HTTP/1.1 load generator (asyncio, `concurrency`
connections, in this process) measures:

- `GET /api/global-model` requests/s, as JSON (~200 kB) and binary (~39 kB), against `GET /model`;
- `GET /api/global-model` revalidated (If-None-Match, answered 304) requests/s;
- `POST /api/local-update` latency p50/p99 (JSON and binary bodies of the default model's shape,
  automatic aggregation at the configured threshold included) against `POST /update`;
- `POST /api/local-updates` (binary batches of each `--batch-sizes` of the default model's updates, each
  update for its own device, `--batch-concurrency` connections, as that many trainer processes would
  send them; automatic aggregation included): device updates/s, p50/p99 per request and per update
  (the request's latency over its updates), against `POST /update` reading the same bodies.

Prints one JSON object; ratios are FLEAD / bare (throughput) and bare / FLEAD (latency is inverted so
that 1.0 is "as fast as the bare endpoint" in both).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil

from flead.config import Settings
from flead.federated import LocalUpdate
from flead.local.services import LocalServices, free_port, terminate
from flead.model.serialization import nested_lists
from services.global_api.codec import encode_binary_update, encode_binary_updates
from services.global_api.service import GlobalModelService

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin-" + uuid.uuid4().hex


# ------------------------------------------------------------------------------ servers


def serve_bare(host: str, port: int, model_file: Path, accepted_file: Path) -> None:
    """The baseline: Starlette, no auth, no database, the same response bytes."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    bodies = {"json": model_file.read_bytes(), "binary": model_file.with_suffix(".bin").read_bytes()}
    accepted = accepted_file.read_bytes()

    async def model(request: Request) -> Response:
        binary = "application/octet-stream" in request.headers.get("accept", "")
        fmt = "binary" if binary else "json"
        media_type = "application/octet-stream" if binary else "application/json"
        return Response(bodies[fmt], media_type=media_type, headers={"ETag": f'"{fmt}"'})

    async def update(request: Request) -> Response:
        await request.body()
        return Response(accepted, status_code=202, media_type="application/json")

    app = Starlette(routes=[Route("/model", model), Route("/update", update, methods=["POST"])])
    uvicorn.run(app, host=host, port=port, log_level="warning", workers=1)


def start_process(args: list[str], env: dict[str, str], health_url: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args} exited with {process.returncode}")
        try:
            if httpx.get(health_url, timeout=2).status_code < 500:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # poll interval between health checks
    process.kill()
    raise TimeoutError(f"{args} did not answer {health_url}")


# ------------------------------------------------------------------------------ load generator


class Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read status and a Content-Length body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**22)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def run_load(host: str, port: int, concurrency: int, total: int, make_request) -> dict:
    """`total` requests over `concurrency` connections; `make_request(i)` gives (method, path, headers,
    body), and may use the previous response through its `.seen(status, body)`."""
    connections = [Connection(host, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in connections))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(total))

    async def worker(connection: Connection) -> None:
        for i in counter:
            method, path, headers, body = make_request(i)
            started = time.perf_counter()
            status, payload = await connection.request(method, path, headers, body)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if hasattr(make_request, "seen"):
                make_request.seen(status, payload)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    for c in connections:
        c.close()
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests": total,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(total / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


class UpdateRequests:
    """POST bodies with unique update ids and the latest base version the responses reported."""

    def __init__(self, path: str, token: str, shapes: dict, binary: bool, tag: str) -> None:
        rng = np.random.default_rng(0)
        self.arrays = {
            name: (rng.standard_normal(shape) * 0.001).astype(np.float32) for name, shape in shapes.items()
        }
        arrays_json = json.dumps({n: nested_lists(a) for n, a in self.arrays.items()}, separators=(",", ":"))
        self.arrays_json = arrays_json.encode()
        self.path, self.binary, self.tag, self.version = path, binary, tag, 0
        media_type = "application/octet-stream" if binary else "application/json"
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": media_type}

    def __call__(self, i: int) -> tuple[str, str, dict, bytes]:
        device, update_id = f"mote-{i % 54 + 1:02d}", f"{self.tag}-{i}"
        if self.binary:
            update = LocalUpdate(device, update_id, self.version, 64, self.arrays, metrics={"loss": 0.1})
            body = encode_binary_update(update)
        else:
            head = {
                "device_id": device,
                "update_id": update_id,
                "base_version": self.version,
                "n_samples": 64,
            }
            body = json.dumps({**head, "kind": "delta", "metrics": {"loss": 0.1}})[:-1].encode()
            body += b',"arrays":' + self.arrays_json + b"}"
        return "POST", self.path, self.headers, body

    def seen(self, status: int, payload: bytes) -> None:
        if status in (200, 202):
            self.version = max(self.version, json.loads(payload)["version"])


class BatchRequests:
    """Binary batches of `size` updates, each for its own device; bodies made before the clock starts
    (the API is configured with a staleness limit that keeps them valid however many versions it makes)."""

    def __init__(self, path: str, token: str, shapes: dict, size: int, n_batches: int, tag: str, base: int):
        rng = np.random.default_rng(1)
        arrays = {name: (rng.standard_normal(s) * 0.001).astype(np.float32) for name, s in shapes.items()}
        metrics = {"loss": 0.1}
        self.bodies = [
            encode_binary_updates(
                LocalUpdate(f"dev-{b * size + j:06d}", f"{tag}-{b}-{j}", base, 64, arrays, metrics=metrics)
                for j in range(size)
            )
            for b in range(n_batches)
        ]
        self.path = path
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        self.accepted = 0

    def __call__(self, i: int) -> tuple[str, str, dict, bytes]:
        return "POST", self.path, self.headers, self.bodies[i]

    def to(self, path: str) -> BatchRequests:
        """The same bodies, sent to ``path`` (the bare endpoint)."""
        other = copy.copy(self)
        other.path, other.accepted = path, 0
        return other

    def seen(self, status: int, payload: bytes) -> None:
        if status == 200 and payload.startswith(b"{"):
            self.accepted += json.loads(payload).get("accepted", 0)


def per_update(result: dict, size: int) -> dict:
    return {
        "updates_per_s": round(result["requests"] * size / result["seconds"], 1),
        "p50_ms_per_update": round(result["p50_ms"] / size, 3),
        "p99_ms_per_update": round(result["p99_ms"] / size, 3),
    }


def mongo_round_trips(settings: Settings, body_bytes: int, n: int = 200) -> dict:
    """What one MongoDB operation costs here: the floor under every request that touches the database."""
    from bson import Binary

    from flead.storage.mongo import get_database, make_mongo_client

    client = make_mongo_client(settings)
    collection = get_database(client, settings)["bench_round_trips"]
    blob = Binary(b"x" * body_bytes)
    started = time.perf_counter()
    for i in range(n):
        collection.insert_one({"_id": i, "arrays": blob, "status": "pending"})
    insert_ms = (time.perf_counter() - started) / n * 1000
    started = time.perf_counter()
    for i in range(n):
        collection.count_documents({"_id": i})
    read_ms = (time.perf_counter() - started) / n * 1000
    collection.drop()
    client.close()
    return {
        "insert_doc_ms": round(insert_ms, 2),
        "indexed_read_ms": round(read_ms, 2),
        "doc_bytes": body_bytes,
    }


def ratio(flead: dict, bare: dict) -> dict:
    return {
        "throughput": round(flead["requests_per_s"] / bare["requests_per_s"], 3),
        "p50_latency": round(bare["p50_ms"] / flead["p50_ms"], 3),
        "p99_latency": round(bare["p99_ms"] / flead["p99_ms"], 3),
    }


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--gets", type=int, default=3000)
    parser.add_argument("--posts", type=int, default=600)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--batch-updates", type=int, default=6000, help="updates sent per batch size")
    parser.add_argument("--batch-concurrency", type=int, default=2)
    parser.add_argument("--serve-bare", nargs=4, help=argparse.SUPPRESS)  # HOST PORT MODEL_FILE ACCEPTED_FILE
    args = parser.parse_args()
    if args.serve_bare:
        host, port, model_file, accepted_file = args.serve_bare
        serve_bare(host, int(port), Path(model_file), Path(accepted_file))
        return

    with tempfile.TemporaryDirectory() as home:
        host = "127.0.0.1"
        settings = Settings(
            home=Path(home),
            kafka_bootstrap_servers=f"{host}:{free_port()}",
            mongo_uri=f"mongodb://{host}:{free_port()}/?directConnection=true",
            mongo_db="bench_api",
            api_url=f"http://{host}:{free_port()}",
            api_admin_key=ADMIN_KEY,
        )
        env = {
            **os.environ,
            "FLEAD_HOME": home,
            "FLEAD_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "FLEAD_MONGO_URI": settings.mongo_uri,
            "FLEAD_MONGO_DB": settings.mongo_db,
            "FLEAD_API_URL": settings.api_url,
            "FLEAD_API_ADMIN_KEY": ADMIN_KEY,
        }
        services = LocalServices(settings)
        services.up()
        processes = []
        try:
            api_port = settings.api_url.rsplit(":", 1)[1]
            serve_api = "from services.global_api.server import serve; serve(log_level='warning')"
            processes.append(start_process(["-c", serve_api], env, f"{settings.api_url}/health"))
            service = GlobalModelService.open(settings)
            token = service.keys.create("trainer").token
            shapes = {name: w.shape for name, w in service.registry.state(0).weights.items()}
            threshold = service.config.load().auto_aggregate_threshold
            service.close()

            model_file = Path(home) / "model.json"
            model_file.write_bytes(httpx.get(f"{settings.api_url}/api/global-model").content)
            binary = httpx.get(
                f"{settings.api_url}/api/global-model", headers={"Accept": "application/octet-stream"}
            )
            model_file.with_suffix(".bin").write_bytes(binary.content)
            sizes = {"json": model_file.stat().st_size, "binary": len(binary.content)}
            accepted_file = Path(home) / "accepted.json"
            accepted_file.write_bytes(json.dumps({"status": "accepted", "pending": 1, "version": 0}).encode())
            bare_port = free_port()
            bare_args = [__file__, "--serve-bare", host, str(bare_port), str(model_file), str(accepted_file)]
            processes.append(start_process(bare_args, env, f"http://{host}:{bare_port}/model"))

            def get(path: str, accept: str):
                return lambda i: ("GET", path, {"Accept": accept}, b"")

            results: dict = {}
            for fmt, accept in (("json", "application/json"), ("binary", "application/octet-stream")):
                flead = asyncio.run(
                    run_load(
                        host, int(api_port), args.concurrency, args.gets, get("/api/global-model", accept)
                    )
                )
                bare = asyncio.run(
                    run_load(host, bare_port, args.concurrency, args.gets, get("/model", accept))
                )
                results[f"get_global_model_{fmt}"] = {
                    "flead": flead,
                    "bare": bare,
                    "ratio": ratio(flead, bare),
                }
                etag = httpx.get(f"{settings.api_url}/api/global-model", headers={"Accept": accept}).headers
                revalidate = {"Accept": accept, "If-None-Match": etag["etag"]}
                not_modified = asyncio.run(
                    run_load(
                        host,
                        int(api_port),
                        args.concurrency,
                        args.gets,
                        lambda i, h=revalidate: ("GET", "/api/global-model", h, b""),
                    )
                )
                results[f"get_global_model_{fmt}_304"] = {
                    "flead": not_modified,
                    "vs_bare_200": ratio(not_modified, bare),
                }

            for fmt in ("json", "binary"):
                requests = UpdateRequests("/api/local-update", token, shapes, fmt == "binary", f"bench-{fmt}")
                requests.version = httpx.get(f"{settings.api_url}/api/status").json()["version"]
                flead = asyncio.run(run_load(host, int(api_port), args.concurrency, args.posts, requests))
                baseline = UpdateRequests("/update", token, shapes, fmt == "binary", f"bare-{fmt}")
                bare = asyncio.run(run_load(host, bare_port, args.concurrency, args.posts, baseline))
                results[f"post_local_update_{fmt}"] = {
                    "body_bytes": len(requests(0)[3]),
                    "flead": flead,
                    "bare": bare,
                    "ratio": ratio(flead, bare),
                }
            status = httpx.get(f"{settings.api_url}/api/status").json()
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            httpx.post(f"{settings.api_url}/api/config", json={"max_staleness": 1_000_000}, headers=admin)
            for size in args.batch_sizes:
                n_batches = max(1, args.batch_updates // size)
                base = httpx.get(f"{settings.api_url}/api/status").json()["version"]
                tag = f"b{size}"
                requests = BatchRequests("/api/local-updates", token, shapes, size, n_batches, tag, base)
                flead = asyncio.run(
                    run_load(host, int(api_port), args.batch_concurrency, n_batches, requests)
                )
                bare = asyncio.run(
                    run_load(host, bare_port, args.batch_concurrency, n_batches, requests.to("/update"))
                )
                results[f"post_local_updates_binary_batch_{size}"] = {
                    "body_bytes": len(requests.bodies[0]),
                    "updates_accepted": requests.accepted,
                    "flead": {**flead, **per_update(flead, size)},
                    "bare": {**bare, **per_update(bare, size)},
                    "ratio": ratio(flead, bare),
                }
            versions_after_batches = httpx.get(f"{settings.api_url}/api/status").json()["version"]
            round_trips = mongo_round_trips(settings, sizes["binary"])
        finally:
            for process in processes:
                terminate(psutil.Process(process.pid), grace_s=20)
            services.down()

    print(
        json.dumps(
            {
                "machine": f"{os.cpu_count()} cores",
                "concurrency": args.concurrency,
                "uvicorn_workers": 1,
                "auto_aggregate_threshold": threshold,
                "model_bytes": sizes,
                "versions_created_during_posts": status["version"],
                "versions_created_during_batches": versions_after_batches - status["version"],
                "batch_concurrency": args.batch_concurrency,
                "mongodb_sequential_round_trips": round_trips,
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
