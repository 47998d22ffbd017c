"""Checkout traffic against ``settlement serve``: Quote, Settle, Refund and member lookups.

    .venv/bin/locust -f bench/locust/locustfile.py --headless -H 127.0.0.1:50051 \
        -u 16 -r 4 -t 60s --csv bench/results/locust --token-file TOKEN_FILE

Each user is a till of the bench store (bench/locust/seed.py seeds the members and the
terminal): Zipf-skewed members, baskets of 1-50 lines, coupons, points and stored value
(bench/locust/workload.py), every mutating call with its own idempotency key. Options
(each also an environment variable, shown in ``locust --help``): ``--token`` /
``--token-file`` (the POS terminal's token), ``--members``, ``--zipf``,
``--workload-seed``, ``--weights quote=70,settle=25,refund=2,member=3``,
``--think-time`` (seconds between a user's calls, drawn uniformly from 0 to it).
README.md here has the rest.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import sys
import uuid
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from locust import events  # noqa: E402
from locust.env import Environment  # noqa: E402

from bench.locust.grpc_user import GrpcUser  # noqa: E402  (runs init_gevent)
from bench.locust.workload import DEFAULT_WEIGHTS, Checkouts, parse_weights  # noqa: E402
from settlement.v1 import settlement_pb2 as pb  # noqa: E402
from settlement.v1 import settlement_pb2_grpc as pb_grpc  # noqa: E402
from settlement_pos import basket  # noqa: E402

RUN = uuid.uuid4().hex[:10]
"""Prefix of this process's idempotency keys: unique across runs and processes."""
_USER_NUMBERS = itertools.count()


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("settlement checkout workload")
    group.add_argument("--token", env_var="SETTLEMENT_TOKEN", default="",
                       help="POS terminal token(s), comma-separated; users spread over them")
    group.add_argument("--token-file", env_var="SETTLEMENT_TOKEN_FILE", default="",
                       help="file of POS terminal tokens, one per line (bench/locust/seed.py)")
    group.add_argument("--members", type=int, env_var="LOCUST_MEMBERS", default=2000,
                       help="members seeded (bench/locust/seed.py --members)")
    group.add_argument("--zipf", type=float, env_var="LOCUST_ZIPF", default=1.0,
                       help="Zipf exponent of member activity")
    group.add_argument("--workload-seed", type=int, env_var="LOCUST_WORKLOAD_SEED", default=7,
                       help="seed of the activity ranks (seed.py --seed)")
    group.add_argument("--weights", env_var="LOCUST_WEIGHTS",
                       default=",".join(f"{k}={v}" for k, v in DEFAULT_WEIGHTS.items()),
                       help="task weights, e.g. quote=70,settle=25,refund=2,member=3")
    group.add_argument("--think-time", type=float, env_var="LOCUST_THINK_TIME", default=0.0,
                       help="seconds between a user's calls, uniform in [0, this]")


def _tokens(options: Any) -> list[str]:
    """The terminals' tokens, read once per process (not once per user)."""
    return _read_tokens(str(options.token or ""), str(options.token_file or ""))


@functools.cache
def _read_tokens(token: str, token_file: str) -> list[str]:
    if token:
        tokens = token.split(",")
    elif token_file:
        tokens = Path(token_file).read_text().split()
    else:
        raise SystemExit("locustfile: give --token or --token-file (or SETTLEMENT_TOKEN)")
    tokens = [t.strip() for t in tokens if t.strip()]
    if not tokens:
        raise SystemExit("locustfile: no token in --token / --token-file")
    return tokens


class CheckoutUser(GrpcUser):
    """A till: the task mix of ``--weights`` over the checkout workload."""

    tasks: Any = []  # weighted_tasks(): DEFAULT_WEIGHTS below, --weights in _configure

    def on_start(self) -> None:
        """Stubs, token, this user's random stream and key prefix."""
        options = self.environment.parsed_options
        self.settlements = pb_grpc.SettlementServiceStub(self.channel)
        self.members_stub = pb_grpc.MemberServiceStub(self.channel)
        number = next(_USER_NUMBERS)
        tokens = _tokens(options)
        self.metadata = (("authorization",
                          f"Bearer {tokens[self._till(number) % len(tokens)]}"),)
        self.rng = random.Random(f"{RUN}-{number}")
        self.keys = (f"{RUN}-{os.getpid()}-{number}-{n}" for n in itertools.count())
        self.workload = _workload(options)
        self.settled: deque[tuple[str, int]] = deque(maxlen=50)

    def _till(self, number: int) -> int:
        """This user's till number over all ``--processes`` workers: user n of worker w is
        till n * workers + w, so the users of a run take distinct terminals in turn."""
        workers = int(getattr(self.environment.parsed_options, "processes", None) or 1)
        if workers < 0:  # --processes -1: one per core
            workers = os.cpu_count() or 1
        return number * workers + int(getattr(self.environment.runner, "worker_index", 0))

    def wait_time(self) -> float:
        """Seconds to wait between calls: uniform in [0, --think-time] (0: none)."""
        think = float(self.environment.parsed_options.think_time)
        return self.rng.uniform(0.0, think) if think > 0 else 0.0

    def _call(self, method: Any, request: Any) -> Any:
        """The call; a refusal is already in locust's statistics (the interceptor), so it
        only ends this task."""
        try:
            return method(request, timeout=30, metadata=self.metadata)
        except grpc.RpcError:
            return None

    def quote(self) -> None:
        """Quote a basket (the till prices while scanning)."""
        self._call(self.settlements.Quote,
                   pb.QuoteRequest(basket=basket(self.workload.basket(self.rng))))

    def settle(self) -> None:
        """Settle a basket under a new idempotency key; remember it for a refund."""
        spec = self.workload.basket(self.rng)
        done = self._call(self.settlements.Settle, pb.SettleRequest(
            idempotency_key=next(self.keys), basket=basket(spec)))
        if done is not None:
            self.settled.append((done.settlement_id, len(spec["lines"])))

    def refund(self) -> None:
        """Refund one unit of a line of one of this till's settlements (settle first when
        it has none)."""
        if not self.settled:
            self.settle()
            return
        settlement_id, lines = self.settled.popleft()
        self._call(self.settlements.Refund, pb.RefundRequest(
            idempotency_key=next(self.keys), settlement_id=settlement_id,
            lines=[pb.RefundLine(line_no=self.rng.randrange(lines), quantity=1)]))

    def member(self) -> None:
        """Look a member up (a scanned card or a member id); now and then list coupons."""
        who = self.workload.lookup(self.rng)
        if self.rng.random() < 0.25 and "member_id" in who:
            self._call(self.members_stub.ListCoupons,
                       pb.ListCouponsRequest(member_id=who["member_id"], page_size=50))
        else:
            self._call(self.members_stub.GetMember, pb.GetMemberRequest(**who))


_WORKLOADS: dict[tuple[int, float, int], Checkouts] = {}


def _workload(options: Any) -> Checkouts:
    """One Checkouts per process and setting (the catalogue and Zipf table are shared)."""
    key = (options.members, options.zipf, options.workload_seed)
    if key not in _WORKLOADS:
        _WORKLOADS[key] = Checkouts(options.members, options.zipf, options.workload_seed)
    return _WORKLOADS[key]


def weighted_tasks(weights: dict[str, int]) -> list[Any]:
    """locust's task list for ``weights``: each task repeated by its weight."""
    by_name = {"quote": CheckoutUser.quote, "settle": CheckoutUser.settle,
               "refund": CheckoutUser.refund, "member": CheckoutUser.member}
    return [by_name[name] for name, weight in weights.items() for _ in range(weight)]


CheckoutUser.tasks = weighted_tasks(DEFAULT_WEIGHTS)


@events.init.add_listener
def _configure(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    weights = parse_weights(options.weights) if options is not None else DEFAULT_WEIGHTS
    CheckoutUser.tasks = weighted_tasks(weights)
