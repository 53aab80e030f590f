"""Signed `show server` and `list servers` through the real controller vs a bare FastAPI endpoint, same run.

Starts a real controller (uvicorn, SQLite, in this process) and a few simulated hosts (`agent.sim`, in a process
of their own), creates `--servers` servers through the API with the official SDK and waits until they are
ACTIVE. Then it serves, in this process and with the same uvicorn settings, a bare FastAPI app whose routes (same
paths, plain `def` like the controller's) return the JSON the controller answered, and loads both alike:
`--concurrency` keep-alive connections from a separate load process, every request signed with
`controller.auth.signature.sign` (the official SDK's SDK-HMAC-SHA256 canonical form) whether or not the
target checks it, for `--seconds` per measurement, targets alternating for `--rounds` rounds (best round kept:
the machine is shared and noisy). Endpoints: show one server, list servers (all of them, one page), and list 20.

Repeated reads are served from the controller's view cache (`services.server_view_cache`), as a client polling
a list would be; so the bench also times each endpoint cold: right after a write bumps the project's view stamp
(the cache then renders from the database), the median of `COLD_SAMPLES` single requests.

Prints requests/s, p50 and p99 per endpoint and target, and the ratio controller/bare (bar ≥ 0.5), and the cold
latencies; the last line is one JSON object.

    .venv/bin/python -m bench.api --servers 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from huaweicloudsdkecs.v2 import (
    CreatePostPaidServersRequest,
    CreatePostPaidServersRequestBody,
    PostPaidServer,
    PostPaidServerNic,
    PostPaidServerRootVolume,
    PostPaidServerSecurityGroup,
    ShowJobRequest,
)
from sqlalchemy import text
from sqlmodel import Session, col, select

from agent.sim import SimCapacity
from bench.support import (
    Controller,
    make_seed_image,
    median,
    open_network,
    percentile,
    serve_in_thread,
    start_controller,
    start_fleet,
)
from controller.auth.signature import sign
from controller.models.image import Image

BAR_RATIO = 0.5
COLD_SAMPLES = 15
PER_REQUEST = 20
FLAVOR = "s6.nano.1"


# --- the load, run in a process of its own so it does not share the servers' interpreter ---


@dataclass(frozen=True)
class Target:
    url: str
    path: str
    query: str  # already encoded, e.g. "limit=20"
    ak: str
    sk: str
    project_id: str


def _request_bytes(target: Target, host: str) -> bytes:
    headers = sign(
        access_key=target.ak,
        secret_key=target.sk,
        method="GET",
        path=target.path,
        query=[tuple(kv.split("=", 1)) for kv in target.query.split("&") if kv],  # type: ignore[misc]
        headers={"Host": host, "Content-Type": "application/json", "X-Project-Id": target.project_id},
        body=b"",
    )
    uri = target.path + (f"?{target.query}" if target.query else "")
    lines = [f"GET {uri} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    """One HTTP/1.1 response with Content-Length (uvicorn sends it for JSON) off a keep-alive socket."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    total = end + 4 + length
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    body = bytes(buffer[end + 4 : total])
    del buffer[:total]
    return status, body


def run_load(target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` connections each sending signed requests back to back for `seconds`; latencies in s."""
    parts = urlsplit(target.url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def connection(n: int) -> None:
        with socket.create_connection(address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = bytearray()
            start.wait()
            mine = latencies[n]
            while (now := time.perf_counter()) < deadline[0]:
                request = _request_bytes(target, parts.netloc)  # signed afresh each time, as a client would
                began = time.perf_counter()
                sock.sendall(request)
                status, _ = _read_response(sock, buffer)
                mine.append(time.perf_counter() - began)
                if status != 200:
                    errors[n] += 1
            del now

    threads = [threading.Thread(target=connection, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    flat = [x for per in latencies for x in per]
    return {
        "requests": len(flat),
        "errors": sum(errors),
        "per_s": len(flat) / elapsed,
        "p50_ms": percentile(flat, 50) * 1000,
        "p99_ms": percentile(flat, 99) * 1000,
    }


# --- the bare endpoint ---


def bare_app(show_body: dict[str, Any], list_bodies: dict[int, dict[str, Any]]) -> FastAPI:
    """The same paths returning the controller's JSON: no auth, no database, no views."""
    app = FastAPI()

    @app.get("/v1/{project_id}/cloudservers/detail")
    def list_details(project_id: str, limit: int = 25) -> dict[str, Any]:
        return list_bodies[limit]

    @app.get("/v1/{project_id}/cloudservers/{server_id}")
    def show(project_id: str, server_id: str) -> dict[str, Any]:
        return show_body

    return app


# --- setup ---


def populate(controller: Controller, count: int) -> list[str]:
    """`count` servers through the SDK, 20 per create, all ACTIVE on the simulated hosts."""
    with Session(controller.ctx.engine) as session:
        image_id = session.exec(select(Image.id).where(col(Image.owner).is_(None))).one()
    vpc_id, subnet_id, group_id = open_network(controller, count)
    batches = [min(PER_REQUEST, count - i) for i in range(0, count, PER_REQUEST)]

    def create(n_size: tuple[int, int]) -> tuple[str, list[str]]:
        n, size = n_size
        body = PostPaidServer(
            image_ref=image_id,
            flavor_ref=FLAVOR,
            name=f"api-{n}",
            vpcid=vpc_id,
            nics=[PostPaidServerNic(subnet_id=subnet_id)],
            root_volume=PostPaidServerRootVolume(volumetype="SSD", size=10),
            security_groups=[PostPaidServerSecurityGroup(id=group_id)],
            count=size,
        )
        answer = controller.ecs().create_post_paid_servers(
            CreatePostPaidServersRequest(body=CreatePostPaidServersRequestBody(server=body))
        )
        return answer.job_id, list(answer.server_ids)

    with ThreadPoolExecutor(max_workers=4) as pool:
        created = list(pool.map(create, enumerate(batches)))
    ecs = controller.ecs()
    for job_id, _ in created:
        while (job := ecs.show_job(ShowJobRequest(job_id=job_id))).status not in ("SUCCESS", "FAIL"):
            time.sleep(0.5)
        if job.status != "SUCCESS":
            raise RuntimeError(f"creating servers failed: {job.fail_reason}")
    return [sid for _, sids in created for sid in sids]


def fetch(controller: Controller, path: str, query: str) -> dict[str, Any]:
    """One signed GET through the same raw client the load uses."""
    target = Target(controller.url, path, query, controller.ak, controller.sk, controller.project_id)
    parts = urlsplit(controller.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(_request_bytes(target, parts.netloc))
        status, body = _read_response(sock, bytearray())
    if status != 200:
        raise RuntimeError(f"GET {path}?{query}: {status} {body[:300]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    cold: dict[str, float] = {}
    populate_s = 0.0
    try:
        controller = start_controller(
            workdir / "controller",
            seed_image=make_seed_image(workdir / "image"),
            # The real limiter stays in the request path, set far above what this load sends.
            rate_limit_per_second=1e9,
            rate_limit_burst=1_000_000_000,
        )
        try:
            capacity = SimCapacity(vcpus=64, memory_mib=256 * 1024, disk_gib=100_000)
            fleet = start_fleet(controller, workdir / "fleet", args.hosts, capacity, 10.0)
            try:
                t0 = time.perf_counter()
                server_ids = populate(controller, args.servers)
                populate_s = time.perf_counter() - t0
                print(f"{args.servers} servers ACTIVE in {populate_s:.1f} s", file=sys.stderr)
                p = controller.project_id
                endpoints = {
                    "show": (f"/v1/{p}/cloudservers/{server_ids[len(server_ids) // 2]}", ""),
                    "list_all": (f"/v1/{p}/cloudservers/detail", f"limit={args.servers}"),
                    "list_20": (f"/v1/{p}/cloudservers/detail", "limit=20"),
                }
                bodies = {name: fetch(controller, path, q) for name, (path, q) in endpoints.items()}
                assert bodies["list_all"]["count"] == args.servers, bodies["list_all"]["count"]
                bare = bare_app(bodies["show"], {args.servers: bodies["list_all"], 20: bodies["list_20"]})
                bare_url, stop_bare = serve_in_thread(bare, "bench-bare")
                try:
                    results = measure(controller, bare_url, endpoints, bodies, args)
                finally:
                    stop_bare()
                cold = {name: cold_ms(controller, path, q) for name, (path, q) in endpoints.items()}
            finally:
                fleet.send_signal(signal.SIGTERM)
                fleet.wait(timeout=120)
        finally:
            controller.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, populate_s, results, cold)


def cold_ms(controller: Controller, path: str, query: str) -> float:
    """Median latency (ms) of one signed GET right after the project's view stamp moved, as any write moves it."""
    latencies = []
    bump = text("UPDATE view_stamp SET version = version + 1 WHERE project_id = :p")
    for _ in range(COLD_SAMPLES):
        with controller.ctx.engine.begin() as conn:
            conn.execute(bump, {"p": controller.project_id})
        began = time.perf_counter()
        fetch(controller, path, query)
        latencies.append((time.perf_counter() - began) * 1000)
    return median(latencies)


def measure(
    controller: Controller,
    bare_url: str,
    endpoints: dict[str, tuple[str, str]],
    bodies: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every endpoint on both targets, alternating, `args.rounds` times; checks the bare JSON is the same."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        n: {"controller": [], "bare": []} for n in endpoints
    }
    creds = (controller.ak, controller.sk, controller.project_id)
    bare_controller = Controller(bare_url, controller.ctx, *creds, stop=lambda: None)
    for name, (path, query) in endpoints.items():
        assert fetch(bare_controller, path, query) == bodies[name], f"the bare {name} answers other JSON"
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as load:
        for _ in range(args.rounds):
            for name, (path, query) in endpoints.items():
                for kind, url in (("controller", controller.url), ("bare", bare_url)):
                    target = Target(url, path, query, *creds)
                    cpu = time.process_time()  # this process serves both targets; the load runs elsewhere
                    figures = load.submit(run_load, target, args.concurrency, args.seconds).result()
                    figures["server_cpu_ms"] = (
                        (time.process_time() - cpu) * 1000 / max(1, figures["requests"])
                    )
                    results[name][kind].append(figures)
                    print(
                        f"  {name:8} {kind:10} {figures['per_s']:7.0f}/s p50 {figures['p50_ms']:6.1f} ms "
                        f"p99 {figures['p99_ms']:6.1f} ms, server CPU {figures['server_cpu_ms']:.2f} ms/request "
                        f"({figures['errors']} errors)",
                        file=sys.stderr,
                    )
    return results


def report(
    args: argparse.Namespace,
    populate_s: float,
    results: dict[str, dict[str, list[dict[str, Any]]]],
    cold: dict[str, float],
) -> None:
    summary: dict[str, Any] = {
        "servers": args.servers,
        "concurrency": args.concurrency,
        "seconds_per_measurement": args.seconds,
        "rounds": args.rounds,
        "populate_s": round(populate_s, 1),
    }
    labels = {
        "show": "show server",
        "list_all": f"list servers ({args.servers})",
        "list_20": "list 20 servers",
    }
    ratios = []
    for name, by_kind in results.items():
        best = {kind: max(runs, key=lambda r: r["per_s"]) for kind, runs in by_kind.items()}
        errors = sum(r["errors"] for runs in by_kind.values() for r in runs)
        ratio = best["controller"]["per_s"] / best["bare"]["per_s"]
        ratios.append(ratio)
        c, b = best["controller"], best["bare"]
        # Server CPU per request (median over rounds) does not depend on how busy the shared machine was.
        cpu = {kind: median([r["server_cpu_ms"] for r in runs]) for kind, runs in by_kind.items()}
        cpu_ratio = cpu["bare"] / cpu["controller"]
        print(
            f"{labels[name]}: controller {c['per_s']:.0f}/s (p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms), "
            f"bare FastAPI {b['per_s']:.0f}/s (p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms), "
            f"ratio {ratio:.2f} (bar ≥ {BAR_RATIO}); server CPU {cpu['controller']:.2f} vs {cpu['bare']:.2f} "
            f"ms/request, ratio {cpu_ratio:.2f}{'' if not errors else f'; {errors} non-200 answers'}; "
            f"cold (after a write) {cold[name]:.1f} ms"
        )
        summary[name] = {
            "controller_per_s": round(c["per_s"], 1),
            "controller_p50_ms": round(c["p50_ms"], 2),
            "controller_p99_ms": round(c["p99_ms"], 2),
            "bare_per_s": round(b["per_s"], 1),
            "bare_p50_ms": round(b["p50_ms"], 2),
            "bare_p99_ms": round(b["p99_ms"], 2),
            "ratio": round(ratio, 2),
            "controller_cpu_ms": round(cpu["controller"], 2),
            "bare_cpu_ms": round(cpu["bare"], 2),
            "cpu_ratio": round(cpu_ratio, 2),
            "errors": errors,
            "cold_ms": round(cold[name], 2),
            "controller_per_s_median_of_rounds": round(
                median([r["per_s"] for r in by_kind["controller"]]), 1
            ),
        }
    summary["min_ratio"] = round(min(ratios), 2) if ratios else None
    summary["min_cpu_ratio"] = min((summary[n]["cpu_ratio"] for n in results), default=None)
    summary["bar_met"] = bool(ratios) and min(ratios) >= BAR_RATIO
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
