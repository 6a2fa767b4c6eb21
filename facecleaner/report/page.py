"""``index.html``: one self-contained page (inline CSS, no script) linking the figures and thumbnails by
relative paths, so the folder can be moved, zipped or served as it is. Every string that comes from the data —
labels, paths, statuses, warnings — is HTML-escaped: identity labels come from the web."""

from __future__ import annotations

import html
from typing import Any

from facecleaner.report.sheets import THUMB_SIZE, Sheet, Thumb

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a202c;margin:0;background:#f7fafc}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
h3{font-size:15px;margin:0}
.sub{color:#4a5568;font-size:13px;margin:0 0 12px;overflow-wrap:anywhere}
.warn{background:#fffaf0;border:1px solid #f6ad55;border-radius:6px;padding:8px 12px;margin:10px 0}
.warn li{margin:2px 0}
.numbers{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:20px}.card span{color:#4a5568;font-size:12px}
.figs{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.figs figure{margin:0;background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:8px}
.figs img{width:100%;height:auto;display:block}
.figs figcaption{font-size:12.5px;color:#2d3748;margin-top:6px}
table{border-collapse:collapse;background:#fff;font-size:13px}
td,th{border:1px solid #e2e8f0;padding:3px 8px;text-align:left}th{background:#edf2f7}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.sheet{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:10px 12px;margin:12px 0}
.sheet .head{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap;margin-bottom:6px}
.tag{font-size:11px;border-radius:10px;padding:1px 8px;background:#edf2f7;color:#4a5568}
.cols{display:grid;grid-template-columns:402px 1fr;gap:14px}
.cols h4{margin:0 0 4px;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#4a5568}
.grid{display:flex;flex-wrap:wrap;gap:6px}
.t{margin:0;width:@SIZE@px}
.t img,.t .ph{width:@SIZE@px;height:@SIZE@px;object-fit:contain;background:#edf2f7;display:block;border-radius:3px;
 border:3px solid #38a169}
.t.drop img,.t.drop .ph{border-color:#e53e3e}
.t .ph{display:flex;align-items:center;justify-content:center;text-align:center;font-size:11px;color:#718096;
 padding:4px}
.t figcaption{font-size:11px;line-height:1.25;text-align:center;overflow-wrap:anywhere}
.none{color:#718096;font-size:12px}
footer{color:#718096;font-size:12px;margin-top:30px}
""".replace("@SIZE@", str(THUMB_SIZE))

#: What each figure shows and what to check in it.
CAPTIONS = {
    "angle_histogram": "Each readable sample's angle to its class's dominant sub-center, for samples nearest the "
                       "dominant sub-center (blue) and those nearest another one (orange). A well-trained model "
                       "puts clean samples in a tall mode well inside the threshold and noise in a lower mode "
                       "further out, mostly among the non-dominant samples. Check that the threshold lines fall in "
                       "the valley between the modes.",
    "kept_share": "The share of all samples the angle rule keeps at each threshold (unreadable samples count as "
                  "dropped). A flat stretch is a valley in the angles: a threshold there is robust. A steep "
                  "curve at the threshold used means small changes to it move many samples.",
    "drop_rates": "How the drops spread over identities (log scale). Noise spread over many identities "
                  "gives a few percent each; identities losing half or more are listed below: check whether "
                  "their label holds two people, or whether the model failed on them.",
    "health": "The model's geometry, against the limits past which score warns: a median angle over 75° or many "
              "samples over 90° mean the classes were not separated (an angle rule would drop most samples); "
              "many within 5° mean the model memorised its training images, noise included.",
}


def e(value: Any) -> str:
    """HTML-escaped text of anything from the data."""
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _thumb(thumb: Thumb, dropped: bool) -> str:
    angle = "n/a" if thumb.angle is None else f"{thumb.angle:.1f}°"
    title = " · ".join(str(x) for x in (thumb.where, f"sample_id {thumb.sample_id}",
                                        thumb.error and f"not drawn: {thumb.error}") if x)
    if thumb.file is not None:
        picture = (f'<img src="{e(thumb.file)}" width="{THUMB_SIZE}" height="{THUMB_SIZE}" '
                   f'alt="sample {thumb.sample_id}">')
    else:
        shown = "no image" if thumb.error is None else "missing" if thumb.error == "missing" else "unreadable"
        picture = f'<div class="ph">{e(shown)}</div>'
    nearer = ""
    if thumb.nearer is not None:
        other = "" if thumb.angle_other is None else f" {thumb.angle_other:.0f}°"
        nearer = f"<br>nearer {e(thumb.nearer)}{e(other)}"
    reason = thumb.reason.replace("_", " ")
    return (f'<figure class="t{" drop" if dropped else ""}" title="{e(title)}">{picture}'
            f"<figcaption>{e(angle)} · {e(reason)}{nearer}</figcaption></figure>")


def _sheet(sheet: Sheet) -> str:
    def grid(thumbs: list[Thumb], dropped: bool, total: int) -> str:
        if not thumbs:
            return f'<p class="none">{"none" if not total else "not shown (thumbnail cap reached)"}</p>'
        more = f'<p class="none">{len(thumbs)} of {total} shown, spread over their angles</p>' \
            if len(thumbs) < total else ""
        return '<div class="grid">' + "".join(_thumb(t, dropped) for t in thumbs) + "</div>" + more

    kept = sheet.samples - sheet.dropped
    return (f'<section class="sheet"><div class="head"><h3>{e(sheet.label)}</h3>'
            f"<span>{sheet.samples} samples · {kept} kept · {sheet.dropped} dropped "
            f"({sheet.drop_share:.0%})</span><span class=\"tag\">{e(sheet.chosen)}</span></div>"
            f'<div class="cols"><div><h4>kept</h4>{grid(sheet.kept_thumbs, False, kept)}</div>'
            f'<div><h4>dropped</h4>{grid(sheet.dropped_thumbs, True, sheet.dropped)}</div></div></section>')


def render(summary: dict[str, Any], sheets: list[Sheet]) -> str:
    """The page for a report ``summary`` (as summary.json holds it) and its contact sheets."""
    figures = summary["figures"]
    counts = summary["counts"]
    threshold = summary["threshold"]
    auto = summary["auto_threshold"]
    warnings = summary["warnings"]
    source = f"{e(summary['scores'])}" + (f" · clean manifest {e(summary['clean'])}" if summary.get("clean") else "")
    model = summary.get("model") or {}
    model_text = ", ".join(f"{k} {e(v)}" for k, v in model.items() if k in ("backbone", "subcenters", "image_size"))
    by_reason = ", ".join(f"{e(name.replace('_', ' '))} {n:,}" for name, n in counts["by_reason"].items() if n)
    auto_text = e(auto["note"])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>facecleaner report — {e(summary['scores_name'])}</title><style>{CSS}</style></head><body><main>",
        f"<h1>facecleaner report</h1><p class=\"sub\">{source}<br>"
        f"{e(summary['created'])} · facecleaner {e(summary['facecleaner_version'])}"
        f"{' · model ' + model_text if model_text else ''}</p>",
    ]
    if warnings:
        parts.append('<div class="warn"><b>Check first</b><ul>' + "".join(f"<li>{e(w)}</li>" for w in warnings)
                     + "</ul></div>")
    kept_share = counts["kept"] / max(counts["samples"], 1)
    drop_rates = figures["drop_rates"]
    parts.append('<div class="numbers">'
                 f'<div class="card"><b>{counts["samples"]:,}</b><span>samples ({counts["unreadable"]:,} '
                 f"unreadable), {drop_rates['classes']:,} identities</span></div>"
                 f'<div class="card"><b>{kept_share:.1%}</b><span>kept: {counts["kept"]:,} samples; '
                 f"{counts['classes_kept']:,} identities keep some</span></div>"
                 f'<div class="card"><b>{counts["dropped"]:,}</b><span>dropped{": " + by_reason if by_reason else ""}'
                 "</span></div>"
                 f'<div class="card"><b>{threshold["angle"]:.1f}°</b><span>threshold ({e(threshold["choice"])}; '
                 f"rule {e(summary['rule'])})</span></div></div>")
    parts.append(f'<p class="sub">--angle auto: {auto_text}.</p>')
    parts.append('<h2>Figures</h2><div class="figs">')
    for key, title in (("angle_histogram", "Angles"), ("kept_share", "Share kept"), ("drop_rates", "Drop rates"),
                       ("health", "Model health")):
        parts.append(f'<figure><img src="figures/{e(figures[key]["file"])}" alt="{e(title)}">'
                     f"<figcaption>{e(CAPTIONS[key])}</figcaption></figure>")
    parts.append("</div>")
    source = "recorded by score" if summary["health_source"] == "metadata" else \
        "computed from the scores' columns (the file was edited, or its metadata has none)"
    verdict = "its warnings are listed at the top" if figures["health"]["warnings"] else "no warnings"
    parts.append(f'<p class="sub">Model health {e(source)}: {verdict}.</p>')
    thumbs = summary["thumbnails"]
    parts.append("<h2>Contact sheets</h2><p class=\"sub\">Identities losing the largest share of their samples, "
                 "then a random sample of the others: kept samples (green) beside dropped ones (red), each with "
                 "its angle to the dominant sub-center and the reason; \"nearer X\" names another identity the "
                 "sample is closer to than its own. Dropped faces that are clearly the identity, or kept faces "
                 "that are not, say the threshold is off. Hover a thumbnail for its file. "
                 f"{thumbs['written']:,} thumbnails (cap {thumbs['cap']:,})"
                 + (f", {thumbs['failed']:,} could not be drawn" if thumbs["failed"] else "") + ".</p>")
    parts.extend(_sheet(sheet) for sheet in sheets)
    if not sheets:
        parts.append('<p class="none">No identities to show.</p>')
    parts.append('<footer>Numbers: summary.json (the same as plotted). Figures: figures/. Thumbnails: '
                 "thumbs/.</footer></main></body></html>")
    return "\n".join(parts) + "\n"
