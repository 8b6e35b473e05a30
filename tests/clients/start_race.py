"""One of two processes that start endpoint NAME's daemon at the same instants.
Usage: start_race.py NAME ROUNDS PERIOD T0 OUT
Round k starts at T0 + k * PERIOD (time.time()): the daemon's start-up
(faas.endpoint.daemon.run, what ``python -m faas.endpoint.daemon`` runs)
either refuses (another daemon holds the endpoint) or gets as far as starting
its engine, which here records that it runs and holds on until the round's end
instead of starting Parsl. Appends "round pid won|refused start end" lines to OUT."""

import sys
import time

from faas.endpoint import daemon
from faas.errors import EndpointError
from faas.home import EndpointDir

name, rounds, period, t0, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]


class Held(Exception):
    pass


def running_until(end: float):
    def engine(config, run_dir):
        won = time.time()
        time.sleep(max(0.0, end - time.time()))
        raise Held(won)

    return engine


with open(out, "a") as log:
    for k in range(rounds):
        start_at = t0 + k * period
        time.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        try:
            daemon.run(EndpointDir.of(name), engine_factory=running_until(start_at + 0.6 * period))
        except Held as e:
            log.write(f"{k} won {started} {e.args[0]} {time.time()}\n")
        except EndpointError as e:
            assert "already running" in str(e), e
            log.write(f"{k} refused {started} {time.time()} {time.time()}\n")
        log.flush()
