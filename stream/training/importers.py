"""Importers for two public e-commerce datasets, as records for our input topics.

Pure: no Kafka. Each importer reads a CSV with the ``csv`` module, turns rows into
``clickstream`` / ``orders`` values that pass :func:`stream.core.events.decode`, and
counts every row it could not use under a reason, so a data team can see what
was dropped instead of wondering why the numbers are smaller.

* UCI Online Retail (orders only): invoice lines are grouped into one order event
  per invoice number; ``C``-prefixed invoices become ``order_cancelled``. Both
  published layouts are read, told apart by their header: Online Retail
  (``InvoiceNo``, ``UnitPrice``, ``CustomerID``) and Online Retail II (``Invoice``,
  ``Price``, ``Customer ID``); see :data:`RETAIL_LAYOUTS`.
* REES46 e-commerce behaviour (2019-Oct/Nov...): views, carts and removals become
  clickstream events; purchases become ``order_placed`` events (one per row).

``ImportResult.skipped`` counts CSV *rows* (invoice lines for Online Retail).
:func:`read_input` refuses a file of which every row was skipped (a ValueError
with the counts and the layout it was read as), rather than return nothing.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson

from stream.core.events import MAX_MONEY, DecodeLimits

Kind = Literal["clickstream", "orders"]
Record = tuple[Kind, str, dict[str, Any]]

#: Online Retail times are shop-floor local time in the UK, so half of the year
#: they are BST (UTC+1); reading them as UTC would shift those orders by an hour.
LONDON = ZoneInfo("Europe/London")
_OR_DATE_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")

#: The decoder refuses longer item lists and larger values; an order that big is
#: cut down to the items that fit (its total still counts every line).
_MAX_ITEMS = 1000
_MAX_VALUE_BYTES = DecodeLimits().max_bytes
_MAX_QUANTITY = 1_000_000

_REES46_CLICKS: dict[str, str] = {
    "view": "product_view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
}


@dataclass
class ImportResult:
    """``records`` are ``(kind, key=user_id, value)``, sorted by event time."""

    records: list[Record] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    #: orders whose item list was shortened to fit the decoder's limits
    truncated_items: int = 0
    #: what the file was read as, with the columns that layout takes, for messages
    layout: str = ""

    def count(self, kind: Kind, event_type: str | None = None) -> int:
        return sum(
            1
            for k, _, v in self.records
            if k == kind and (event_type is None or v["event_type"] == event_type)
        )


def records_for_topics(
    result: ImportResult, clickstream_topic: str, orders_topic: str
) -> Iterator[tuple[str, bytes, bytes]]:
    """``(topic, key bytes, JSON value bytes)``, ready for
    :func:`stream.training.produce.produce`."""
    topics = {"clickstream": clickstream_topic, "orders": orders_topic}
    for kind, key, value in result.records:
        yield topics[kind], key.encode(), orjson.dumps(value)


# --------------------------------------------------------------------------- Online Retail


@dataclass(frozen=True)
class RetailLayout:
    """One published layout of the UCI file: the header name of each field we read."""

    name: str
    invoice: str
    stock_code: str
    quantity: str
    date: str
    price: str
    customer: str

    def columns(self) -> dict[str, str]:
        """Field → header name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}

    def describe(self) -> str:
        return f"UCI {self.name} (columns {', '.join(self.columns().values())})"


#: Same rows, renamed columns (Online Retail II also publishes ISO dates and,
#: from Excel, customer ids as floats; the parsing below takes both forms).
RETAIL_LAYOUTS = (
    RetailLayout(
        name="Online Retail",
        invoice="InvoiceNo",
        stock_code="StockCode",
        quantity="Quantity",
        date="InvoiceDate",
        price="UnitPrice",
        customer="CustomerID",
    ),
    RetailLayout(
        name="Online Retail II",
        invoice="Invoice",
        stock_code="StockCode",
        quantity="Quantity",
        date="InvoiceDate",
        price="Price",
        customer="Customer ID",
    ),
)


def _retail_columns(header: list[str]) -> tuple[RetailLayout, dict[str, int]]:
    """The layout whose columns the header has, and each field's column index.

    Surrounding spaces in header names are ignored; a header that fits neither
    layout is a ValueError naming what each one needs.
    """
    index = {name.strip(): i for i, name in enumerate(header)}
    for layout in RETAIL_LAYOUTS:
        columns = layout.columns()
        if all(column in index for column in columns.values()):
            return layout, {f: index[column] for f, column in columns.items()}
    expected = " or ".join(layout.describe() for layout in RETAIL_LAYOUTS)
    found = ", ".join(name.strip() for name in header) or "no header"
    raise ValueError(f"not an Online Retail file: expected {expected}; found {found}")


def _customer_id(text: str) -> str | None:
    text = text.strip()
    if not text or text.upper() in ("NA", "NAN", "NULL", "NONE"):
        return None
    # Exports via pandas write the id as a float ("12488.0"); the id is the integer.
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer():
        return str(int(number))
    return text


def _london_ms(text: str) -> int:
    text = text.strip()
    for fmt in _OR_DATE_FORMATS:
        try:
            naive = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return int(naive.replace(tzinfo=LONDON).timestamp() * 1000)
    raise ValueError(f"unrecognised InvoiceDate {text!r}")


@dataclass
class _Invoice:
    user_id: str
    timestamp: int
    cancelled: bool
    total: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)


def import_online_retail(path: Path) -> ImportResult:
    """UCI Online Retail (either layout) CSV → one ``orders`` event per invoice with a customer."""
    result = ImportResult()
    invoices: dict[str, _Invoice] = {}
    # utf-8-sig: a CSV saved from Excel starts with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        layout, columns = _retail_columns(next(reader, []))
        result.layout = layout.describe()
        for line in reader:
            if not line:
                continue  # csv yields [] for a blank line; DictReader skipped those too
            row = {f: line[i] if i < len(line) else "" for f, i in columns.items()}
            reason = _add_invoice_line(invoices, row)
            if reason is not None:
                result.skipped[reason] += 1

    for invoice_no, inv in invoices.items():
        if inv.total > MAX_MONEY:
            # The decoder would dead-letter it as a unit error; say so here instead.
            result.skipped["out_of_range"] += len(inv.items)
            continue
        value: dict[str, Any] = {
            "event_id": f"oretail-{invoice_no}",
            "event_type": "order_cancelled" if inv.cancelled else "order_placed",
            "user_id": inv.user_id,
            "order_id": invoice_no,
            "timestamp": inv.timestamp,
            # Summing many 2dp prices drifts in binary floats; round once at the end.
            "total": round(inv.total, 2),
            "currency": "GBP",
            "items": inv.items,
        }
        if _fit_items(value):
            result.truncated_items += 1
        result.records.append(("orders", inv.user_id, value))
    # Invoice numbers break ties so that two imports of one file are identical.
    result.records.sort(key=lambda r: (r[2]["timestamp"], r[2]["order_id"]))
    return result


def _add_invoice_line(invoices: dict[str, _Invoice], row: dict[str, str]) -> str | None:
    """Add one CSV line (by field, see :class:`RetailLayout`) to its invoice; return a
    skip reason, or None when used."""
    invoice_no = row["invoice"].strip()
    stock_code = row["stock_code"].strip()
    if not invoice_no or not stock_code:
        return "malformed"
    user_id = _customer_id(row["customer"])
    if user_id is None:
        return "no_customer"
    try:
        quantity_f = float(row["quantity"])
        price = float(row["price"])
    except ValueError:
        return "malformed"
    if not (math.isfinite(quantity_f) and math.isfinite(price)) or not quantity_f.is_integer():
        return "malformed"
    try:
        ts = _london_ms(row["date"])
    except ValueError:
        return "bad_timestamp"
    quantity = int(quantity_f)
    if price < 0:
        # "Adjust bad debt" lines: accounting entries, not something a customer bought.
        return "negative_price"
    if quantity == 0:
        return "zero_quantity"
    if abs(quantity) > _MAX_QUANTITY or price > MAX_MONEY:
        return "out_of_range"
    cancelled = invoice_no.upper().startswith("C")
    # Outside cancellations a negative quantity is a stock write-off ("damaged",
    # "check"), and a positive one on a cancellation contradicts it: neither is
    # customer behaviour we can sign correctly.
    if (quantity < 0) != cancelled:
        return "quantity_sign"

    inv = invoices.get(invoice_no)
    if inv is None:
        inv = invoices[invoice_no] = _Invoice(user_id=user_id, timestamp=ts, cancelled=cancelled)
    elif inv.user_id != user_id:
        return "customer_mismatch"
    # Lines of one invoice can straddle a minute; the order happened when it began.
    inv.timestamp = min(inv.timestamp, ts)
    qty = abs(quantity)
    inv.total += qty * price
    inv.items.append({"product_id": stock_code, "quantity": qty, "unit_price": price})
    return None


def _fit_items(value: dict[str, Any]) -> bool:
    """Shorten ``items`` until the value passes the decoder's limits; True if it did."""
    items: list[dict[str, Any]] = value["items"]
    cut = len(items) > _MAX_ITEMS
    del items[_MAX_ITEMS:]
    # Halving converges in a few steps even for a pathological invoice.
    while items and len(orjson.dumps(value)) > _MAX_VALUE_BYTES:
        del items[len(items) // 2 :]
        cut = True
    return cut


# --------------------------------------------------------------------------- REES46


def _rees46_ms(text: str) -> int:
    text = text.strip()
    if text.endswith(" UTC"):
        parsed = datetime.fromisoformat(text[:-4]).replace(tzinfo=UTC)
    else:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError(f"event_time {text!r} has no zone")
    return int(parsed.timestamp() * 1000)


_REES46_LAYOUT = (
    "REES46 (columns event_time, event_type, product_id, category_id, category_code, "
    "price, user_id, user_session)"
)


def import_rees46(path: Path) -> ImportResult:
    """REES46 behaviour CSV → clickstream events, plus one ``orders`` event per purchase."""
    result = ImportResult(layout=_REES46_LAYOUT)
    with path.open(newline="", encoding="utf-8") as fh:
        # Row numbers start at 1 for the first data row, after the header.
        for row_number, row in enumerate(csv.DictReader(fh), 1):
            record = _rees46_record(row_number, row)
            if isinstance(record, str):
                result.skipped[record] += 1
            else:
                result.records.append(record)
    # Stable sort: rows sharing a second keep their file order.
    result.records.sort(key=lambda r: r[2]["timestamp"])
    return result


def _rees46_record(row_number: int, row: dict[str, str | None]) -> Record | str:
    """One row as a record, or the reason it was skipped."""
    event_type = (row.get("event_type") or "").strip()
    user_id = (row.get("user_id") or "").strip()
    product_id = (row.get("product_id") or "").strip()
    session = (row.get("user_session") or "").strip()
    if not user_id:
        return "no_user"
    try:
        ts = _rees46_ms(row.get("event_time") or "")
    except ValueError:
        return "bad_timestamp"
    try:
        price = float(row.get("price") or "")
    except ValueError:
        return "bad_price"
    if not math.isfinite(price) or not 0 <= price <= MAX_MONEY:
        return "bad_price"
    category = (row.get("category_code") or "").strip() or (row.get("category_id") or "").strip()
    # Time plus row keeps ids unique across monthly files imported side by side,
    # while re-importing the same file gives the same ids (the worker dedups them).
    event_id = f"rees46-{ts}-{row_number}"

    if event_type == "purchase":
        if not product_id:
            return "no_product"
        item: dict[str, Any] = {"product_id": product_id, "quantity": 1, "unit_price": price}
        if category:
            item["category"] = category
        order: dict[str, Any] = {
            "event_id": event_id,
            "event_type": "order_placed",
            "user_id": user_id,
            # A purchase row has no order id; a session can buy several products,
            # so the product and time make it unique within the session.
            "order_id": f"{session or user_id}-{product_id}-{ts}",
            "timestamp": ts,
            "total": price,
            "items": [item],
        }
        return ("orders", user_id, order)

    click_type = _REES46_CLICKS.get(event_type)
    if click_type is None:
        return "unknown_event_type"
    if not session:
        return "no_session"
    click: dict[str, Any] = {
        "event_id": event_id,
        "event_type": click_type,
        "user_id": user_id,
        "session_id": session,
        "timestamp": ts,
        "price": price,
    }
    if product_id:
        click["product_id"] = product_id
    if category:
        click["category"] = category
    return ("clickstream", user_id, click)


FORMATS = ("jsonl", "csv", "parquet", "online-retail", "rees46")


def read_input(
    path: Path, fmt: str, *, clickstream_topic: str, orders_topic: str
) -> tuple[Iterator[tuple[str, bytes | None, bytes]], Counter[str]]:
    """Records of any supported file, with the input-topic names; plus rows skipped on import.

    ``jsonl``, ``csv`` and ``parquet`` hold plain events or the records of
    `segmenter generate` / `segmenter export` (:mod:`stream.training.event_files`); the
    skipped counts fill in as the records are read.
    """
    from stream.training.event_files import Router, read_csv, read_jsonl, read_parquet

    if fmt == "online-retail":
        result = import_online_retail(path)
    elif fmt == "rees46":
        result = import_rees46(path)
    elif fmt in ("jsonl", "csv", "parquet"):
        router = Router(clickstream_topic, orders_topic)
        reader = {"jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet}[fmt]
        return reader(path, router), router.skipped
    else:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    _require_records(result)
    return records_for_topics(result, clickstream_topic, orders_topic), result.skipped


def _require_records(result: ImportResult) -> None:
    """A file of which every row was skipped is a mistake to report, not 0 records."""
    if result.records or not result.skipped:
        return
    counts = ", ".join(f"{reason} {n:,}" for reason, n in result.skipped.most_common())
    raise ValueError(
        f"no records: all {result.skipped.total():,} rows were skipped ({counts}); "
        f"read as {result.layout}"
    )
