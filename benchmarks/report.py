"""Render a benchmark JSON (from ``python -m benchmarks.run``) as markdown tables.

Usage::

    python -m benchmarks.report RESULTS.json [MORE.json ...] [--readme README.md]

Prints one table per server, with the machine the figures came from and the date. With ``--readme`` the
text between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` in that file is replaced by the same
markdown; nothing else in the file changes. Missing markers are an error (exit 1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"


def _num(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _pct(value: float) -> str:
    return f"{value * 100:.1f} %"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def machine_line(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    date = doc.get("generated_at", "")[:10]
    return (
        f"Machine: {m['cpu_model']}, {m['nproc']} vCPU, {m['memory_gib']} GiB RAM, {m.get('os', '')}, "
        f"Linux {m['kernel']}, Python {m['python']} — measured {date}."
    )


#: mpupload itself, never the peer it is compared with (kept in step with benchmarks.run.SELF).
SELF = ("mpupload", "mpupload-bar")


def _fastest(peers: dict[str, Any], selected: set[str]) -> str | None:
    """The other client with the highest median MiB/s (computed here too, so older result files render)."""
    others = {n: e["median"] for n, e in peers.items() if n in selected and n not in SELF and e.get("median")}
    return max(others, key=lambda n: others[n]["mib_s"]) if others else None


def _target_text(t: dict[str, Any]) -> str:
    unit = t.get("unit")
    if unit is None:  # result files from before the unit and operator were recorded
        unit = "%" if "cost" in t["name"] else ""
    op = t.get("op") or ("≥" if "best" in t["name"] else ("<" if unit == "%" else "≤"))
    if unit == "%":
        value, limit = _pct(t["value"]), _pct(t["limit"])
    elif unit == "×":
        value, limit = _ratio(t["value"]), _ratio(t["limit"])
    else:
        value, limit = _num(t["value"], 2), _num(t["limit"], 2)
    return f"{t['name']} {value} (target {op} {limit}): {'met' if t['met'] else 'NOT met'}"


def server_table(doc: dict[str, Any], kind: str) -> list[str]:
    srv = doc["servers"][kind]
    selected = set(doc["config"].get("peers") or srv["peers"])
    fastest = _fastest(srv["peers"], selected)
    top = srv["peers"][fastest]["median"] if fastest else None
    lines = [
        f"**{srv['label']}**",
        "",
        "| peer | wall s | MiB/s | CPU-s/GiB | peak RSS MiB | × fastest peer (speed / CPU) | checksum computed |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, entry in srv["peers"].items():
        if name not in selected:
            continue  # not asked for in this run (e.g. the memory run on a larger file)
        checksum = (entry.get("checksum") or "–").replace("|", "/")
        med = entry.get("median")
        if not med:
            reason = (entry.get("error") or "did not run").strip().splitlines()
            short = reason[-1] if reason else "did not run"
            lines.append(f"| {name} | failed: {short[:80].replace('|', '/')} | | | | | {checksum} |")
            continue
        ratio = "–"
        if top:
            cpu = med["cpu_s_per_gib"] / top["cpu_s_per_gib"] if top["cpu_s_per_gib"] else None
            ratio = f"{_ratio(med['mib_s'] / top['mib_s'])} / {_ratio(cpu)}"
        flag = "" if not entry.get("failed_runs") else f" ({entry['failed_runs']} failed)"
        lines.append(
            f"| {name}{flag} | {_num(med['wall_s'], 2)} | {_num(med['mib_s'], 0)} | "
            f"{_num(med['cpu_s_per_gib'], 2)} | {_num(med['peak_rss_mib'], 0)} | {ratio} | {checksum} |"
        )
    mine = (srv["peers"].get("mpupload") or {}).get("median")
    if top and fastest:
        summary = (f"Fastest peer: {fastest}, {_num(top['mib_s'], 0)} MiB/s at {_num(top['cpu_s_per_gib'], 2)} "
                   "CPU-s/GiB.")
        if mine and "mpupload" in selected:
            cpu = mine["cpu_s_per_gib"] / top["cpu_s_per_gib"] if top["cpu_s_per_gib"] else None
            summary += (f" mpupload: {_ratio(mine['mib_s'] / top['mib_s'])} its speed at {_ratio(cpu)} its CPU, "
                        f"peak RSS {_num(mine.get('peak_rss_mib_max', mine['peak_rss_mib']), 0)} MiB.")
        lines += ["", summary]
    cost = srv.get("bar_cost")
    if cost:
        lines += [
            "",
            (f"Progress bar cost (mpupload-bar vs `--progress none`): {cost['wall'] * 100:+.1f} % wall, "
             f"{cost['cpu'] * 100:+.1f} % CPU."),
        ]
    targets = srv.get("targets") or []
    if targets:
        lines += ["", "Targets: " + "; ".join(_target_text(t) for t in targets) + "."]
    return lines


def render(doc: dict[str, Any]) -> str:
    """The whole markdown block: header lines and one table per server."""
    cfg = doc["config"]
    out = [
        machine_line(doc),
        "",
        (f"File: {cfg['size']} of random bytes, page cache warm; median of {cfg['runs']} interleaved run(s); "
         "mpupload with `--checksum crc32c`, the other clients as configured in benchmarks/README.md. CPU-s/GiB "
         "is user+sys of the whole process tree; peak RSS is summed over the process tree; × fastest peer "
         "compares each median with the fastest other client's (mpupload's own rows excluded)."),
    ]
    tools = doc.get("tools") or {}
    named = [f"{k} {v}" for k, v in tools.items() if v and " " not in k]
    if named:
        out += ["", "Versions: " + ", ".join(named) + "."]
    for kind in doc["servers"]:
        out += [""] + server_table(doc, kind)
    return "\n".join(out) + "\n"


def replace_block(readme: Path, block: str) -> None:
    """Replace the text between the bench markers in ``readme``; raise ValueError if they are missing."""
    text = readme.read_text()
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"{readme}: markers {START} … {END} not found")
    new = text[: start + len(START)] + "\n" + block + text[end:]
    readme.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSON written by python -m benchmarks.run")
    parser.add_argument("--readme", type=Path, help="replace the bench block of this file")
    args = parser.parse_args(argv)
    docs = [json.loads(path.read_text()) for path in args.results]
    if len(docs) == 1:
        block = render(docs[0])
    else:  # several runs (e.g. two file sizes): one section each
        block = "\n".join(f"#### {doc['config']['size']} file\n\n{render(doc)}" for doc in docs)
    print(block, end="")
    if args.readme:
        try:
            replace_block(args.readme, block)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
