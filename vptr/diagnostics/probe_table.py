"""The Markdown tables of a ``vptr probe`` report (``report.md``): pure rendering of the
report dict that :func:`vptr.probe.run_probe` writes as ``report.json``."""

from __future__ import annotations


def _slug(task: str) -> str:
    return task.split("/")[-1].split("-v")[0].lower()


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def markdown(report: dict) -> str:
    enc = report["encoder"]
    out = [f"# vptr probe: {enc['label']}", "",
           f"{report['split_note']}. Machine: {report['machine']}. Wall time "
           f"{report['wall_s']:.0f} s ({report.get('cells_run', '?')} cells run, "
           f"{report.get('cells_reused', '?')} reused from {report.get('cells_dir', '?')}).",
           ""]
    out += imitation_table(report) + frame_tables(report) + value_table(report)
    if report["notes"]:
        out += ["Notes:", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(out)


def imitation_table(report: dict) -> list[str]:
    rows = report.get("imitation")
    if not rows:
        return []
    cfg = report["config"]
    shifts = [0.0, *cfg["shifts"]]
    out = [f"## Few-demo imitation (chunked flow BC, {cfg['steps']} updates, batch "
           f"{cfg['batch_size']}; success %, pooled over seeds {cfg['seeds']} x "
           f"{cfg['episodes']} episodes [Wilson 95 %], per seed in parentheses; "
           "Δ: paired difference vs the baseline [Newcombe 95 %])", "",
           "| task | demos | encoder | " + " | ".join(f"shift {s:g}" for s in shifts) + " |",
           "|---|---|---|" + "---|" * len(shifts)]
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["task"], r["demos"], r["arm"]), {})[r["shift"]] = r
    for (task, k, _arm), by_shift in groups.items():
        first = next(iter(by_shift.values()))
        cells = []
        for s in shifts:
            r = by_shift.get(s)
            if r is None:
                cells.append("-")
                continue
            p = r["pooled"]
            seeds = "/".join(_pct(x["success_rate"]) for x in r["per_seed"])
            text = (f"{_pct(p['success_rate'])} [{_pct(p['ci95'][0])}-{_pct(p['ci95'][1])}] "
                    f"({seeds})")
            vs = r.get("vs_baseline")
            if vs:
                text += (f"; Δ {100 * vs['difference']:+.0f} [{100 * vs['ci95'][0]:+.0f}, "
                         f"{100 * vs['ci95'][1]:+.0f}]")
            cells.append(text)
        demos = f"{k}" if first["demos_saved"] == k else f"{k} ({first['demos_saved']} kept)"
        out.append(f"| {_slug(task)} | {demos} | {first['label']} | " + " | ".join(cells) + " |")
    return out + [""]


def frame_tables(report: dict) -> list[str]:
    out: list[str] = []
    for task, res in report.get("frames", {}).items():
        encs = res["encoders"]
        first = next(iter(encs.values()))
        if "linear" in first:
            names = res["targets"]
            out += [f"## Linear probe, {_slug(task)} (ridge, validation R² on held-out "
                    f"episodes; {res['frames']} frames of {res['episodes']} expert episodes)",
                    "", "| features | " + " | ".join(names) + " | mean |",
                    "|---|" + "---|" * (len(names) + 1)]
            for name, e in encs.items():
                r2 = e["linear"]["r2"]
                out.append(f"| {_features(name, e)} | "
                           + " | ".join(f"{r2[n]:.2f}" for n in names)
                           + f" | {e['linear']['r2_mean']:.2f} |")
            out.append("")
        if "invariance" in first:
            shifts = list(first["invariance"])
            out += [f"## Invariance, {_slug(task)} (feature change on paired frames: same "
                    "state, other appearance / change between consecutive frames; lower is "
                    "more invariant)", "",
                    "| features | " + " | ".join(f"shift {s}" for s in shifts) + " |",
                    "|---|" + "---|" * len(shifts)]
            for name, e in encs.items():
                out.append(f"| {_features(name, e)} | " + " | ".join(
                    f"{e['invariance'][s]['ratio']:.2f}" for s in shifts) + " |")
            out.append("")
    return out


def _features(name: str, entry: dict) -> str:
    return f"{name} (mean of {entry['seeds']} seeds)" if entry["seeds"] > 1 else name


def value_table(report: dict) -> list[str]:
    values = report.get("values")
    if values is None:
        return []
    if "skipped" in values:
        return ["## Value curves", "", f"Skipped: {values['skipped']}.", ""]
    out = [f"## Value curves ({values['objective']} at step {values['step']}, held-out "
           "video; as `vptr evaluate-values`)", "",
           "| set | value | Spearman(V, t) | spread | V at goal |", "|---|---|---|---|---|"]
    for name, s in values["sets"].items():
        for label, m in (("trained", s["trained"]), ("-pixel L2", s["pixel_l2"]),
                         ("untrained (mean)", s["untrained_mean"])):
            if m:
                out.append(f"| {name} | {label} | {m['spearman']:.2f} | {m['spread']:.2f} | "
                           f"{m['goal_value']:.2f} |")
    return out + [""]
