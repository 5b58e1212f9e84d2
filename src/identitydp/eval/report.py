"""``report.md``, ``frontier.png`` and ``samples.png`` of a run folder, from ``results.jsonl`` alone.

Regenerating is cheap and idempotent, so a method added to a run later (``identitydp eval --out
RUN --methods identitydp:epsilon=1,4``) shows up in every table and plot.
"""

from __future__ import annotations

import math
from pathlib import Path

from .config import EvalConfig, expand_methods
from .results import DONE, REFERENCE, latest_batches, read_lines

JUDGE_ORDER = ("dlib", "mobileface", "faceres")


def _fmt_pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "–"
    return f"{v:.{digits}f}"


class RunResults:
    """The latest complete figures of every setting of a run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.lines = read_lines(self.run_dir / "results.jsonl")
        self.batches = latest_batches(self.lines)
        cfg_path = self.run_dir / "config.json"
        self.config = EvalConfig.load(cfg_path) if cfg_path.is_file() else None
        order = [s.key for s in self.config.settings()] if self.config else []
        rest = [k for k in self.batches if k not in order and k != REFERENCE]
        self.settings = [k for k in order if k in self.batches] + rest

    def get(self, setting: str, metric: str, judge: str | None = None) -> dict | None:
        for line in self.batches.get(setting, []):
            if line["metric"] == metric and (judge is None or line.get("judge") == judge):
                return line
        return None

    def value(self, setting: str, metric: str, judge: str | None = None):
        line = self.get(setting, metric, judge)
        return None if line is None else line.get("value")

    def judges(self) -> list[str]:
        found = {l.get("judge") for ls in self.batches.values() for l in ls if l["metric"] == "rank1"}
        return [j for j in JUDGE_ORDER if j in found]

    def method_of(self, setting: str) -> tuple[str, dict]:
        lines = self.batches.get(setting, [])
        if lines:
            return lines[0]["method"], lines[0].get("params", {})
        return setting, {}


def write_report(run_dir: str | Path) -> list[Path]:
    """Write report.md, privacy_curve.json, frontier.png, samples.png and attacks.png into ``run_dir``; returns the paths written."""
    from .curve import write_curve

    res = RunResults(run_dir)
    paths = [_write_markdown(res), write_curve(run_dir)]
    if res.settings:
        paths.append(_write_frontier(res))
        for extra in (_write_samples(res), _write_attacks(res)):
            if extra:
                paths.append(extra)
    return paths


def _write_markdown(res: RunResults) -> Path:
    judges = res.judges()
    out: list[str] = ["# Evaluation report", ""]
    cfg = res.config
    codes = sorted({l["code"].get("describe", "?") for ls in res.batches.values() for l in ls if l.get("code")})
    if cfg:
        p = cfg.protocol()
        out += [
            f"Protocol: LFW, {_count(res, 'rank1')} probe people (probe: anonymized image 1; gallery: original image 2 of every probe person), "
            f"{_count_ref(res, 'far_threshold')} View-2 impostor pairs for the FAR = {100 * p['far']:g} % threshold, "
            f"judges {', '.join(p['judges'])}; seed {p['seed']}; CenterFace threshold {p['threshold']}.",
            f"Code versions: {', '.join(codes) or 'unknown'}. Generated from `results.jsonl` by `identitydp eval --report-only`.",
            "",
            "Every judge embeds the anonymized face at the **original** face's CenterFace landmarks (fixed alignment), "
            "so a method that destroys the face is still judged on the right pixels. All numbers in %, except where a unit is given.",
            "",
        ]
    ref = REFERENCE
    out += ["## Reference (originals)", ""]
    chance = res.value(ref, "chance_rank1")
    rows = [f"| chance rank-1 | {'–' if chance is None else f'{100 * chance:.2f}'} % |"]
    for j in judges:
        line = res.get(ref, "far_threshold", j)
        if line:
            e = line["extra"]
            rows.append(f"| {j}: threshold at FAR {100 * e.get('target_far', 0):g} % ({e.get('distance')}) | {line['value']:.4f} (achieved FAR {100 * e.get('achieved_far', 0):.2f} % on {line['n']} pairs) |")
        r = res.value(ref, "rank1_originals", j)
        if r is not None:
            rows.append(f"| {j}: rank-1 of original probes | {_fmt_pct(r)} % |")
    line = res.get(ref, "blaze_detect_originals")
    if line is not None:
        rows.append(f"| BlazeFace detection of the original probes (score ≥ {line['extra'].get('threshold')} / ≥ 0.5) | "
                    f"{_fmt_pct(line['value'])} % / {_fmt_pct(line['extra'].get('rate_at_0.5'))} % |")
    v = res.value(ref, "fd_real_vs_real", "faceres")
    if v is not None:
        rows.append(f"| Fréchet distance real vs real (faceres, {res.get(ref, 'fd_real_vs_real')['n']} vs same size) | {v:.3f} |")
    v = res.value(ref, "fd_originals_vs_real", "faceres")
    if v is not None:
        rows.append(f"| Fréchet distance original probes vs real | {v:.3f} |")
    src = res.get(ref, "target_face_source")
    if src:
        e = src["extra"]
        rows.append(f"| target face found by CenterFace (≥ threshold / only at 0.2 / not found: median geometry) | {e.get('detected')} / {e.get('low')} / {e.get('fixed')} of {src['n']} images |")
    out += ["| reference | value |", "| --- | --- |", *rows, ""]

    settings = res.settings
    out += ["## Privacy (lower is better)", "",
            "Re-identification rank-1 against the original gallery, and acceptance of (original, anonymized) pairs at the FAR threshold.", ""]
    head = ["method", "setting"] + [f"rank-1 {j}" for j in judges] + [f"accept {j}" for j in judges]
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in settings:
        m, _ = res.method_of(s)
        cells = [m, _setting_label(s)] + [_fmt_pct(res.value(s, "rank1", j)) for j in judges] + [_fmt_pct(res.value(s, "verify_accept", j)) for j in judges]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out += _distance_section(res, settings, judges)

    out += _attack_section(res, settings, judges)

    if any(res.get(s, "detect_rate") for s in settings):
        out += ["## Utility", "",
                "BlazeFace detection rate of the anonymized face (a box with IoU ≥ 0.3 with the original face box and score ≥ 0.75, "
                "a threshold that keeps 99 % of original LFW faces; also at MediaPipe's default 0.5, where BlazeFace fires on the head "
                "silhouette around a solid mask; higher is better); "
                "FaceMesh landmark error normalised by inter-ocular distance (lower is better); faceres age MAE (years) and "
                "gender agreement, expression agreement (higher is better); max pixel change outside the face regions (boxes of every "
                "CenterFace detection ≥ 0.2 of the original, enlarged 25 % per side; must be 0 for the pipeline's methods) and the mean "
                "fraction of those outside pixels changed; faces masked solid by the pipeline's fail-closed rule.", ""]
        head = ["method", "setting", "detected", "detected @0.5", "landmark NME", "age MAE (y)", "gender agree", "emotion agree",
                "max Δ outside", "outside px changed", "masked faces"]
        out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for s in settings:
            m, _ = res.method_of(s)
            outside = res.value(s, "outside_max_change")
            det = res.get(s, "detect_rate")
            det05 = det["extra"].get("rate_at_0.5") if det else None
            out_line = res.get(s, "outside_max_change")
            out_frac = out_line["extra"].get("mean_changed_pixel_fraction") if out_line else None
            out.append("| " + " | ".join([
                m, _setting_label(s), _fmt_pct(res.value(s, "detect_rate")), _fmt_pct(det05), _fmt(res.value(s, "landmark_nme"), 3),
                _fmt(res.value(s, "age_mae"), 1), _fmt_pct(res.value(s, "gender_agree")), _fmt_pct(res.value(s, "emotion_agree")),
                "–" if outside is None else f"{outside:.0f}", _fmt_pct(out_frac), _fmt_pct(res.value(s, "masked_faces")),
            ]) + " |")
        out.append("")

    if any(res.get(s, "fd") or res.get(s, "diversity") for s in settings):
        rr = res.value(ref, "fd_real_vs_real", "faceres")
        rr_mf = res.value(ref, "fd_real_vs_real", "mobileface")
        out += ["## Realism and diversity", "",
                f"Fréchet distance of anonymized probes vs a disjoint real set, on faceres features (real vs real: {_fmt(rr, 3)}; "
                "**faceres is in the v1 generator's training loss, so for v1 it is not an independent judge**) and on MobileFace "
                f"features (in no training loss; real vs real: {_fmt(rr_mf, 3)}). Sharpness = high-frequency energy "
                "(x − GaussianBlur(x, σ 1.5 px)) of the central face region, anonymized / original. Seam = (gradient on the "
                "boundary of the changed region / gradient inside it) relative to the same on the original (1: no visible seam). "
                "Diversity = mean pairwise mobileface cosine distance among 5 anonymizations of one image (randomized methods only).", ""]
        out += ["| method | setting | FD (faceres) | FD (MobileFace) | sharpness | seam | diversity |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in settings:
            m, _ = res.method_of(s)
            out.append(f"| {m} | {_setting_label(s)} | {_fmt(res.value(s, 'fd'), 3)} | {_fmt(res.value(s, 'fd_independent'), 3)} | "
                       f"{_fmt(res.value(s, 'sharpness_ratio'), 2)} | {_fmt(res.value(s, 'seam_score'), 2)} | {_fmt(res.value(s, 'diversity'), 3)} |")
        out.append("")

    out += ["## Speed", "",
            "End to end on a few probes (detect + anonymize; deface: whole CLI call per image, start-up included); "
            "ms per face of the method inside the main loop; process peak memory so far (cumulative); wall time of the setting's evaluation.", ""]
    out += ["| method | setting | ms detect / face | ms anonymize / face | images / s | ms anonymize / face (main loop) | peak RSS (MiB) | eval wall (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in settings:
        m, _ = res.method_of(s)
        out.append("| " + " | ".join([
            m, _setting_label(s), _fmt(res.value(s, "ms_detect_per_face"), 1), _fmt(res.value(s, "ms_anonymize_per_face"), 1),
            _fmt(res.value(s, "images_per_s"), 1), _fmt(res.value(s, "ms_anonymize_in_run"), 1),
            _fmt(res.value(s, "peak_rss_mib"), 0), _fmt(res.value(s, DONE), 0),
        ]) + " |")
    total = sum(res.value(s, DONE) or 0 for s in settings)
    out += ["", f"Total evaluation wall time of the settings above: {total / 60:.1f} min (originals' detection and judging are cached and not included).", ""]
    if (res.run_dir / "frontier.png").exists() or settings:
        out += ["![privacy–utility frontier](frontier.png)", "", "![samples](samples.png)", ""]
    path = res.run_dir / "report.md"
    path.write_text("\n".join(out))
    return path


ATTACKS = (("rank1", "direct"), ("linkage_rank1", "linkage"), ("parrot_rank1", "parrot"), ("attacker_rank1", "trained"))


def worst_attack_rank1(res: RunResults, setting: str, judge: str) -> float | None:
    """The highest rank-1 any attack reached on ``setting`` for ``judge`` (None: no attack ran)."""
    vals = [res.value(setting, m, judge) for m, _ in ATTACKS[1:]]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return max(vals + [res.value(setting, "rank1", judge) or 0.0])


def _distance_section(res, settings, judges) -> list[str]:
    """Mean judge distance of each released face to its own original: a continuous reading of what
    acceptance counts only past the threshold, beside two people's mean distance."""
    def mean_distance(s, j):
        line = res.get(s, "verify_accept", j)
        return None if line is None else line["extra"].get("mean_distance")

    if not any(mean_distance(s, j) is not None for s in settings for j in judges):
        return []
    ref = {j: (res.get(REFERENCE, "far_threshold", j) or {}).get("extra", {}) for j in judges}
    kinds = ", ".join(f"{j}: {ref[j].get('distance', '?')}" for j in judges)
    if any(ref[j].get("mean_impostor_distance") is not None for j in judges):  # runs before 2026-12-07 lack it
        kinds += "; two different people's photos: " + ", ".join(
            f"{j} {_fmt(ref[j].get('mean_impostor_distance'), 3)}" for j in judges)
    out = ["Mean distance of each anonymized face to its own original, in each judge's distance "
           f"({kinds}; higher is better). Unlike acceptance it "
           "also moves below the threshold, so it separates settings whose acceptance counts are within each "
           "other's intervals.", ""]
    head = ["method", "setting"] + [f"mean distance {j}" for j in judges]
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in settings:
        m, _ = res.method_of(s)
        out.append("| " + " | ".join([m, _setting_label(s)] + [_fmt(mean_distance(s, j), 3) for j in judges]) + " |")
    return out + [""]


def _attack_section(res: RunResults, settings: list[str], judges: list[str]) -> list[str]:
    if not any(res.get(s, "linkage_rank1", j) for s in settings for j in judges):
        return []
    chance = res.value(REFERENCE, "chance_rank1")
    att = next((res.get(s, "attacker_rank1", j) for s in settings for j in judges if res.get(s, "attacker_rank1", j)), None)
    pairs = att["extra"].get("train_pairs") if att else None
    averaged = any((res.get(s, "linkage_rank1", j) or {}).get("extra", {}).get("comparisons") for s in settings for j in judges)
    linkage_how = (", the mean over both directions (image 1 among the anonymized image 2s, and back) and each draw of the "
                   "anonymized gallery: 4 comparisons for randomized methods, 2 for deterministic ones") if averaged else ""
    out = ["## Attacks (lower is better)", "",
           "Rank-1 re-identification (chance " + (f"{100 * chance:.2f} %" if chance else "1/P") + ") under stronger attackers "
           "(`identitydp.eval.attacks`): **direct** = the anonymized probe against the original gallery (the Privacy table); "
           "**linkage** = against image 2 of every person *anonymized* by the same method (can released faces be linked to each "
           "other?)" + linkage_how + "; **parrot** = against the attacker's own original gallery run through the same method "
           "and setting, two draws averaged per face for randomized methods (one draw for deterministic ones: then it equals "
           "linkage's first comparison); **trained** = "
           "a ridge adapter from anonymized to original embeddings, fitted on "
           + (f"{pairs} " if pairs else "") + "(original, anonymized) pairs of public *training* faces (UTKFace, never LFW) "
           "made with the same method and setting, applied to the probes, against the original gallery. "
           "Worst = the highest of the four.", ""]
    head = ["method", "setting"]
    for j in judges:
        head += [f"{name} {j}" for _, name in ATTACKS] + [f"**worst** {j}"]
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in settings:
        m, _ = res.method_of(s)
        cells = [m, _setting_label(s)]
        for j in judges:
            cells += [_fmt_pct(res.value(s, metric, j)) for metric, _ in ATTACKS]
            w = worst_attack_rank1(res, s, j)
            cells.append(f"**{_fmt_pct(w)}**" if w is not None else "–")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    judge = "mobileface" if "mobileface" in judges else judges[0]
    rows = [(s, res.get(s, "rank1_vs_gallery", judge)) for s in settings]
    rows = [(s, l) for s, l in rows if l]
    if rows:
        sizes = rows[0][1]["extra"]["sizes"]
        out += [f"Rank-1 against gallery size ({judge} judge; direct attack, expected over random distractor sets, exact; "
                "chance 1/G). A small gallery — an attacker who already narrowed the candidates down — is the realistic threat.", ""]
        head = ["method", "setting"] + [f"G={g}" for g in sizes] + ["chance G=" + str(sizes[0])]
        out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for s, l in rows:
            m, _ = res.method_of(s)
            vals = l["extra"].get("direct", [])
            out.append("| " + " | ".join([m, _setting_label(s)] + [_fmt_pct(v) for v in vals] + [_fmt_pct(1.0 / sizes[0])]) + " |")
        out += ["", "![attacks](attacks.png)", ""]
    return out


def _write_attacks(res: RunResults) -> Path | None:
    """rank-1 vs gallery size (one panel per attack) for the MobileFace judge."""
    judges = res.judges()
    judge = "mobileface" if "mobileface" in judges else (judges[0] if judges else None)
    rows = [(s, res.get(s, "rank1_vs_gallery", judge)) for s in res.settings] if judge else []
    rows = [(s, l) for s, l in rows if l]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (NullLocator below)

    kinds = [k for k in ("direct", "linkage", "attacker") if any(k in l["extra"] for _, l in rows)]
    titles = {"direct": "direct (original gallery)", "linkage": "linkage (anonymized gallery)", "attacker": "trained attacker"}
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.4), squeeze=False, sharey=True)
    colors = [plt.get_cmap("tab20")(i % 20) for i in range(len(rows))]
    for c, kind in enumerate(kinds):
        ax = axes[0][c]
        for k, (s, l) in enumerate(rows):
            if kind not in l["extra"]:
                continue
            sizes = l["extra"]["sizes"]
            m, _ = res.method_of(s)
            label = f"{m} {_setting_label(s)}" if _setting_label(s) != "–" else m
            ax.plot(sizes, [100 * v for v in l["extra"][kind]], marker="o", ms=3, lw=1.2, color=colors[k % len(colors)],
                    ls="-" if m == "identitydp" else "--", label=label)
        sizes = rows[0][1]["extra"]["sizes"]
        ax.plot(sizes, [100.0 / g for g in sizes], color="grey", ls=":", lw=1.5, label="chance 1/G")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(g) for g in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("gallery size G (people the attacker tells apart)")
        ax.set_title(titles[kind], fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if c == 0:
            ax.set_ylabel(f"rank-1, {judge} judge (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Re-identification against gallery size, LFW", fontsize=11)
    fig.tight_layout()
    path = res.run_dir / "attacks.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _count(res: RunResults, metric: str) -> int | str:
    for ls in res.batches.values():
        for l in ls:
            if l["metric"] == metric and l.get("n"):
                return l["n"]
    return "?"


def _count_ref(res: RunResults, metric: str) -> int | str:
    line = res.get(REFERENCE, metric)
    return line["n"] if line else "?"


def _setting_label(key: str) -> str:
    s = expand_methods([key])[0]
    return s.label if s.params else "–"


def _value_label(key: str) -> str:
    """Parameter values only (e.g. ``0.05`` or ``1, laplace``); names go in the legend."""
    s = expand_methods([key])[0]
    return ", ".join(k_v.split("=", 1)[1] for k_v in s.label.split(", ")) if s.params else ""


def _param_names(keys: list[str]) -> list[str]:
    names: list[str] = []
    for key in keys:
        for name, _ in expand_methods([key])[0].params:
            if name not in names:
                names.append(name)
    return names


#: The parameter a method's frontier curve runs along; settings that differ in anything else
#: (the noise domain, the renderer's precision, kept attributes) are curves of their own.
_CURVE_KNOB = {"identitydp": "epsilon", "dp-pix": "epsilon", "blur": "sigma", "pixelate": "blocks"}


def _knob_value(res: RunResults, key: str):
    """The value of the parameter a setting's curve runs along (None if it has none)."""
    method, params = res.method_of(key)
    return params.get(_CURVE_KNOB.get(method, ""))


def _curves(res: RunResults) -> dict[str, list[str]]:
    curves: dict[str, list[str]] = {}
    for s in res.settings:
        m, params = res.method_of(s)
        fixed = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != _CURVE_KNOB.get(m))
        curves.setdefault(f"{m} [{fixed}]" if fixed else m, []).append(s)

    def along(key: str) -> float:
        try:
            return float(_knob_value(res, key))  # "inf" too
        except (TypeError, ValueError):
            return 0.0

    return {name: sorted(keys, key=along) for name, keys in curves.items()}


def _write_frontier(res: RunResults) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = [j for j in ("mobileface", "dlib") if j in res.judges()] or res.judges()[:1]
    utilities = [("detect_rate", "BlazeFace detection rate (%, score ≥ 0.75) ↑", True), ("landmark_nme", "FaceMesh landmark error / inter-ocular ↓", False)]
    utilities = [u for u in utilities if any(res.value(s, u[0]) is not None for s in res.settings)] or [("verify_accept", "verification acceptance (%)", True)]
    fig, axes = plt.subplots(len(judges), len(utilities), figsize=(6.2 * len(utilities), 4.6 * len(judges)), squeeze=False)
    chance = res.value(REFERENCE, "chance_rank1")
    curves = _curves(res)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*X<>"
    for r, judge in enumerate(judges):
        for c, (metric, ylabel, pct) in enumerate(utilities):
            ax = axes[r][c]
            for k, (method, keys) in enumerate(curves.items()):
                xs, ys, labels, worst = [], [], [], []
                for s in keys:
                    x, y = res.value(s, "rank1", judge), res.value(s, metric)
                    if x is None or y is None:
                        continue
                    xs.append(100 * x)
                    ys.append(100 * y if pct else y)
                    knob_value = _knob_value(res, s)
                    labels.append(str(knob_value) if knob_value is not None else _value_label(s))
                    w = worst_attack_rank1(res, s, judge)
                    worst.append(None if w is None else 100 * w)
                if not xs:
                    continue
                color = colors[k % len(colors)]
                knob = _CURVE_KNOB.get(res.method_of(keys[0])[0])
                names = [n for n in _param_names(keys) if n == knob] or _param_names(keys)
                legend = f"{method} ({', '.join(names)})" if names and len(xs) > 1 else method
                ax.plot(xs, ys, marker=markers[k % len(markers)], color=color, label=legend, lw=1.5 if len(xs) > 1 else 0, ms=7)
                for x, y, w in zip(xs, ys, worst):
                    if w is not None and w > x:
                        # the same setting under its strongest attack (linkage / parrot / trained)
                        ax.plot([x, w], [y, y], color=color, lw=0.8, ls=":")
                        ax.plot([w], [y], marker=markers[k % len(markers)], mfc="none", color=color, ms=7)
                if len(xs) > 1:
                    for x, y, lab in zip(xs, ys, labels):
                        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
            if chance is not None:
                ax.axvline(100 * chance, color="grey", ls=":", lw=1)
                ax.text(100 * chance, ax.get_ylim()[1], " chance", color="grey", fontsize=7, va="top")
            ax.set_xlabel(f"re-identification rank-1, {judge} judge (%, symlog) ← more private")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            # Most baselines sit within a few points of chance: a symmetric-log axis (linear below
            # 0.1 %) keeps them apart without hiding the no-op anchor.
            ax.set_xscale("symlog", linthresh=0.1, linscale=0.5)
            ax.set_xlim(left=0, right=110)
            ax.set_xticks([0, 0.1, 1, 10, 100])
            ax.set_xticklabels(["0", "0.1", "1", "10", "100"])
            if r == 0 and c == 0:
                ax.legend(fontsize=8, loc="best")
    title = "Privacy vs utility on LFW (one curve per method across its parameter)"
    if any(worst_attack_rank1(res, s, judges[0]) is not None for s in res.settings):
        title += "\nhollow: the same setting under its strongest attack"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = res.run_dir / "frontier.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wrap_label(draw, text: str, width: int) -> list[str]:
    """A setting label broken after its separators (``:``, ``;``, ``,``) into lines of at most
    ``width`` pixels, so that long settings do not run over the first sample."""
    import re

    words = [w for w in re.split(r"(?<=[:;,])", text) if w]
    lines: list[str] = []
    for word in words:
        if lines and draw.textlength(lines[-1] + word) <= width:
            lines[-1] += word
        else:
            lines.append(word.strip())
    return lines


def _write_samples(res: RunResults) -> Path | None:
    """One row per setting (label, then its strip of faces); 256-colour PNG to stay small."""
    from PIL import Image, ImageDraw

    from .runner import DRAWS_SUFFIX

    rows = []
    for s in res.settings:
        slug = expand_methods([s])[0].slug
        path = res.run_dir / "samples" / f"{slug}.jpg"
        if path.is_file():
            rows.append((s, Image.open(path).convert("RGB")))
        draws = res.run_dir / "samples" / f"{slug}{DRAWS_SUFFIX}.jpg"
        if draws.is_file():
            rows.append((f"{s}: draws of face 1", Image.open(draws).convert("RGB")))
    if not rows:
        return None
    label_w, pad = 190, 4
    width = label_w + max(img.width for _, img in rows)
    height = sum(img.height + pad for _, img in rows) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for s, img in rows:
        canvas.paste(img, (label_w, y))
        lines = _wrap_label(draw, s, label_w - 10)
        top = y + img.height // 2 - 6 * len(lines)
        for k, line in enumerate(lines):
            draw.text((6, top + 12 * k), line, fill="black")
        y += img.height + pad
    path = res.run_dir / "samples.png"
    canvas.quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    return path
