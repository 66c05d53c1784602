"""Loading any labelled sensor data from CSV / Parquet files, and splitting it per device."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flead.evaluation.loader import device_like_columns, load_labelled, load_train_test, split_series


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def sites(tmp_path: Path) -> Path:
    """Two sites with a file named 0.csv each, ';'-separated, one device per file, no time column."""
    root = tmp_path / "data"
    write(root / "site-a" / "0.csv", "temp;hum;note;anomaly\n20.0;40;ok;0\n21.5;41;ok;1\n22.0;42;x;0\n")
    write(root / "site-b" / "0.csv", "temp;hum;note;anomaly\n10.0;50;ok;0\n11.0;51;ok;0\n")
    write(root / "site-b" / "readme.txt", "not data")
    return root


def test_one_device_per_file_named_by_path_below_the_common_folder(sites: Path) -> None:
    loaded = load_labelled([sites], separator=";", label="anomaly")
    frame = loaded.frame
    assert frame.columns == ["device_id", "row", "temp", "hum", "label"]
    assert frame["device_id"].to_list() == ["site-a/0"] * 3 + ["site-b/0"] * 2
    assert frame["row"].to_list() == [0, 1, 2, 0, 1]
    assert frame["temp"].to_list() == [20.0, 21.5, 22.0, 10.0, 11.0]
    assert frame["label"].to_list() == [0, 1, 0, 0, 0]
    assert frame.schema["hum"] == pl.Float64 and frame.schema["label"] == pl.Int8
    assert loaded.features == ("temp", "hum")  # numeric columns only, the label excluded
    assert loaded.order_column == "row"

    files = [sites / "site-b" / "0.csv", sites / "site-a" / "0.csv"]
    again = load_labelled(files, separator=";", label="anomaly")
    assert again.frame.equals(frame)


def test_device_column_pools_files_and_sorts_by_time(tmp_path: Path) -> None:
    write(
        tmp_path / "day2.csv",
        "when,mote,t,is_anomaly\n2024-01-02 00:00:00,m1,3.0,1\n2024-01-02 00:00:00,m2,30.0,0\n",
    )
    write(
        tmp_path / "day1.csv",
        "when,mote,t,is_anomaly\n2024-01-01 12:00:00,m1,2.0,0\n2024-01-01 06:00:00,m1,1.0,0\n"
        "2024-01-01 09:00:00,m2,20.0,0\n",
    )
    loaded = load_labelled([tmp_path], time="when", device="mote", label="is_anomaly")
    frame = loaded.frame
    assert frame.columns == ["device_id", "ts", "t", "label"]
    assert frame.schema["ts"] == pl.Datetime("us", "UTC")
    assert frame["device_id"].to_list() == ["m1", "m1", "m1", "m2", "m2"]
    assert frame["t"].to_list() == [1.0, 2.0, 3.0, 20.0, 30.0]
    assert loaded.order_column == "ts"


def test_parquet_with_boolean_labels_and_aware_times(tmp_path: Path) -> None:
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    pl.DataFrame(
        {
            "time": [t0 + timedelta(seconds=30 * i) for i in (2, 0, 1)],
            "temperature": [20, 21, 22],
            "voltage": [2.6, 2.7, 2.8],
            "site": ["a", "a", "a"],
            "bad": [False, True, False],
        }
    ).write_parquet(tmp_path / "readings.parquet")
    loaded = load_labelled([tmp_path / "readings.parquet"], time="time", label="bad")
    frame = loaded.frame
    assert loaded.features == ("temperature", "voltage")
    assert frame["device_id"].unique().to_list() == ["readings"]
    assert frame["temperature"].to_list() == [21.0, 22.0, 20.0]
    assert frame["label"].to_list() == [1, 0, 0]
    assert frame["ts"][0] == t0


def test_labels_as_strings_numbers_and_booleans(tmp_path: Path) -> None:
    text = "x,label\n" + "".join(
        f"{i},{v}\n" for i, v in enumerate(["True", "false", "YES", "no", " 1", "0", "2.5"])
    )
    frame = load_labelled([write(tmp_path / "s.csv", text)]).frame
    assert frame["label"].to_list() == [1, 0, 1, 0, 1, 0, 1]
    numeric = load_labelled([write(tmp_path / "n.csv", "x,label\n1,0\n2,3\n3,-1\n")]).frame
    assert numeric["label"].to_list() == [0, 1, 1]
    inferred = load_labelled([write(tmp_path / "b.csv", "x,label\n1,true\n2,false\n")]).frame
    assert inferred["label"].to_list() == [1, 0]


def test_explicit_features_and_times_with_offsets(tmp_path: Path) -> None:
    path = write(
        tmp_path / "f.csv",
        "ts_text,a,b,label\n2024-01-01T02:00:00+02:00,1,5,0\n2024-01-01T01:30:00+00:00,2,6,0\n",
    )
    loaded = load_labelled([path], time="ts_text", features=["b"])
    assert loaded.features == ("b",)
    assert loaded.frame.columns == ["device_id", "ts", "b", "label"]
    assert loaded.frame["ts"].to_list() == [
        datetime(2024, 1, 1, 0, 0, tzinfo=UTC),
        datetime(2024, 1, 1, 1, 30, tzinfo=UTC),
    ]


def test_unix_seconds_and_missing_values(tmp_path: Path) -> None:
    path = write(tmp_path / "u.csv", "t,x,label\n1700000060,NaN,0\n1700000000,1.5,1\n1700000030,,0\n")
    frame = load_labelled([path], time="t").frame
    assert frame["ts"][0] == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert frame["x"].to_list() == [1.5, None, None]


def test_event_ids_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "x,label,event\n1,0,\n2,1,7\n3,1,7\n")
    frame = load_labelled([path], event="event").frame
    assert frame.columns == ["device_id", "row", "x", "label", "event_id"]
    assert frame["event_id"].to_list() == [None, 7, 7]


@pytest.mark.parametrize(
    ("text", "kwargs", "problem"),
    [
        ("x,label\n1,0\n", {"time": "when"}, r"missing columns \['when'\]"),
        ("x,y\n1,0\n", {}, r"missing columns \['label'\]"),
        ("x,name,label\n1,a,0\n", {"features": ["x", "name"]}, r"not numeric: name \(String\)"),
        (
            "when,x,label\n2024-01-01,1,0\nyesterday,2,0\n",
            {"time": "when"},
            r"1 values are not times.*yesterday",
        ),
        ("when,x,label\nsoon,1,0\n", {"time": "when"}, "cannot parse time column 'when'"),
        ("x,label\n1,maybe\n", {}, r"neither booleans nor numbers.*maybe"),
        ("x,label\n1,\n", {}, "1 empty values"),
        ("x,label\n", {}, "header but no rows"),
        ("", {}, "the file is empty"),
    ],
)
def test_clear_errors_name_the_file(tmp_path: Path, text: str, kwargs: dict, problem: str) -> None:
    path = write(tmp_path / "broken.csv", text)
    with pytest.raises(ValueError, match=problem) as error:
        load_labelled([path], **kwargs)
    assert "broken.csv" in str(error.value)


def test_no_numeric_columns_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no numeric feature columns"):
        load_labelled([write(tmp_path / "s.csv", "name,label\na,0\n")])
    with pytest.raises(ValueError, match="no such file or folder"):
        load_labelled([tmp_path / "absent"])
    with pytest.raises(ValueError, match="not a CSV or Parquet file"):
        load_labelled([write(tmp_path / "x.json", "{}")])
    with pytest.raises(ValueError, match="collide"):
        load_labelled([write(tmp_path / "c.csv", "x,label\n1,0\n")], features=["label"])


def test_files_that_would_name_the_same_device_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "m1.csv", "x,label\n1,0\n")
    pl.DataFrame({"x": [2.0], "label": [0]}).write_parquet(tmp_path / "m1.parquet")
    with pytest.raises(ValueError, match="same device 'm1'"):
        load_labelled([tmp_path])


def test_a_feature_missing_from_one_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "x,y,label\n1,2,0\n")
    write(tmp_path / "b.csv", "x,label\n1,0\n")
    with pytest.raises(ValueError, match=r"b.csv: missing columns \['y'\]"):
        load_labelled([tmp_path])


def series(counts: dict[str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "device_id": [d for d, n in counts.items() for _ in range(n)],
            "row": [i for n in counts.values() for i in range(n)],
        }
    )


def test_split_by_fraction_per_device() -> None:
    train, score = split_series(series({"a": 10, "b": 4, "c": 100}), train_fraction=0.29)
    assert train.group_by("device_id").len().sort("device_id")["len"].to_list() == [2, 1, 29]
    assert score.filter(pl.col("device_id") == "a")["row"].to_list() == list(range(2, 10))
    assert train.filter(pl.col("device_id") == "c")["row"].max() == 28


def test_split_by_rows_per_device() -> None:
    train, score = split_series(series({"a": 5, "b": 2}), train_rows=3)
    assert train["device_id"].to_list() == ["a", "a", "a", "b", "b"]
    assert score["row"].to_list() == [3, 4]
    assert score["device_id"].to_list() == ["a", "a"]


def test_split_needs_exactly_one_valid_option() -> None:
    frame = series({"a": 3})
    with pytest.raises(ValueError, match="exactly one"):
        split_series(frame)
    with pytest.raises(ValueError, match="exactly one"):
        split_series(frame, train_fraction=0.5, train_rows=1)
    with pytest.raises(ValueError, match="within"):
        split_series(frame, train_fraction=1.5)
    with pytest.raises(ValueError, match="integer >= 0"):
        split_series(frame, train_rows=-1)


def test_any_extension_is_a_csv_once_a_separator_is_given(tmp_path: Path) -> None:
    dat = write(tmp_path / "mote7.dat", "x y label\n1 2 0\n3 4 1\n")
    with pytest.raises(ValueError, match="once a separator is given"):
        load_labelled([dat])
    loaded = load_labelled([dat], separator=" ")
    assert loaded.frame["device_id"].to_list() == ["mote7", "mote7"]
    assert loaded.frame["y"].to_list() == [2.0, 4.0]
    tabbed = write(tmp_path / "t" / "mote8.txt", "x\ty\tlabel\n1\t2\t0\n")
    assert load_labelled([tabbed], separator="\\t").features == ("x", "y")  # backslash-t as typed
    with pytest.raises(ValueError, match="one character"):
        load_labelled([tabbed], separator="::")


def test_a_tsv_file_is_tab_separated_by_default(tmp_path: Path) -> None:
    loaded = load_labelled([write(tmp_path / "a.tsv", "x\tlabel\n1.5\t0\n")])
    assert loaded.frame["x"].to_list() == [1.5]


def test_quotes_around_values_do_not_stop_time_parsing(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.csv",
        "time,mote,temp,label\n'2004-02-29T00:00:18','1','20.5',0\n\"2004-02-29T00:00:48\",'1','21.0','1'\n",
    )
    loaded = load_labelled([path], time="time", device="mote")
    frame = loaded.frame
    assert frame["ts"].to_list() == [
        datetime(2004, 2, 29, 0, 0, 18, tzinfo=UTC),
        datetime(2004, 2, 29, 0, 0, 48, tzinfo=UTC),
    ]
    assert loaded.features == ("temp",)  # quoted throughout and numeric: a number column
    assert frame["temp"].to_list() == [20.5, 21.0]
    assert frame["device_id"].to_list() == ["1", "1"]  # a role column stays text
    assert frame["label"].to_list() == [0, 1]


def test_a_semicolon_file_read_with_the_default_separator_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "semi.csv", "x;y;label\n1;2;0\n")
    with pytest.raises(ValueError, match=r"semi.csv.*pass --sep ';'"):
        load_labelled([path])
    tabs = write(tmp_path / "tabs.csv", "x\ty\tlabel\n1\t2\t0\n")
    with pytest.raises(ValueError, match=r"pass --sep '\\t'"):
        load_labelled([tabs])


def test_the_header_is_checked_before_reading_also_gzipped(tmp_path: Path) -> None:
    """A ';' file with decimal commas reads with ',' as ragged rows (a polars error): the header says
    what it is before polars reads a line."""
    ragged = write(tmp_path / "dec.csv", "x;y;label\n1,5;2,5;0\n3;4;1\n")
    with pytest.raises(ValueError, match=r"holds no ',' but 2 ';'; it looks ';'-separated: pass --sep ';'"):
        load_labelled([ragged])
    packed = tmp_path / "pipes.csv.gz"
    packed.write_bytes(gzip.compress(b"x|y|label\n1|2|0\n"))
    with pytest.raises(ValueError, match=r"pass --sep '\|'"):
        load_labelled([packed])
    with pytest.raises(ValueError, match="decimal comma"):
        load_labelled([ragged], separator=";")
    with pytest.raises(ValueError, match="cannot separate fields"):
        load_labelled([ragged], separator='"')


def test_device_like_columns_are_named_like_a_device_and_repeat() -> None:
    frame = pl.DataFrame(
        {
            "Device-ID": ["a", "b"] * 5,  # case and punctuation ignored
            "mote": [1] * 10,  # one device: nothing hidden
            "id": list(range(10)),  # a row number
            "sensor_name": ["s1", "s2", None, "s3", "s1", "s2", "s3", "s1", "s2", "s3"],
            "temperature": [1.0, 2.0] * 5,  # repeats, but is not named like a device
        }
    )
    assert device_like_columns(frame) == {"Device-ID": ["a", "b"], "sensor_name": ["s1", "s2", "s3"]}
    assert device_like_columns(frame, exclude={"Device-ID"}) == {"sensor_name": ["s1", "s2", "s3"]}


def test_a_file_of_several_devices_needs_a_device_column_or_one_device_per_file(tmp_path: Path) -> None:
    path = write(tmp_path / "fleet.csv", "node_id,x,label\n" + "".join(f"n{i % 2},{i},0\n" for i in range(8)))
    with pytest.raises(
        ValueError, match=r"column 'node_id' looks like a device id \(2 distinct values: n0, n1\)"
    ):
        load_labelled([path])
    assert load_labelled([path], device="node_id").frame["device_id"].n_unique() == 2
    per_file = load_labelled([path], one_device_per_file=True)
    assert per_file.frame["device_id"].unique().to_list() == ["fleet"] and per_file.features == ("x",)
    with pytest.raises(ValueError, match="not both"):
        load_labelled([path], device="node_id", one_device_per_file=True)


def test_a_split_column_marks_the_train_part(tmp_path: Path) -> None:
    words = write(tmp_path / "w" / "a.csv", "x,part,label\n1,train,0\n2, Train ,0\n3,TEST,1\n")
    loaded = load_labelled([words], split="part")
    assert loaded.has_split and loaded.features == ("x",)  # the split column is no feature
    assert loaded.frame["is_train"].to_list() == [True, True, False]
    digits = write(tmp_path / "d" / "a.csv", "x,fold,label\n1,0,0\n2,1,0\n")
    assert load_labelled([digits], split="fold").frame["is_train"].to_list() == [True, False]
    for value in ("val", "2"):
        bad = write(tmp_path / f"bad-{value}" / "a.csv", f"x,part,label\n1,train,0\n2,{value},0\n")
        with pytest.raises(ValueError, match=rf"split column 'part' has 1 values .*'?{value}'?"):
            load_labelled([bad], split="part")


def test_feature_patterns_expand_to_the_numeric_columns_they_match(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "t,value,cmd_01,cmd_02,note,label\n0,1.0,0,1,a,0\n")
    assert load_labelled([path], features=["value", "cmd_*"]).features == ("value", "cmd_01", "cmd_02")
    with pytest.raises(ValueError, match="'ctl_\\*' matches no numeric column"):
        load_labelled([path], features=["ctl_*"])


def test_train_and_test_files_matched_by_file_name(tmp_path: Path) -> None:
    write(tmp_path / "train" / "A-1.csv", "v,extra,label\n1,9,0\n2,9,0\n")
    write(tmp_path / "train" / "A-2.csv", "v,extra,label\n5,9,0\n")
    write(tmp_path / "test" / "A-1.csv", "v,label\n3,1\n4,0\n")
    write(tmp_path / "test" / "B-9.csv", "v,extra,label\n7,9,0\n")
    with pytest.raises(ValueError, match=r"test/A-1.csv: missing columns \['extra'\]"):
        load_train_test([tmp_path / "train"], [tmp_path / "test"])  # the train part's features
    series, unmatched = load_train_test([tmp_path / "train"], [tmp_path / "test"], features=["v"])
    frame = series.frame
    assert unmatched == ["B-9"]
    assert frame["device_id"].to_list() == ["A-1"] * 4 + ["A-2", "B-9"]
    assert frame["row"].to_list() == [0, 1, 2, 3, 0, 0]  # the test rows follow the train rows
    assert frame["v"].to_list() == [1.0, 2.0, 3.0, 4.0, 5.0, 7.0]
    assert frame["is_train"].to_list() == [True, True, False, False, True, False]


def test_one_train_file_and_one_test_file_are_one_device(tmp_path: Path) -> None:
    train = write(tmp_path / "smap_train.csv", "when,v,label\n2024-01-02,1,0\n2024-01-03,2,0\n")
    test = write(tmp_path / "smap_test.csv", "when,v,label\n2024-01-01,3,1\n")
    series, unmatched = load_train_test([train], [test], time="when")
    assert unmatched == [] and set(series.frame["device_id"]) == {"smap_test"}
    assert series.frame["is_train"].to_list() == [True, True, False]  # train first, whatever the times
    with pytest.raises(ValueError, match="both train and test"):
        load_train_test([train], [train])
    with pytest.raises(ValueError, match="either separate train and test files or a split column"):
        load_train_test([train], [test], split="part")


def test_train_and_test_matched_by_device_column_and_no_match_is_an_error(tmp_path: Path) -> None:
    pl.DataFrame({"device_id": ["P-1", "P-2"], "value": [0.1, 0.2], "label": [0, 0]}).write_parquet(
        tmp_path / "train.parquet"
    )
    pl.DataFrame({"device_id": ["P-2", "P-2"], "value": [0.3, 0.4], "label": [0, 1]}).write_parquet(
        tmp_path / "test.parquet"
    )
    series, unmatched = load_train_test(
        [tmp_path / "train.parquet"], [tmp_path / "test.parquet"], device="device_id"
    )
    assert unmatched == []
    assert series.frame.filter(pl.col("device_id") == "P-2")["value"].to_list() == [0.2, 0.3, 0.4]
    write(tmp_path / "a" / "x.csv", "v,label\n1,0\n")
    write(tmp_path / "a" / "y.csv", "v,label\n1,0\n")
    write(tmp_path / "b" / "z.csv", "v,label\n1,0\n")
    write(tmp_path / "b" / "w.csv", "v,label\n1,0\n")
    with pytest.raises(ValueError, match="no test device has a train part"):
        load_train_test([tmp_path / "a"], [tmp_path / "b"])
