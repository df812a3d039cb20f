from __future__ import annotations

import csv
import gzip
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from model.features import is_finite, vector
from stream.core.events import Event, Rejected, decode
from stream.core.fold import fold_all
from stream.training.importers import (
    ImportResult,
    Kind,
    import_online_retail,
    import_rees46,
    read_input,
    records_for_topics,
)
from tests.stream.test_cli import segmenter

# The two real samples from ../shared/data, committed gzipped (108 KB) so the
# tests never depend on a file outside the checkout.
DATA = Path(__file__).resolve().parents[1] / "data"


def _sample(name: str) -> Path:
    out = Path(tempfile.gettempdir()) / "segmenter-test-samples" / name
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(gzip.decompress((DATA / f"{name}.gz").read_bytes()))
        tmp.replace(out)  # atomic: parallel runs never read half a file
    return out


RETAIL = _sample("online_retail_sample.csv")
REES46 = _sample("rees46_2019-Oct-sample.csv")
NOW = int(time.time() * 1000)

RETAIL_II_HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
RETAIL_HEADER = '"","InvoiceNo","StockCode","Description","Quantity","InvoiceDate","UnitPrice","CustomerID","Country"\n'  # noqa: E501
REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
)


def _utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def _decode_all(result: ImportResult) -> list[Event]:
    events: list[Event] = []
    for kind, key, value in result.records:
        decoded = decode(kind, key.encode(), orjson.dumps(value), now_ms=NOW)
        assert not isinstance(decoded, Rejected), (decoded, value)
        events.append(decoded)
    return events


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ the shared samples


@pytest.mark.parametrize(
    "importer, path", [(import_online_retail, RETAIL), (import_rees46, REES46)]
)
def test_sample_imports_decode_without_rejections_and_in_time_order(
    importer: Callable[[Path], ImportResult], path: Path
) -> None:
    result = importer(path)
    events = _decode_all(result)
    assert events
    times = [e.timestamp for e in events]
    assert times == sorted(times)
    assert len({e.event_id for e in events}) == len(events)


def test_online_retail_sample_one_order_per_invoice_with_a_customer() -> None:
    with RETAIL.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with_customer = {r["InvoiceNo"] for r in rows if r["CustomerID"] != "NA"}
    result = import_online_retail(RETAIL)

    assert {v["order_id"] for _, _, v in result.records} == with_customer
    assert len(result.records) == len(with_customer)
    assert all(kind == "orders" for kind, _, _ in result.records)
    assert result.skipped["no_customer"] == sum(r["CustomerID"] == "NA" for r in rows)
    cancelled = [v for _, _, v in result.records if v["event_type"] == "order_cancelled"]
    assert cancelled
    assert all(v["order_id"].startswith("C") for v in cancelled)
    assert all(
        v["order_id"].startswith("C") == (v["event_type"] == "order_cancelled")
        for _, _, v in result.records
    )


def test_online_retail_sample_dates_are_london_local_time() -> None:
    by_invoice = {v["order_id"]: v for _, _, v in import_online_retail(RETAIL).records}
    # "6/12/2011 12:34" is summer: BST, one hour ahead of UTC.
    assert by_invoice["556478"]["timestamp"] == _utc_ms(2011, 6, 12, 11, 34)
    # "1/9/2011 11:27" is winter: GMT equals UTC.
    assert by_invoice["540509"]["timestamp"] == _utc_ms(2011, 1, 9, 11, 27)
    assert by_invoice["556478"]["user_id"] == "13069"
    assert by_invoice["556478"]["total"] == 30.0
    assert by_invoice["556478"]["items"] == [
        {"product_id": "22178", "quantity": 24, "unit_price": 1.25}
    ]


def test_rees46_sample_purchases_become_orders_and_the_rest_clicks() -> None:
    with REES46.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    result = import_rees46(REES46)

    purchases = sum(r["event_type"] == "purchase" for r in rows)
    assert purchases > 0
    assert result.count("orders", "order_placed") == purchases
    assert result.count("orders") == purchases
    assert result.count("clickstream") == len(rows) - purchases
    assert not result.skipped
    first = result.records[0]
    assert first[0] == "clickstream"
    assert first[2]["timestamp"] == 1_569_888_000_000  # 2019-10-01T00:00:00Z
    assert first[2]["event_type"] == "product_view"
    for _, _, v in result.records:
        if v["event_type"] == "order_placed":
            (item,) = v["items"]
            assert v["total"] == item["unit_price"]
            assert item["quantity"] == 1


@pytest.mark.parametrize(
    "importer, path", [(import_online_retail, RETAIL), (import_rees46, REES46)]
)
def test_every_imported_user_has_finite_features(
    importer: Callable[[Path], ImportResult], path: Path
) -> None:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in _decode_all(importer(path)):
        by_user[event.user_id].append(event)
    stream_time = max(e.timestamp for events in by_user.values() for e in events)
    for user, events in by_user.items():
        assert is_finite(vector(fold_all(events), stream_time)), user


def test_rees46_sample_has_click_only_and_ordering_users() -> None:
    kinds: dict[str, set[str]] = defaultdict(set)
    for kind, user, _ in import_rees46(REES46).records:
        kinds[user].add(kind)
    assert any(k == {"clickstream"} for k in kinds.values())
    assert any("orders" in k for k in kinds.values())


# ------------------------------------------------------------------ format details


def test_online_retail_groups_lines_and_signs_cancellations(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "retail.csv",
        RETAIL_HEADER
        + '"1","536365","85123A","HEART",6,"12/1/2010 8:26",2.55,17850.0,"United Kingdom"\n'
        + '"2","536365","71053","LANTERN",6,"12/1/2010 8:27",3.39,17850.0,"United Kingdom"\n'
        + '"3","C536379","D","Discount",-1,"12/1/2010 9:41",27.5,14527,"United Kingdom"\n'
        + '"4","C536379","22556","PLASTERS",-12,"12/1/2010 9:41",1.65,14527,"United Kingdom"\n'
        + '"5","536366","22633","HAND WARMER",6,"12/1/2010 8:28",1.85,NA,"United Kingdom"\n'
        + '"6","A563186","B","Adjust bad debt",1,"8/12/2011 14:51",-11062.06,17850,"UK"\n'
        + '"7","536367","84879","BIRD",0,"12/1/2010 8:34",1.69,13047,"United Kingdom"\n'
        + '"8","554145","84313C","",-12,"5/23/2011 10:43",0,13047,"United Kingdom"\n'
        + '"9","536368","22960","JAM",6,"not a date",4.25,13047,"United Kingdom"\n'
        + '"10","536369","23843","DOILY",2000000,"12/1/2010 9:00",1,13047,"United Kingdom"\n'
        + '"11","536370","23166","JAR",80000,"12/1/2010 9:00",100,13047,"United Kingdom"\n'
        + '"12","536370","23167","JAR",80000,"12/1/2010 9:00",100,13047,"United Kingdom"\n',
    )
    result = import_online_retail(path)

    assert result.skipped == {
        "no_customer": 1,
        "negative_price": 1,
        "zero_quantity": 1,
        "quantity_sign": 1,
        "bad_timestamp": 1,
        "out_of_range": 3,  # one huge quantity, and an invoice totalling over 10M
    }
    placed, cancelled = (v for _, _, v in result.records)
    assert placed["event_id"] == "oretail-536365"
    assert placed["user_id"] == "17850"  # not "17850.0"
    assert placed["timestamp"] == _utc_ms(2010, 12, 1, 8, 26)  # the invoice's first line
    assert placed["total"] == 35.64  # 6 * 2.55 + 6 * 3.39, rounded once
    assert placed["currency"] == "GBP"
    assert [i["product_id"] for i in placed["items"]] == ["85123A", "71053"]
    assert cancelled["event_type"] == "order_cancelled"
    assert cancelled["order_id"] == "C536379"
    assert cancelled["total"] == 47.3  # 1 * 27.5 + 12 * 1.65
    assert [i["quantity"] for i in cancelled["items"]] == [1, 12]
    _decode_all(result)


def test_online_retail_oversized_invoice_is_cut_to_fit_the_decoder(tmp_path: Path) -> None:
    lines = "".join(
        f'"{n}","536365","P{n:05d}","X",1,"12/1/2010 8:26",1.5,17850,"United Kingdom"\n'
        for n in range(1500)
    )
    result = import_online_retail(_write(tmp_path, "big.csv", RETAIL_HEADER + lines))

    (value,) = (v for _, _, v in result.records)
    assert result.truncated_items == 1
    assert len(value["items"]) == 1000
    assert value["total"] == 2250.0  # every line still counts towards the total
    _decode_all(result)


def test_rees46_maps_event_types_categories_and_sessions(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "rees.csv",
        REES46_HEADER
        + "2019-10-01 10:00:00 UTC,view,1,2053013555631882655,electronics.smartphone,apple,500.00,7,s1\n"  # noqa: E501
        + "2019-10-01 10:00:05 UTC,cart,1,2053013555631882655,,apple,500.00,7,s1\n"
        + "2019-10-01 10:00:07 UTC,remove_from_cart,1,2053013555631882655,,apple,500.00,7,s1\n"
        + "2019-10-01 10:01:00 UTC,purchase,1,2053013555631882655,,apple,500.00,7,s1\n"
        + "2019-10-01 10:02:00 UTC,view,2,9,,,10.00,8,\n"
        + "2019-10-01 10:03:00 UTC,wishlist,2,9,,,10.00,8,s2\n"
        + "2019-10-01 10:04:00 UTC,view,2,9,,,-1,8,s2\n",
    )
    result = import_rees46(path)

    assert result.skipped == {"no_session": 1, "unknown_event_type": 1, "bad_price": 1}
    view, cart, removal, purchase = result.records
    assert view[2]["category"] == "electronics.smartphone"
    assert cart[2]["category"] == "2053013555631882655"  # no code: falls back to the id
    assert [r[2]["event_type"] for r in (view, cart, removal)] == [
        "product_view",
        "add_to_cart",
        "remove_from_cart",
    ]
    assert {r[2]["session_id"] for r in (view, cart, removal)} == {"s1"}
    ts = _utc_ms(2019, 10, 1, 10, 1)
    assert purchase == (
        "orders",
        "7",
        {
            "event_id": f"rees46-{ts}-4",
            "event_type": "order_placed",
            "user_id": "7",
            "order_id": f"s1-1-{ts}",
            "timestamp": ts,
            "total": 500.0,
            "items": [
                {
                    "product_id": "1",
                    "quantity": 1,
                    "unit_price": 500.0,
                    "category": "2053013555631882655",
                }
            ],
        },
    )
    _decode_all(result)
    # Importing again gives the same ids, so the worker can drop a re-import.
    assert import_rees46(path).records == result.records


def test_records_for_topics_uses_the_given_topic_names(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "rees.csv",
        REES46_HEADER
        + "2019-10-01 10:00:00 UTC,view,1,5,,,5.00,7,s1\n"
        + "2019-10-01 10:01:00 UTC,purchase,1,5,,,5.00,7,s1\n",
    )
    raw = list(records_for_topics(import_rees46(path), "t-clicks", "t-orders"))

    assert [topic for topic, _, _ in raw] == ["t-clicks", "t-orders"]
    for topic, key, value in raw:
        assert key == b"7"
        kind: Kind = "clickstream" if topic == "t-clicks" else "orders"
        assert not isinstance(decode(kind, key, value, now_ms=NOW), Rejected)


# ------------------------------------------------------------------ Online Retail II


def _as_online_retail_ii(tmp_path: Path, *, iso_dates: bool) -> Path:
    """The shared sample in the Online Retail II layout: renamed columns, no index
    column, ids as Excel writes them ("12488.0", empty when missing), and with
    ``iso_dates`` the ``2009-12-01 07:45:00`` form of the dates."""
    with RETAIL.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    path = tmp_path / "online_retail_II.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(RETAIL_II_HEADER.strip().split(","))
        for r in rows:
            date = r["InvoiceDate"]
            if iso_dates:
                date = datetime.strptime(date, "%m/%d/%Y %H:%M").strftime("%Y-%m-%d %H:%M:%S")
            customer = "" if r["CustomerID"] == "NA" else f"{float(r['CustomerID']):.1f}"
            line = {**r, "InvoiceDate": date, "CustomerID": customer}
            # The classic columns in the order of RETAIL_II_HEADER, minus the index.
            out.writerow(line[c] for c in RETAIL_HEADER.replace('"', "").strip().split(",")[1:])
    return path


@pytest.mark.parametrize("iso_dates", [False, True], ids=["us-dates", "iso-dates"])
def test_online_retail_ii_layout_gives_the_same_events_as_the_classic_one(
    tmp_path: Path, iso_dates: bool
) -> None:
    classic = import_online_retail(RETAIL)
    second = import_online_retail(_as_online_retail_ii(tmp_path, iso_dates=iso_dates))

    assert len(classic.records) > 100
    assert second.records == classic.records
    # "NA" and an empty cell are both no customer; every other reason is the same.
    assert second.skipped == classic.skipped
    assert "Online Retail II" in second.layout and "Customer ID" in second.layout
    assert "Online Retail II" not in classic.layout and "CustomerID" in classic.layout


def test_online_retail_ii_rows_as_published(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "online_retail_II.csv",
        RETAIL_II_HEADER
        + "489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom\n"  # noqa: E501
        + "489434,79323P,PINK CHERRY LIGHTS,12,2009-12-01 07:45:00,6.75,13085.0,United Kingdom\n"
        + "C489449,22087,PAPER BUNTING WHITE LACE,-12,2009-12-01 10:33:00,2.95,16321.0,Australia\n"
        + "489464,21733,85123a mixed,-96,2009-12-01 10:52:00,0.0,,United Kingdom\n",
    )
    result = import_online_retail(path)

    assert result.skipped == {"no_customer": 1}
    placed, cancelled = (v for _, _, v in result.records)
    assert placed["user_id"] == "13085"  # not "13085.0"
    assert placed["order_id"] == "489434"
    assert placed["timestamp"] == _utc_ms(2009, 12, 1, 7, 45)  # GMT in December
    assert placed["total"] == 164.4  # 12 * 6.95 + 12 * 6.75
    assert cancelled["event_type"] == "order_cancelled"
    assert cancelled["user_id"] == "16321"
    assert [i["quantity"] for i in cancelled["items"]] == [12]
    _decode_all(result)


def test_a_header_of_neither_layout_names_both(tmp_path: Path) -> None:
    path = _write(tmp_path, "orders.csv", "order,sku,qty\n1,A,2\n")
    with pytest.raises(ValueError, match=r"Online Retail .*InvoiceNo.* or .*Online Retail II"):
        import_online_retail(path)


# ------------------------------------------------------------------ every row skipped


def test_a_file_of_which_every_row_is_skipped_is_refused_with_the_counts(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path,
        "rees.csv",
        REES46_HEADER
        + "2019-10-01 10:00:00 UTC,view,1,5,,,5.00,,s1\nyesterday,view,1,5,,,5,7,s1\n",
    )
    with pytest.raises(ValueError, match=r"all 2 rows .*no_user 1.*bad_timestamp 1.*REES46"):
        read_input(path, "rees46", clickstream_topic="c", orders_topic="o")


def test_cli_refuses_an_all_skipped_file_in_one_line_with_counts_and_layout(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path,
        "retail.csv",
        RETAIL_HEADER
        + '"1","536365","85123A","HEART",6,"12/1/2010 8:26",2.55,NA,"United Kingdom"\n'
        + '"2","536365","71053","LANTERN",6,"12/1/2010 8:27",3.39,NA,"United Kingdom"\n'
        + '"3","536366","22633","HAND WARMER",six,"12/1/2010 8:28",1.85,17850,"UK"\n',
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    # No broker answers here: the file must be refused before one is needed.
    env["SEGMENTER_KAFKA_URL"] = "kafka://127.0.0.1:1"
    out = segmenter("produce", str(path), "--format", "online-retail", env=env)

    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert str(path) in line
    assert "all 3 rows" in line and "no_customer 2" in line and "malformed 1" in line
    assert "UCI Online Retail (columns InvoiceNo," in line
    assert "Traceback" not in out.stderr
