"""Turn a pytest-benchmark JSON file into ratios, tables and a plot.

A benchmark whose subject starts with "memmanager:" is ours; every other
benchmark of its group is a peer (or only the ones of ours it names).
Each row is one of ours against one peer.  With several repeats, each
repeat gives a ratio (our median / the peer's median, both measured
moments apart) and the row shows the median of those ratios and their
range; the times shown are the medians over the repeats.
"""

import json
import os
import re
import statistics
from dataclasses import dataclass
from typing import Optional

OURS = "memmanager:"


@dataclass(frozen=True)
class Target:
    operation: str        # as the targets table names it
    group: str            # a group name, or its prefix (every size)
    ours: Optional[str]   # our subject without "memmanager:"; None: any
    peer: str
    limit: float
    kind: str = "design"  # "design": the design's targets; "bar": this suite's own
    exclude: tuple = ()   # ours that `ours=None` does not cover


# The design's performance targets, and the bars the suite set itself for
# the rows the design does not name.  A row matches the first target whose
# group prefix, subject and peer fit.
TARGETS = [
    Target("create + destroy a 64-byte buffer", "create+destroy 64B", "PyAlloc",
           "bytearray", 1.5),
    Target("create + destroy a 64-byte buffer", "create+destroy 64B", "PyAlloc",
           "numpy.empty", 1.0),
    Target("64 MiB zero-filled buffer", "zero-filled 64MiB", "PyAlloc", "numpy.zeros", 1.1),
    Target("64 MiB buffer filled with one byte", "byte-filled 64MiB", "PyAlloc",
           "numpy.full", 1.05),
    Target("extract_buffer_region of 16 MiB", "copy out 16MiB", "extract_buffer_region",
           "bytes(memoryview(ba)[a:b])", 1.05),
    Target("region()", "zero-copy view", "region()", "memoryview(ba)[a:b]", 1.2),
    Target("numpy.asarray(buf)", "numpy view", "numpy.asarray(buf)",
           "numpy.frombuffer(ba)", 1.2),
    Target("consume of an address", "wrap an address", "consume(Borrowed)",
           "pyarrow.foreign_buffer", 1.0),
    Target("consume of an address", "wrap an address", "consume(Borrowed)",
           "ctypes from_address", 1.0),
    Target("create + destroy with 10^6 live buffers", "registry scaling", "10^6 live",
           "1e3 live", 1.5),
    Target("replay of a 10^6-event log through a Pool", "replay 10^6 events",
           "Pool over CMalloc", "CMalloc replay", 0.5),
    Target("create + destroy 64 B from a Pool over PyAlloc", "pool create+destroy 64B",
           "Pool(PyAlloc)", "bytearray", 1.0),
    Target("create + destroy 4 KiB from a Pool over Mmap", "pool create+destroy 4KiB",
           "Pool(Mmap)", "numpy.empty", 1.0),
    Target("create + destroy 64 MiB from a warm Pool", "pool create+destroy 64MiB",
           "Pool(Mmap) warm", "pyarrow.allocate_buffer", 1.0),
    Target("numpy.empty(64) under a memmanager allocator", "numpy.empty(64)", None,
           "NumPy default handler", 1.1),
    Target("numpy.zeros(64 MiB) under a memmanager allocator", "numpy.zeros(64 MiB)", None,
           "NumPy default handler", 1.05, exclude=("Pool(Mmap)",)),
    # The suite's own bars.
    Target("64 MiB zero-filled, every allocator", "zero-filled 64MiB", None,
           "numpy.zeros", 1.1, "bar"),
    Target("64 MiB filled with one byte, every allocator", "byte-filled 64MiB", None,
           "numpy.full", 1.05, "bar"),
    Target("take over a malloc'd block", "adopt a malloc'd block", None,
           "malloc+ctypes from_address+free", 1.5, "bar"),
    Target("consume of a buffer object", "wrap a buffer object", None,
           "memoryview(ba)", 2.0, "bar"),
    Target("consume of a buffer object", "wrap a buffer object", None,
           "numpy.frombuffer", 1.0, "bar"),
    Target("consume of a buffer object", "wrap a buffer object", None,
           "cffi ffi.from_buffer", 1.5, "bar"),
    Target("create + destroy from a Pool with 10^6 live blocks", "pool scaling",
           "Pool, 10^6 live", "Pool, 1e3 live", 1.5, "bar"),
]

# The design's targets for what is not built yet: listed, not measured.
PENDING = [
    ("MPI Send/Recv of 64 MiB Buffers between two ranks", "the same of NumPy arrays",
     ">= 0.95x bandwidth", "MPI support"),
    ("create + destroy on 2 threads, free-threaded 3.14t", "1 thread",
     ">= 1.6x throughput", "free-threading support"),
]


@dataclass
class Row:
    group: str
    ours: str
    peer: str
    ours_s: float      # median over the repeats of our median, seconds
    peer_s: float
    ratio: float       # median of the per-repeat ratios
    low: float         # their range
    high: float
    repeats: int
    target: Optional[Target]

    @property
    def verdict(self):
        if self.target is None:
            return ""
        return "ok" if self.ratio <= self.target.limit else "MISSED"


def load(path):
    """{group: {subject: {repeat: median seconds}}}, {(group, peer): only}."""
    with open(path) as f:
        data = json.load(f)
    groups, only = {}, {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        subject = info.get("subject", bench["name"])
        runs = groups.setdefault(bench["group"], {}).setdefault(subject, {})
        runs[info.get("repeat", 0)] = bench["stats"]["median"]
        if "only" in info:
            only[(bench["group"], subject)] = set(info["only"])
    return groups, only, data.get("machine_info", {})


def target_for(group, ours, peer):
    for target in TARGETS:
        if (group.startswith(target.group) and target.peer == peer
                and (target.ours == ours or (target.ours is None and ours not in target.exclude))):
            return target
    return None


def rows(groups, only):
    out = []
    for group in sorted(groups, key=group_sort_key):
        times = groups[group]
        for ours in sorted(s for s in times if s.startswith(OURS)):
            name = ours[len(OURS):]
            for peer in sorted(s for s in times if not s.startswith(OURS)):
                if name not in only.get((group, peer), {name}):
                    continue
                common = sorted(set(times[ours]) & set(times[peer]))
                if not common:
                    continue
                ratios = [times[ours][r] / times[peer][r] for r in common]
                out.append(Row(group, name, peer,
                               statistics.median(times[ours][r] for r in common),
                               statistics.median(times[peer][r] for r in common),
                               statistics.median(ratios), min(ratios), max(ratios),
                               len(common), target_for(group, name, peer)))
    return out


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def group_sort_key(group):
    """Alphabetical, but sizes in numeric order (64B before 4KiB)."""
    match = re.search(r"(\d+)(B|KiB|MiB|GiB)$", group)
    if match:
        return (group[:match.start()], int(match.group(1)) * _UNITS[match.group(2)])
    return (group, 0)


def fmt_time(seconds):
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_range(row):
    return f"{row.low:.2f}-{row.high:.2f}" if row.repeats > 1 else ""


def fmt_target(row):
    if row.target is None:
        return ""
    return f"<= {row.target.limit}x{'' if row.target.kind == 'design' else ' (bar)'}"


def target_rows(table):
    """The rows that have a target, in the order of TARGETS."""
    order = {target: i for i, target in enumerate(TARGETS)}
    return sorted((row for row in table if row.target is not None),
                  key=lambda row: (order[row.target], group_sort_key(row.group), row.ours))


def text_table(table):
    lines = [f"{'group':<26} {'memmanager':<28} {'peer':<30} {'ours':>9} {'peer':>9} "
             f"{'ratio':>6} {'range':>9}  target"]
    for row in table:
        lines.append(f"{row.group:<26} {row.ours:<28} {row.peer:<30} {fmt_time(row.ours_s):>9} "
                     f"{fmt_time(row.peer_s):>9} {row.ratio:5.2f}x {fmt_range(row):>9}  "
                     f"{fmt_target(row)} {row.verdict}".rstrip())
    return "\n".join(lines)


def summary(table):
    design = [row for row in table if row.target is not None and row.target.kind == "design"]
    bars = [row for row in table if row.target is not None and row.target.kind == "bar"]

    def missed(rows_):
        return sum(row.verdict == "MISSED" for row in rows_)
    return (f"{len(table)} ratios; design targets: {len(design) - missed(design)} held, "
            f"{missed(design)} missed; the suite's own bars: {len(bars) - missed(bars)} held, "
            f"{missed(bars)} missed")


BEGIN = "<!-- make bench writes from here to the end marker; edit the rest of the page by hand -->"
END = "<!-- end of what make bench writes -->"


def markdown(table, run_info, png_name):
    lines = [BEGIN, "", "## Results", "",
             f"Machine: {run_info['machine']}.  ",
             f"Run: {run_info['when']}, {run_info['repeats']} repeats of every benchmark"
             + ("." if run_info["seconds"] is None else f", {run_info['seconds']:.0f} s in all."),
             "",
             summary(table) + ".", "",
             "### Targets", "",
             "The design's targets, then the suite's own bars (marked *bar*). "
             "*ratio* is the median of the per-repeat ratios, *range* their spread.", "",
             "| operation | memmanager | against | target | ratio | range | |",
             "|---|---|---|---|---:|---|---|"]
    for row in target_rows(table):
        lines.append(f"| {row.target.operation} ({row.group}) | {row.ours} | {row.peer} "
                     f"| {fmt_target(row)} | {row.ratio:.2f}x | {fmt_range(row)} | {row.verdict} |")
    lines += ["", "Targets for what is not built yet (not measured):", "",
              "| operation | against | target | waits for |", "|---|---|---|---|"]
    for operation, against, limit, needs in PENDING:
        lines.append(f"| {operation} | {against} | {limit} | {needs} |")
    lines += ["", "### Every ratio", ""]
    if png_name:
        lines += [f"![memmanager's time over each peer's, every row]({png_name})", ""]
    lines += ["| group | memmanager | peer | ours | peer | ratio | range | target |",
              "|---|---|---|---:|---:|---:|---|---|"]
    for row in table:
        lines.append(f"| {row.group} | {row.ours} | {row.peer} | {fmt_time(row.ours_s)} "
                     f"| {fmt_time(row.peer_s)} | {row.ratio:.2f}x | {fmt_range(row)} "
                     f"| {fmt_target(row)} {row.verdict} |".replace("  |", " |"))
    lines += ["", END]
    return "\n".join(lines) + "\n"


def splice(page, generated):
    """The page with its generated part replaced (appended when the page
    has none yet)."""
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        return head + generated.rstrip("\n") + tail
    return page.rstrip("\n") + "\n\n" + generated


def _bars(ax, rows_, title):
    """One bar per row, from 1.0 to the ratio (left: memmanager is faster)."""
    ys = range(len(rows_))
    ratios = [row.ratio for row in rows_]
    colors = ["tab:red" if row.verdict == "MISSED" else "tab:green" if row.verdict == "ok"
              else "tab:blue" for row in rows_]
    ax.barh(ys, [r - 1 for r in ratios], left=1, color=colors)
    if any(row.repeats > 1 for row in rows_):
        ax.errorbar(ratios, ys, fmt="none", ecolor="black", elinewidth=0.6,
                    xerr=[[r.ratio - r.low for r in rows_], [r.high - r.ratio for r in rows_]])
    limits = [(row.target.limit, y) for y, row in zip(ys, rows_) if row.target is not None]
    if limits:
        ax.scatter([x for x, _ in limits], [y for _, y in limits], marker="|", s=60,
                   color="black", zorder=3, label="target")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_yticks(list(ys), [f"{row.group}: {row.ours} vs {row.peer}" for row in rows_],
                  fontsize=6)
    ax.set_ylim(len(rows_) - 0.5, -0.5)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_title(title, fontsize=9)


def plot(table, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    targeted = target_rows(table)
    others = [row for row in table if row.target is None]
    panels = [(rows_, title) for rows_, title in (
        (targeted, "rows with a target (green: held, red: missed; |: the target)"),
        (others, "every other row")) if rows_]
    heights = [len(rows_) for rows_, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, height_ratios=heights,
                             figsize=(11, 1.5 + 0.15 * sum(heights)))
    for ax, (rows_, title) in zip(axes[:, 0], panels):
        _bars(ax, rows_, title)
    axes[-1, 0].set_xlabel("memmanager's time / the peer's (log scale; left of 1: "
                           "memmanager is faster; whiskers: range over the repeats)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_outputs(table, out_dir, run_info):
    """Writes out_dir/benchmarks.png and the generated part of
    out_dir/benchmarks.md (the rest of that page is kept as it is)."""
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "benchmarks.png")
    has_plot = plot(table, png)
    page_path = os.path.join(out_dir, "benchmarks.md")
    page = ""
    if os.path.exists(page_path):
        with open(page_path) as f:
            page = f.read()
    with open(page_path, "w") as f:
        f.write(splice(page, markdown(table, run_info, "benchmarks.png" if has_plot else "")))
    return page_path
