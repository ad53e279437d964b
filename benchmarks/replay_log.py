"""A synthetic Log file for the replay benchmarks (bench_replay.py).

    .venv/bin/python benchmarks/replay_log.py OUT.log [EVENTS]

writes EVENTS (default 10^6) allocate and free lines in the format a
memmanager.Log writes (docs/allocators.md, "Log and replay"), straight
from Python, with a fixed seed, so every run replays the same program:

- sizes: nine allocations in ten small (16 B - 4 KiB), about one in ten
  medium (64 KiB - 1 MiB), one in five hundred large (4 - 64 MiB), each
  band log-uniform;
- a bounded live set: at most LIVE_SMALL small, LIVE_MEDIUM medium and
  LIVE_LARGE large blocks at once (so at most about 330 MiB live); below
  those, allocations and frees come about equally often, and a free takes
  a random live block, recent ones likelier (most blocks die young);
- the blocks still live at the end are freed, so the log ends empty.

The addresses are made up (each allocation a fresh one): replay maps them
to its own blocks.
"""

import math
import random
import sys

HEADER = "# memmanager-log 1 time_ns pid tid event size address allocator\n"
LIVE_SMALL, LIVE_MEDIUM, LIVE_LARGE = 4096, 64, 4
BANDS = [  # (share of allocations, low, high, most live at once)
    (0.898, 16, 4 << 10, LIVE_SMALL),
    (0.100, 64 << 10, 1 << 20, LIVE_MEDIUM),
    (0.002, 4 << 20, 64 << 20, LIVE_LARGE),
]
SEED = 20240614


def _pick_band(rng):
    r = rng.random()
    for i, (share, *_rest) in enumerate(BANDS):
        if r < share:
            return i
        r -= share
    return len(BANDS) - 1


def write_log(path, events=10**6, seed=SEED, allocator="Synthetic"):
    """Writes the log; returns (events, allocations, peak_bytes)."""
    rng = random.Random(seed)
    live = [[] for _ in BANDS]          # per band: [(address, size)], oldest first
    live_bytes = peak = allocations = 0
    next_address = 0x7f0000000000
    time_ns = 10**12
    lines = [HEADER]
    tail = f" {allocator}\n"
    written = 0
    with open(path, "w") as f:
        def free_one(band):
            nonlocal live_bytes, time_ns
            blocks = live[band]
            # Recent blocks die likelier: an index skewed to the end.
            i = len(blocks) - 1 - int(len(blocks) * rng.random() ** 3)
            address, size = blocks.pop(i)
            live_bytes -= size
            time_ns += 37
            lines.append(f"{time_ns} 1 1 f {size} {address:#x}{tail}")

        while written < events:
            count = sum(len(b) for b in live)
            band = _pick_band(rng)
            full = len(live[band]) >= BANDS[band][3]
            remaining = events - written
            if count >= remaining or (count and (full or rng.random() < 0.5)):
                if count >= remaining or not full:
                    r = int(rng.random() * count)
                    band = 0
                    while r >= len(live[band]):
                        r -= len(live[band])
                        band += 1
                free_one(band)
            else:
                _, low, high, _ = BANDS[band]
                size = int(math.exp(rng.uniform(math.log(low), math.log(high))))
                address = next_address
                next_address += (size + 4095) & ~4095
                live[band].append((address, size))
                live_bytes += size
                peak = max(peak, live_bytes)
                allocations += 1
                time_ns += 53
                lines.append(f"{time_ns} 1 1 a {size} {address:#x}{tail}")
            written += 1
            if len(lines) >= 65536:
                f.write("".join(lines))
                lines.clear()
        f.write("".join(lines))
    return written, allocations, peak


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.splitlines()[2])
    n = int(sys.argv[2]) if len(sys.argv) == 3 else 10**6
    print("events %d, allocations %d, peak %d bytes" % write_log(sys.argv[1], n))
