#!/usr/bin/env python3
"""Summaries of the runs of cluster.sh, from herald-bench's JSON (Python standard library only).

  cluster_report.py summary RUN.json...
      the figures issue 20 asks for, one block per run (fanout, presence, node-kill)
  cluster_report.py interest --sub-nodes K DIR/interest-N-with.json...
      each with its interest-N-without.json: the CPU per event of the nodes past K, which have
      subscribers in "with" and none in "without", and Redis's bytes per event; writes
      interest.csv and interest.json beside them
  cluster_report.py scaling --out DIR RUN.json...
      broker CPU and bytes per event against node count: scaling.csv, scaling.json and
      scaling.svg (a plot) in DIR
"""
import csv
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def raw(v):
    """A per-unit figure: plain, or {"raw": x, "net_of_idle": y} (then x)."""
    return v.get("raw") if isinstance(v, dict) else v


def net(v):
    return v.get("net_of_idle") if isinstance(v, dict) else None


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def both(v, digits=2):
    """raw (net of idle) as text."""
    if isinstance(v, dict):
        return f"{fmt(v.get('raw'), digits)} (net of idle {fmt(v.get('net_of_idle'), digits)})"
    return fmt(v, digits)


def lat(r, key):
    l = r.get(key) or {}
    if not l.get("count"):
        return "-"
    return f"p50 {l['p50_ms']:.3f} / p99 {l['p99_ms']:.3f} ms (n={l['count']:,})"


def cluster_lines(r, unit, payload=None):
    """The nodes' and Redis's usage; per `unit` (event, join) unless it is None."""
    c = r.get("results", {}).get("cluster")
    if not c:
        return []
    out = [f"  over {fmt(c.get('seconds'), 3)} s:"]
    for name, n in c.get("nodes", {}).items():
        line = f"  {name} (pid {n.get('pid')}): CPU {fmt(n.get('cpu_s'), 3)} s"
        if unit:
            line += f", {both(n.get(f'cpu_us_per_{unit}'))} us per {unit}"
        if "idle_cpu_pct" in n:
            line += f", idle {n['idle_cpu_pct']} % of a core"
        out.append(line)
    rd = c.get("redis")
    if rd and unit:
        out.append(f"  redis: CPU {fmt(rd.get('cpu_s'), 3)} s, {both(rd.get(f'cpu_us_per_{unit}'))} us per {unit}")
        out.append(f"  redis bytes per {unit}: in {both(rd.get(f'net_in_bytes_per_{unit}'), 1)}, "
                   f"out {both(rd.get(f'net_out_bytes_per_{unit}'), 1)}"
                   + (f" (payload {payload} B)" if payload is not None else "")
                   + f"; commands per {unit} {both(rd.get(f'commands_per_{unit}'), 3)}")
    elif rd:
        out.append(f"  redis: CPU {fmt(rd.get('cpu_s'), 3)} s, in {fmt(rd.get('net_in_bytes'))} B, "
                   f"out {fmt(rd.get('net_out_bytes'))} B, {fmt(rd.get('commands'))} commands")
    out.append(f"  CPU beyond the cluster and the bench: {fmt(c.get('other_cpu_s_beyond_cluster'))} s")
    return out


def summary(paths):
    for p in paths:
        if not os.path.exists(p):
            print(f"{p}: missing")
            continue
        d = load(p)
        r, params, sc = d["results"], d["params"], d["scenario"]
        nodes = len(d["target"].get("node_pids") or [1])
        print(f"\n{os.path.basename(p)}: {sc} on {nodes} node(s), "
              f"{'clean' if d['passed'] else 'NOT CLEAN: ' + '; '.join(d['failures'])}")
        if sc == "fanout":
            print(f"  {params.get('subscribers')} subscribers / {params.get('channels')} channels, "
                  f"rate {params.get('rate_per_s')}, payload {params.get('payload_bytes')} B, "
                  f"publish via {params.get('publish_via', 'one API')} "
                  f"(APIs {d['target'].get('api_ports', '-')})")
            print(f"  events published {fmt(r.get('events_published'))} ({fmt(r.get('publish_rate_per_s'), 1)}/s), "
                  f"rejected 429 {fmt(r.get('events_rejected_429'))}, 503 {fmt(r.get('events_rejected_503'))}, "
                  f"failed {fmt(r.get('events_failed'))}")
            print(f"  delivered {fmt(r.get('delivered'))} of {fmt(r.get('deliveries_expected'))} "
                  f"({fmt(r.get('delivered_per_s'), 1)}/s); lost {fmt(r.get('lost'))} "
                  f"(at live subscribers {fmt(r.get('lost_at_live_subscribers'))}), "
                  f"duplicates {fmt(r.get('duplicates'))}, out of order {fmt(r.get('out_of_order'))} "
                  f"({fmt(r.get('adjacent_pairs_inverted_pct'), 3)} % of adjacent pairs), "
                  f"subscribers dropped {fmt(r.get('subscribers_dropped'))}")
            print(f"  events acknowledged that a live subscriber never got: "
                  f"{fmt(r.get('events_missed_by_a_live_subscriber'))} ({fmt(r.get('events_missed_pct'), 3)} %)")
            pc = r.get("per_channel") or {}
            print(f"  channels with loss {pc.get('with_loss')}, with duplicates {pc.get('with_duplicates')}, "
                  f"out of order {pc.get('out_of_order')} of {pc.get('channels')}")
            print(f"  latency {lat(r, 'latency')}; local {lat(r, 'latency_local')}; "
                  f"cross-node {lat(r, 'latency_cross_node')}")
            for line in cluster_lines(d, "event", params.get("payload_bytes")):
                print(line)
        elif sc == "presence":
            print(f"  joins {fmt(r.get('joins'))} at {fmt(r.get('joins_per_s'), 1)}/s "
                  f"(target {params.get('rate_per_s')}), failed {fmt(r.get('joins_failed'))}")
            print(f"  member events expected {fmt(r.get('member_events_expected'))}: "
                  f"added {fmt(r.get('member_added_received'))} (missing {fmt(r.get('member_added_missing'))}), "
                  f"removed {fmt(r.get('member_removed_received'))} (missing {fmt(r.get('member_removed_missing'))}), "
                  f"duplicates {fmt((r.get('duplicate_added') or 0) + (r.get('duplicate_removed') or 0))}")
            for line in cluster_lines(d, "join"):
                print(line)
        elif sc == "node-kill":
            print(f"  victim connections {fmt(r.get('victim_connections_held'))}; "
                  f"API settled before the kill: {r.get('api_settled_before_kill')}")
            print(f"  counts back to the watchers' on every other node after {fmt(r.get('api_counts_gone_all_s'), 3)} s "
                  f"({r.get('api_counts_gone_s')}); last member_removed {fmt(r.get('last_member_removed_s'), 3)} s; "
                  f"members left {r.get('api_members_left_at_end')}")
            print(f"  member_removed {fmt(r.get('member_removed_received'))} of {fmt(r.get('member_removed_expected'))}, "
                  f"duplicates {r.get('duplicate_member_events')}")
            s = r.get("slowlog")
            if s:
                top = (s.get("slowest") or [{}])[0]
                print(f"  SLOWLOG (threshold {r.get('slowlog_threshold_us')} us): longest {fmt(s.get('longest_us'))} us "
                      f"({top.get('command', '-')}), {fmt(s.get('entries'))} entries, full: {r.get('slowlog_full')}")
            print("  from the kill to the end of the cleanup:")
            for line in cluster_lines(d, None):
                print(line)


def node_figures(d, i):
    n = (d["results"].get("cluster") or {}).get("nodes", {}).get(f"node{i}") or {}
    return n.get("cpu_us_per_event")


def interest(args):
    k = 2
    if args[:1] == ["--sub-nodes"]:
        k, args = int(args[1]), args[2:]
    rows = []
    for w in args:
        wo = w.replace("-with.json", "-without.json")
        if not (os.path.exists(w) and os.path.exists(wo)):
            print(f"interest: {w} or {wo} missing")
            continue
        dw, dwo = load(w), load(wo)
        n = len(dw["target"].get("node_pids") or [])
        rw = dw["results"].get("cluster", {}).get("redis", {})
        rwo = dwo["results"].get("cluster", {}).get("redis", {})
        for i in range(k + 1, n + 1):
            with_, without = node_figures(dw, i), node_figures(dwo, i)
            ratio = None
            if raw(with_) and raw(without) is not None:
                ratio = round(raw(without) / raw(with_) * 100, 2)
            rows.append({
                "nodes": n, "idle_nodes": n - k, "node": i,
                "rate_per_s": dwo["params"].get("rate_per_s"),
                "events_with": dw["results"].get("events_published"),
                "events_without": dwo["results"].get("events_published"),
                "rate_reached_with": dw["results"].get("publish_rate_per_s"),
                "rate_reached_without": dwo["results"].get("publish_rate_per_s"),
                "lost_with": dw["results"].get("lost"),
                "lost_without": dwo["results"].get("lost"),
                "cpu_us_per_event_with": raw(with_),
                "cpu_us_per_event_without": raw(without),
                "cpu_us_per_event_without_net_of_idle": net(without),
                "without_vs_with_pct": ratio,
                "redis_out_bytes_per_event_with": raw(rw.get("net_out_bytes_per_event")),
                "redis_out_bytes_per_event_without": raw(rwo.get("net_out_bytes_per_event")),
                "redis_in_bytes_per_event_without": raw(rwo.get("net_in_bytes_per_event")),
                "redis_cpu_us_per_event_without": raw(rwo.get("cpu_us_per_event")),
                "clean": dw["passed"] and dwo["passed"],
            })
    if not rows:
        return
    out = os.path.dirname(args[0]) or "."
    with open(os.path.join(out, "interest.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(out, "interest.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\ninterest routing (subscribers on nodes 1-{k}; events through node 1):")
    print("nodes  node  CPU us/event with subs  without (net of idle)   without/with  "
          "redis out B/event without  redis CPU us/event without  events/s with, without  lost with, without")
    for r in rows:
        print(f"{r['nodes']:>5}  {r['node']:>4}  {fmt(r['cpu_us_per_event_with']):>22}  "
              f"{fmt(r['cpu_us_per_event_without']):>8} ({fmt(r['cpu_us_per_event_without_net_of_idle'])})  "
              f"{fmt(r['without_vs_with_pct']):>10} %  {fmt(r['redis_out_bytes_per_event_without'], 1):>25}  "
              f"{fmt(r['redis_cpu_us_per_event_without']):>26}  "
              f"{fmt(r['rate_reached_with'], 0):>10}, {fmt(r['rate_reached_without'], 0):<10} "
              f"{fmt(r['lost_with'])}, {fmt(r['lost_without'])}")
    print("(bytes per event are per event published: compare them only between runs without loss,")
    print(" an event lost on its way to other nodes may never have crossed Redis)")
    print(f"written: {out}/interest.csv, {out}/interest.json")


def scaling(args):
    out = "."
    if args[:1] == ["--out"]:
        out, args = args[1], args[2:]
    rows = []
    for p in args:
        if not os.path.exists(p):
            print(f"scaling: {p} missing")
            continue
        d = load(p)
        r = d["results"]
        c = r.get("cluster") or {}
        rd = c.get("redis") or {}
        nodes = c.get("nodes") or {}
        node_cpu = [raw(n.get("cpu_us_per_event")) for n in nodes.values()]
        rows.append({
            "nodes": len(d["target"].get("node_pids") or []),
            "subscribers": d["params"].get("subscribers"),
            "rate_per_s": d["params"].get("rate_per_s"),
            "payload_bytes": d["params"].get("payload_bytes"),
            "events": r.get("events_published"),
            "delivered": r.get("delivered"),
            "lost": r.get("lost"),
            "redis_cpu_us_per_event": raw(rd.get("cpu_us_per_event")),
            "redis_cpu_us_per_event_net_of_idle": net(rd.get("cpu_us_per_event")),
            "redis_in_bytes_per_event": raw(rd.get("net_in_bytes_per_event")),
            "redis_out_bytes_per_event": raw(rd.get("net_out_bytes_per_event")),
            "redis_out_bytes_per_event_net_of_idle": net(rd.get("net_out_bytes_per_event")),
            "redis_commands_per_event": raw(rd.get("commands_per_event")),
            "nodes_cpu_us_per_event": round(sum(x for x in node_cpu if x is not None), 3),
            "node1_cpu_us_per_event": node_cpu[0] if node_cpu else None,
            "other_cpu_s": c.get("other_cpu_s_beyond_cluster"),
            "clean": d["passed"],
        })
    rows.sort(key=lambda x: x["nodes"])
    if not rows:
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(out, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "scaling.svg"), "w") as f:
        f.write(svg(rows))
    print("\nscaling series (events through node 1):")
    print("nodes  events  redis CPU us/event  redis in B/event  redis out B/event  nodes CPU us/event  clean")
    for r in rows:
        print(f"{r['nodes']:>5}  {fmt(r['events']):>6}  {fmt(r['redis_cpu_us_per_event']):>18}  "
              f"{fmt(r['redis_in_bytes_per_event'], 1):>16}  {fmt(r['redis_out_bytes_per_event'], 1):>17}  "
              f"{fmt(r['nodes_cpu_us_per_event']):>18}  {r['clean']}")
    print(f"written: {out}/scaling.csv, {out}/scaling.json, {out}/scaling.svg")


def nice_max(v):
    """A round upper bound for an axis."""
    if v <= 0:
        return 1.0
    step = 10 ** (len(str(int(v))) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * step:
            return m * step
    return 10 * step


def panel(x0, y0, w, h, title, ylabel, xs, series):
    """One line chart as SVG elements; series: [(label, colour, [y or None])]."""
    ys = [y for _, _, s in series for y in s if y is not None]
    top = nice_max(max(ys) if ys else 1)
    xmax = max(xs) if xs else 1
    px = lambda x: x0 + 50 + (w - 70) * (x / xmax if xmax else 0)
    py = lambda y: y0 + h - 40 - (h - 70) * (y / top)
    e = [f'<text x="{x0 + w / 2}" y="{y0 + 16}" text-anchor="middle" font-weight="bold">{title}</text>',
         f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(xmax)}" y2="{py(0)}" stroke="black"/>',
         f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(0)}" y2="{py(top)}" stroke="black"/>',
         f'<text x="{x0 + 12}" y="{y0 + h / 2}" transform="rotate(-90 {x0 + 12} {y0 + h / 2})" '
         f'text-anchor="middle">{ylabel}</text>',
         f'<text x="{px(xmax / 2)}" y="{y0 + h - 8}" text-anchor="middle">nodes</text>']
    for i in range(5):
        v = top * i / 4
        e.append(f'<line x1="{px(0) - 4}" y1="{py(v)}" x2="{px(xmax)}" y2="{py(v)}" stroke="#ddd"/>')
        e.append(f'<text x="{px(0) - 6}" y="{py(v) + 4}" text-anchor="end" font-size="11">{v:g}</text>')
    for x in xs:
        e.append(f'<text x="{px(x)}" y="{py(0) + 16}" text-anchor="middle" font-size="11">{x}</text>')
    for k, (label, colour, s) in enumerate(series):
        pts = [(px(x), py(y)) for x, y in zip(xs, s) if y is not None]
        if pts:
            e.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
            e += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in pts]
        e.append(f'<text x="{px(0) + 10}" y="{y0 + 34 + 14 * k}" fill="{colour}" font-size="12">{label}</text>')
    return e


def svg(rows):
    xs = [r["nodes"] for r in rows]
    col = lambda k: [r.get(k) for r in rows]
    w, h = 480, 320
    e = panel(0, 0, w, h, "Redis CPU per event", "µs", xs, [
        ("raw", "#c0392b", col("redis_cpu_us_per_event")),
        ("net of idle", "#e59866", col("redis_cpu_us_per_event_net_of_idle")),
    ])
    e += panel(w, 0, w, h, "Redis bytes per event", "bytes", xs, [
        ("out", "#2471a3", col("redis_out_bytes_per_event")),
        ("in", "#27ae60", col("redis_in_bytes_per_event")),
    ])
    rate = rows[0].get("rate_per_s")
    note = (f"herald-bench fanout through node 1 at {rate} events/s, "
            f"{rows[0].get('payload_bytes')}-byte payload, subscribers spread evenly")
    e.append(f'<text x="{w}" y="{h + 18}" text-anchor="middle" font-size="12">{note}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 28}" '
            f'font-family="sans-serif" font-size="13">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(e) + "\n</svg>\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {"summary": summary, "interest": interest, "scaling": scaling}.get(
        cmd, lambda _: sys.exit(__doc__))(args)


if __name__ == "__main__":
    main()
