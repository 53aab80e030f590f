"""Scheduler decisions per second with 1,000 simulated hosts and 10,000 servers, and never an over-commit.

Starts a real controller (uvicorn, SQLite, in this process) and a fleet of simulated hosts (`agent.sim`: real
agent apps over libvirt's test driver, all in one process of their own) that register and heartbeat over HTTP,
then measures three things:

  * pure: `controller.scheduler.schedule` over the registered hosts' candidates, placing `--servers` requests
    of a seeded random mix of the default flavors and root disks one after another, each decision seeing the
    claims before it (per wall-clock second and per CPU-second of the deciding thread: the machine is shared);
  * claim: the create job's whole claim path, `controller.services.servers.claim_host` (one transaction: read
    the hosts with their usage counters, schedule, add the claim to the chosen host with a conditional UPDATE,
    write the server's host), for `--servers` BUILD rows in a database holding the same hosts, from
    `--claim-threads` threads at once like the job workers; afterwards every host's counters must equal the
    usage summed from the servers;
  * api: `--api-servers` servers created through the real API with the official SDK (20 per request, 4
    callers, in a security group no rule names, so no group pushes fan out), placed by the controller's jobs
    onto the simulated hosts, each checked to be a running domain on its host (its agent's `GET /v1/host`);
    timed from the first create call until every job has ended.

After each part it checks every host's claimed vCPUs, RAM and disk against capacity x overcommit ratio. Prints
the figures; the last line is one JSON object.

    .venv/bin/python -m bench.scheduler --hosts 1000 --servers 10000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from huaweicloudsdkecs.v2 import (
    CreatePostPaidServersRequest,
    CreatePostPaidServersRequestBody,
    PostPaidServer,
    PostPaidServerNic,
    PostPaidServerRootVolume,
    PostPaidServerSecurityGroup,
    ShowJobRequest,
)
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from agent.sim import SimCapacity
from bench.support import Controller, make_seed_image, open_network, start_controller, start_fleet
from controller.config import Settings
from controller.main import build_context
from controller.models.common import utcnow
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.server import Server
from controller.scheduler import HostCandidate, NoValidHost, PlacementRequest, SchedulerPolicy, schedule
from controller.services.flavors import DEFAULT_FLAVORS
from controller.services.servers import claim_host, host_candidates
from controller.state import DELETED, transition

BAR_DECISIONS_PER_S = 2000.0
# Sized so that 10,000 servers of the default flavor mix fill 1,000 hosts to ~90 % of their RAM: the last
# placements squeeze into what is left, which is where an over-commit would show.
CAPACITY = SimCapacity(vcpus=16, memory_mib=28 * 1024, disk_gib=400)
PER_REQUEST = 20  # the controller's max_servers_per_request


@dataclasses.dataclass(frozen=True)
class Ask:
    flavor_id: str
    vcpus: int
    ram_mib: int
    disk_gib: int


def workload(count: int, seed: int) -> list[Ask]:
    rng = random.Random(seed)
    asks = []
    for _ in range(count):
        fid, vcpus, ram = rng.choice(DEFAULT_FLAVORS)
        asks.append(Ask(fid, vcpus, ram, rng.choice((10, 20, 40, 60))))
    return asks


def overcommitted(
    usage: dict[str, tuple[int, int, int]], hosts: list[Host], policy: SchedulerPolicy
) -> list[str]:
    """Every host whose claimed vCPUs/RAM/disk exceed its capacity x the overcommit ratio, said in words."""
    bad = []
    for host in hosts:
        vcpus, ram, disk = usage.get(host.id, (0, 0, 0))
        limits = (
            host.vcpus * policy.cpu_allocation_ratio,
            host.memory_mib * policy.ram_allocation_ratio,
            host.disk_gib * policy.disk_allocation_ratio,
        )
        if vcpus > limits[0] or ram > limits[1] or disk > limits[2]:
            bad.append(f"{host.id}: claims {vcpus} vCPUs/{ram} MiB/{disk} GiB, limits {limits}")
    return bad


def claimed_usage(session: Session) -> dict[str, tuple[int, int, int]]:
    """Per host, what the live servers claiming it use: read back from the database, not from the bench."""
    rows = session.exec(
        select(
            Server.host_id,
            func.sum(Flavor.vcpus),
            func.sum(Flavor.ram_mib),
            func.sum(Server.root_volume_size),
        )
        .join(Flavor, col(Flavor.id) == col(Server.flavor_id))
        .where(col(Server.host_id).is_not(None), Server.status != DELETED)
        .group_by(col(Server.host_id))
    ).all()
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


# --- pure ---


def bench_pure(controller: Controller, asks: list[Ask], policy: SchedulerPolicy) -> dict[str, Any]:
    with Session(controller.ctx.engine) as session:
        hosts = list(session.exec(select(Host)).all())
        candidates = host_candidates(hosts)
    index = {c.id: i for i, c in enumerate(candidates)}
    placed = refused = 0
    cpu_started = time.thread_time()  # this thread's CPU: what the decisions cost however busy the machine is
    started = time.perf_counter()
    for ask in asks:
        result = schedule(PlacementRequest(ask.vcpus, ask.ram_mib, ask.disk_gib), candidates, policy)
        if isinstance(result, NoValidHost):
            refused += 1
            continue
        i = index[result]
        c = candidates[i]
        candidates[i] = dataclasses.replace(
            c,
            used_vcpus=c.used_vcpus + ask.vcpus,
            used_ram_mib=c.used_ram_mib + ask.ram_mib,
            used_disk_gib=c.used_disk_gib + ask.disk_gib,
            servers=c.servers + 1,
        )
        placed += 1
    elapsed = time.perf_counter() - started
    cpu = time.thread_time() - cpu_started
    usage = {c.id: (c.used_vcpus, c.used_ram_mib, c.used_disk_gib) for c in candidates}
    return {
        "decisions": len(asks),
        "placed": placed,
        "no_valid_host": refused,
        "seconds": elapsed,
        "per_s": len(asks) / elapsed,
        "per_cpu_s": len(asks) / cpu if cpu > 0 else float("inf"),
        "overcommitted": overcommitted(usage, hosts, policy),
        "ram_used_pct": _ram_used_pct(candidates),
    }


def _ram_used_pct(candidates: list[HostCandidate]) -> float:
    total = sum(c.memory_mib for c in candidates)
    return 100.0 * sum(c.used_ram_mib for c in candidates) / total if total else 0.0


# --- claim ---


def bench_claims(
    controller: Controller, asks: list[Ask], threads: int, workdir: Path, policy: SchedulerPolicy
) -> dict[str, Any]:
    """`claim_host` for every ask, on a database of its own holding the fleet's hosts as they registered."""
    settings = Settings(
        home=workdir / "claims",
        seed_image=None,
        database_url=None,
        host_dead_seconds=controller.ctx.settings.host_dead_seconds,
    )
    ctx = build_context(settings)
    with Session(controller.ctx.engine) as source:
        hosts = list(source.exec(select(Host)).all())
        flavors = list(source.exec(select(Flavor)).all())
    task = transition("create").task_state
    with Session(ctx.engine) as session:
        for row in [*hosts, *flavors]:
            session.merge(row)
        ids = []
        for i, ask in enumerate(asks):
            server = Server(
                project_id="bench",
                name=f"claim-{i}",
                flavor_id=ask.flavor_id,
                image_id="bench-image",
                availability_zone=settings.default_availability_zone,
                vpc_id="bench-vpc",
                root_volume_size=ask.disk_gib,
                task_state=task,
            )
            session.add(server)
            ids.append(server.id)
        session.commit()
    work: queue.SimpleQueue[str] = queue.SimpleQueue()
    for sid in ids:
        work.put(sid)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def claimer() -> None:
        while True:
            try:
                sid = work.get_nowait()
            except queue.Empty:
                return
            # The heartbeats of the copied hosts do not advance here: keep them fresh for the whole run.
            claim = claim_host(ctx, sid, any_zone=True)
            with lock:
                outcomes.append(claim.host_id is not None)

    with FreshHeartbeats(ctx):
        started = time.perf_counter()
        workers = [threading.Thread(target=claimer, name=f"claim-{n}") for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
    with Session(ctx.engine) as session:
        usage = claimed_usage(session)
        placed_rows = int(session.exec(select(func.count()).where(col(Server.host_id).is_not(None))).one())
        claimed = list(session.exec(select(Host)).all())
    ctx.engine.dispose()
    return {
        "claims": len(ids),
        "placed": sum(outcomes),
        "no_valid_host": len(outcomes) - sum(outcomes),
        "placed_rows": placed_rows,
        "threads": threads,
        "seconds": elapsed,
        "per_s": len(ids) / elapsed,
        "overcommitted": overcommitted(usage, hosts, policy),
        "counters_off": counters_off(usage, claimed),
    }


class FreshHeartbeats:
    """Refreshes every host's heartbeat every few seconds while the claims run, as their agents would."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="claim-heartbeats", daemon=True)

    def _touch(self) -> None:
        with Session(self.ctx.engine) as session:
            session.exec(update(Host).values(last_heartbeat=utcnow()))  # type: ignore[call-overload]
            session.commit()

    def _run(self) -> None:
        while not self.stop.wait(5.0):
            self._touch()

    def __enter__(self) -> None:
        self._touch()
        self.thread.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()


# --- through the API ---


def bench_api(controller: Controller, count: int, seed: int, policy: SchedulerPolicy) -> dict[str, Any]:
    from controller.models.image import Image

    with Session(controller.ctx.engine) as session:
        image_id = session.exec(select(Image.id).where(col(Image.owner).is_(None))).one()
    vpc_id, subnet_id, group_id = open_network(controller, count)
    rng = random.Random(seed)
    small = [f for f in DEFAULT_FLAVORS if f[2] <= 1024]  # the API part shows placement, not packing
    batches = [min(PER_REQUEST, count - i) for i in range(0, count, PER_REQUEST)]

    def create(n_batch: tuple[int, int]) -> tuple[str, list[str]]:
        n, size = n_batch
        body = PostPaidServer(
            image_ref=image_id,
            flavor_ref=rng.choice(small)[0],
            name=f"bench-{n}",
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

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        created = list(pool.map(create, enumerate(batches)))
    accepted = time.perf_counter() - started
    ecs = controller.ecs()
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + 3600
    for job_id, _ in created:
        while True:
            job = ecs.show_job(ShowJobRequest(job_id=job_id))
            if job.status in ("SUCCESS", "FAIL"):
                statuses[job_id] = job.status
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status}")
            time.sleep(0.2)
    elapsed = time.perf_counter() - started
    server_ids = [sid for _, sids in created for sid in sids]
    with Session(controller.ctx.engine) as session:
        rows = {s.id: s for s in session.exec(select(Server).where(col(Server.id).in_(server_ids))).all()}
        usage = claimed_usage(session)
        hosts = list(session.exec(select(Host)).all())
    active = [s for s in rows.values() if s.status == "ACTIVE"]
    # Each ACTIVE server is a running domain on the simulated host it was placed on, as that host's agent API
    # reports it (the heartbeat's own `GET /v1/host`), and nowhere else.
    running: dict[str, str] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {controller.ctx.join_token}"}, timeout=60) as http:
        for host in hosts:
            info = http.get(f"{host.url}/v1/host").raise_for_status().json()
            for state in info["servers"]:
                if state["power"] == "running":
                    running[state["id"]] = host.id
    misplaced = [s.id for s in active if running.get(s.id) != s.host_id]
    return {
        "servers": count,
        "requests": len(batches),
        "active": len(active),
        "failed_jobs": sum(1 for s in statuses.values() if s != "SUCCESS"),
        "hosts_used": len({s.host_id for s in active}),
        "domains_running": len(running),
        "not_running_where_placed": misplaced,
        "accept_seconds": accepted,
        "seconds": elapsed,
        "per_s": count / elapsed,
        "overcommitted": overcommitted(usage, hosts, policy),
        "counters_off": counters_off(usage, hosts),
    }


def counters_off(usage: dict[str, tuple[int, int, int]], hosts: list[Host]) -> list[str]:
    """Hosts whose usage counters (`claimed_*`) differ from the usage summed from their servers."""
    return [
        h.id
        for h in hosts
        if (h.claimed_vcpus, h.claimed_ram_mib, h.claimed_disk_gib) != usage.get(h.id, (0, 0, 0))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=10000, help="decisions for the pure and claim parts")
    parser.add_argument(
        "--api-servers", type=int, help="servers created through the API (min(1000, servers))"
    )
    parser.add_argument("--claim-threads", type=int, default=4)
    parser.add_argument("--heartbeat-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--parts", default="pure,claim,api", help="which parts to run (comma-separated)")
    args = parser.parse_args()
    api_servers = args.api_servers if args.api_servers is not None else min(1000, args.servers)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    policy = SchedulerPolicy()
    pure: dict[str, Any] = {}
    claims: dict[str, Any] = {}
    api: dict[str, Any] = {}
    try:
        image = make_seed_image(workdir / "image")
        controller = start_controller(
            workdir / "controller", seed_image=image, host_dead_seconds=4 * args.heartbeat_seconds
        )
        policy = SchedulerPolicy(host_dead_seconds=controller.ctx.settings.host_dead_seconds)
        try:
            t0 = time.perf_counter()
            fleet = start_fleet(controller, workdir / "fleet", args.hosts, CAPACITY, args.heartbeat_seconds)
            registered = time.perf_counter() - t0
            print(f"{args.hosts} simulated hosts registered in {registered:.1f} s", file=sys.stderr)
            try:
                asks = workload(args.servers, args.seed)
                parts = set(args.parts.split(","))
                if "pure" in parts:
                    pure = bench_pure(controller, asks, policy)
                    print(f"pure: {pure['per_s']:.0f} decisions/s", file=sys.stderr)
                if "claim" in parts:
                    claims = bench_claims(controller, asks, args.claim_threads, workdir, policy)
                    print(f"claim: {claims['per_s']:.0f} claims/s", file=sys.stderr)
                if "api" in parts:
                    api = bench_api(controller, api_servers, args.seed, policy)
            finally:
                fleet.send_signal(signal.SIGTERM)
                fleet.wait(timeout=120)
        finally:
            controller.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, registered, pure, claims, api)


def report(
    args: argparse.Namespace,
    registered: float,
    pure: dict[str, Any],
    claims: dict[str, Any],
    api: dict[str, Any],
) -> None:
    """Print the figures of the parts that ran; the last line is one JSON object."""
    result: dict[str, Any] = {
        "hosts": args.hosts,
        "servers": args.servers,
        "host_registration_s": round(registered, 2),
    }
    print(
        f"hosts: {args.hosts} simulated ({CAPACITY.vcpus} vCPUs, {CAPACITY.memory_mib} MiB, "
        f"{CAPACITY.disk_gib} GiB each), registered over HTTP in {registered:.1f} s"
    )
    over: list[str] = []
    if pure:
        print(
            f"pure scheduler: {pure['decisions']} decisions in {pure['seconds']:.2f} s = {pure['per_s']:.0f}/s, "
            f"{pure['per_cpu_s']:.0f} per CPU-second (bar ≥ {BAR_DECISIONS_PER_S:.0f}), "
            f"{pure['placed']} placed, {pure['no_valid_host']} no valid "
            f"host, RAM {pure['ram_used_pct']:.0f} % claimed, {len(pure['overcommitted'])} hosts over-committed"
        )
        over += pure["overcommitted"]
        result["pure_decisions_per_s"] = round(pure["per_s"])
        result["pure_decisions_per_cpu_s"] = round(pure["per_cpu_s"])
        result["pure_no_valid_host"] = pure["no_valid_host"]
        result["ratio_pure_vs_bar"] = round(pure["per_s"] / BAR_DECISIONS_PER_S, 2)
        result["ratio_pure_cpu_vs_bar"] = round(pure["per_cpu_s"] / BAR_DECISIONS_PER_S, 2)
    if claims:
        print(
            f"claim path (claim_host, {claims['threads']} threads, SQLite): {claims['claims']} claims in "
            f"{claims['seconds']:.1f} s = {claims['per_s']:.0f}/s, {claims['placed']} placed, "
            f"{claims['no_valid_host']} no valid host, {len(claims['overcommitted'])} hosts over-committed, "
            f"{len(claims['counters_off'])} hosts whose usage counters differ from their servers' usage"
        )
        over += claims["overcommitted"]
        over += [f"{h}: usage counters differ from the servers' usage" for h in claims["counters_off"]]
        result["claim_per_s"] = round(claims["per_s"], 1)
        result["claim_threads"] = claims["threads"]
        result["claim_no_valid_host"] = claims["no_valid_host"]
        result["claim_counters_off"] = len(claims["counters_off"])
        if pure:
            result["ratio_claim_vs_pure"] = round(claims["per_s"] / pure["per_s"], 4)
    if api:
        print(
            f"through the API: {api['servers']} servers in {api['requests']} SDK creates → {api['active']} "
            f"ACTIVE on {api['hosts_used']} hosts in {api['seconds']:.1f} s = {api['per_s']:.1f} servers/s "
            f"(accepted in {api['accept_seconds']:.1f} s); {api['domains_running']} domains running in the "
            f"test drivers, {len(api['not_running_where_placed'])} not where the database placed them, "
            f"{len(api['overcommitted'])} hosts over-committed, {len(api['counters_off'])} hosts whose usage "
            "counters differ from their servers' usage"
        )
        over += api["overcommitted"]
        over += [f"{h}: usage counters differ from the servers' usage" for h in api["counters_off"]]
        result.update(
            api_servers=api["servers"],
            api_active=api["active"],
            api_failed_jobs=api["failed_jobs"],
            api_servers_per_s=round(api["per_s"], 2),
            api_hosts_used=api["hosts_used"],
            api_counters_off=len(api["counters_off"]),
            api_domains_running=api["domains_running"],
        )
    for line in over[:10]:
        print(f"  over-committed: {line}")
    result["never_overcommitted"] = not over
    print(json.dumps(result))


if __name__ == "__main__":
    main()
