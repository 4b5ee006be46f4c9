"""The e-bill: one issued bill as HTML (page, e-mail) and PDF (print, archive), both in
Chinese and English, from the bill's own immutable rows.

PDF: reportlab (BSD, on PyPI, pure Python with optional C speedups) because its built-in CID
font ``STSong-Light`` prints Chinese without shipping or embedding a font file (the reader's
Asian font pack renders it); fpdf2 would need a CJK TrueType font on the machine.
"""

from __future__ import annotations

import html
import io
from decimal import Decimal

from billing.postpaid import Bill, BillLine

_LABELS = [
    ("period", "账期", "Period"),
    ("issued", "出账日期", "Issued"),
    ("due", "缴费截止日", "Due date"),
    ("class", "用户类别", "Customer class"),
    ("tariff", "电价", "Tariff"),
    ("kwh", "用电量 (kWh)", "Energy (kWh)"),
    ("opening", "上期结余", "Previous balance"),
    ("charges", "本期电费", "Charges this period"),
    ("corrections", "以前期间更正", "Corrections of earlier periods"),
    ("adjustments", "调整", "Adjustments"),
    ("penalties", "违约金", "Late-payment penalties"),
    ("payments", "已缴费", "Payments"),
    ("closing", "本期结余", "Balance"),
    ("amount_due", "应缴金额", "Amount due"),
]


def _values(bill: Bill) -> dict[str, str]:
    def yuan(v: Decimal) -> str:
        return f"{v:,.2f}"

    return {
        "period": f"{bill.period_start} – {bill.period_end}",
        "issued": bill.issued_at.date().isoformat(),
        "due": bill.due_date.isoformat(),
        "class": bill.customer_class,
        "tariff": bill.tariff_id,
        "kwh": f"{bill.kwh:,.2f}",
        "opening": yuan(bill.opening),
        "charges": yuan(bill.charges),
        "corrections": yuan(bill.corrections),
        "adjustments": yuan(bill.adjustments),
        "penalties": yuan(bill.penalties),
        "payments": yuan(bill.payments),
        "closing": yuan(bill.closing),
        "amount_due": yuan(bill.amount_due),
    }


def render_html(bill: Bill, lines: list[BillLine], name: str = "") -> str:
    """A self-contained HTML page (no scripts, inline style); all values escaped."""
    e = html.escape
    vals = _values(bill)
    summary = "\n".join(
        f"<tr><th>{e(zh)} / {e(en)}</th><td>{e(vals[key])}</td></tr>" for key, zh, en in _LABELS
    )
    detail = "\n".join(
        f"<tr><td>{ln.line_no}</td><td>{e(ln.kind)}</td><td>{e(ln.description)}</td>"
        f"<td class=n>{ln.amount:,.2f}</td></tr>"
        for ln in lines
    )
    meters = "\n".join(
        f"<tr><td>{e(m['meter'])}</td><td>{e(m['band'])}</td><td>{e(m['tier'])}</td>"
        f"<td class=n>{e(m['price'])}</td><td class=n>{e(m['kwh'])}</td>"
        f"<td class=n>{e(m['amount'])}</td></tr>"
        for m in bill.breakdown
    )
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>电费账单 Electricity bill {e(bill.account_id)} {e(vals["period"])}</title>
<style>body{{font-family:sans-serif;max-width:48em;margin:2em auto}}
table{{border-collapse:collapse;width:100%;margin:1em 0}}
th,td{{border-bottom:1px solid #ccc;padding:.3em;text-align:left}}.n{{text-align:right}}
.due{{font-size:1.4em;font-weight:bold}}</style></head><body>
<h1>电费账单 / Electricity bill</h1>
<p>户号 Account <b>{e(bill.account_id)}</b> {e(name)} · 账单号 Bill no. {bill.bill_id}</p>
<p class="due">应缴金额 Amount due: {e(vals["amount_due"])} 元 yuan ·
缴费截止 due {e(vals["due"])}</p>
<table>{summary}</table>
<h2>计量点与分时分档 / Meters, time-of-use bands and tiers</h2>
<table><tr><th>meter</th><th>时段 band</th><th>档 tier</th><th class=n>电价 price</th>
<th class=n>kWh</th><th class=n>元 yuan</th></tr>{meters}</table>
<h2>明细 / Lines</h2>
<table><tr><th>#</th><th>kind</th><th>description</th><th class=n>元 yuan</th></tr>
{detail}</table>
<p>逾期未缴按日加收违约金（居民 1‰，其他用户当年欠费 2‰、跨年欠费 3‰，不足 1 元按 1 元）。
Late payment: a daily penalty (residential 1‰; others 2‰ of this year's arrears, 3‰ of
arrears carried across years; at least 1 yuan).</p>
</body></html>
"""


def render_pdf(bill: Bill, lines: list[BillLine], name: str = "") -> bytes:
    """The same bill as a one-or-more-page A4 PDF."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    font = "STSong-Light"
    if font not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(font))
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4, invariant=True)
    pdf.setTitle(f"Electricity bill {bill.account_id} {bill.period_start}")
    height = A4[1]
    y = height - 60

    def write(text: str, size: int = 10, x: float = 50) -> None:
        nonlocal y
        if y < 60:
            pdf.showPage()
            y = height - 60
        pdf.setFont(font, size)
        pdf.drawString(x, y, text[:110])
        y -= size + 6

    write("电费账单 / Electricity bill", 16)
    write(f"户号 Account {bill.account_id} {name}   账单号 Bill no. {bill.bill_id}")
    vals = _values(bill)
    for key, zh, en in _LABELS:
        write(f"{zh} / {en}: {vals[key]}")
    y -= 6
    write("计量点与分时分档 / Meters, bands and tiers", 12)
    for m in bill.breakdown:
        tier = f" tier {m['tier']}" if m["tier"] else ""
        price = f" @ {m['price']}" if m["price"] else ""
        write(f"{m['meter']}  {m['band']}{tier}{price}   {m['kwh']} kWh   {m['amount']} yuan")
    y -= 6
    write("明细 / Lines", 12)
    for ln in lines:
        write(f"{ln.line_no:>3}  {ln.kind:<11} {ln.description[:60]:<60} {ln.amount:>12,.2f}")
    pdf.showPage()
    pdf.save()
    return out.getvalue()
