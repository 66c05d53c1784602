"""Injected anomalies: labels say exactly what was changed, and nothing else is."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flead.datasets.inject import (
    ANOMALY_TYPES,
    EVENTS_FILE,
    EVENTS_SCHEMA,
    LABELLED_SCHEMA,
    InjectionConfig,
    LabelledData,
    feature_scales,
    inject_anomalies,
    inject_lake,
    read_lake_days,
)
from flead.datasets.synthetic import generate_fleet
from flead.schema import LAKE_SCHEMA, MEASUREMENTS

BUSY = InjectionConfig(
    spike_rate=2.0,
    stuck_at_rate=1.0,
    drift_rate=1.0,
    noise_burst_rate=1.0,
    dropout_rate=1.0,
    bias_rate=1.0,
    noise_increase_rate=1.0,
    max_features=2,
)


def lake_rows(paths: tuple[Path, ...]) -> pl.DataFrame:
    """A stand-in for the real parser: generated lines as LAKE_SCHEMA rows with simple flags."""
    lines = pl.concat([pl.read_csv(p, has_header=False, new_columns=["line"], separator="\t") for p in paths])
    get = pl.col("f").list.get
    rows = lines.select(pl.col("line").str.split(" ").alias("f")).select(
        pl.format("mote-{}", get(3).str.zfill(2)).alias("device_id"),
        (get(0) + " " + get(1))
        .str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", time_zone="UTC")
        .alias("ts"),
        get(2).cast(pl.Int64).alias("epoch"),
        *(get(i + 4, null_on_oob=True).cast(pl.Float64).alias(m) for i, m in enumerate(MEASUREMENTS)),
    )
    outside = (
        ~pl.col("temperature").is_between(-10, 60)
        | ~pl.col("humidity").is_between(0, 100)
        | ~pl.col("voltage").is_between(1.5, 3.5)
    )
    return rows.with_columns(
        out_of_range=outside.fill_null(False),
        low_battery=(pl.col("voltage") < 2.4).fill_null(False),
        missing_fields=pl.any_horizontal(pl.col(m).is_null() for m in MEASUREMENTS),
    ).select(list(LAKE_SCHEMA))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    fleet = generate_fleet(
        tmp_path_factory.mktemp("raw"), n_devices=8, days=6, seed=11, missing_field_rate=0.01
    )
    rows = lake_rows(fleet.paths)
    # Shuffled, so the tests also show that the input's row order is kept.
    return rows.sample(fraction=1.0, shuffle=True, seed=5)


@pytest.fixture(scope="module")
def injected(source: pl.DataFrame) -> LabelledData:
    return inject_anomalies(source, BUSY, seed=1)


def removed_by_dropouts(source: pl.DataFrame, events: pl.DataFrame) -> pl.Series:
    gone = pl.lit(False)
    for e in events.filter(pl.col("anomaly_type") == "dropout").iter_rows(named=True):
        gone = gone | (
            (pl.col("device_id") == e["device_id"]) & pl.col("ts").is_between(e["start_ts"], e["end_ts"])
        )
    return source.select(gone.alias("gone"))["gone"]


def test_sanity_of_the_fixture(source: pl.DataFrame, injected: LabelledData) -> None:
    assert source["out_of_range"].sum() > 500  # failing motes give plenty of rows never to target
    assert source["missing_fields"].sum() > 0
    counts = dict(injected.events.group_by("anomaly_type").len().iter_rows())
    assert set(counts) == set(ANOMALY_TYPES)
    assert all(n >= 10 for n in counts.values())
    assert injected.events["feature"].drop_nulls().str.contains(",").any()  # multi-feature events too


def test_schemas(injected: LabelledData) -> None:
    assert injected.readings.schema == pl.Schema(LABELLED_SCHEMA)
    assert injected.events.schema == pl.Schema(EVENTS_SCHEMA)
    assert injected.events["event_id"].to_list() == list(range(injected.events.height))


def test_untouched_rows_are_bit_identical_and_in_input_order(
    source: pl.DataFrame, injected: LabelledData
) -> None:
    kept = source.filter(~removed_by_dropouts(source, injected.events))
    assert kept.height == injected.readings.height
    out = injected.readings
    normal = out["label"] == 0
    assert_frame_equal(out.filter(normal).select(list(LAKE_SCHEMA)), kept.filter(normal), check_exact=True)
    assert out["anomaly_type"].filter(normal).null_count() == normal.sum()
    assert out["event_id"].filter(normal).null_count() == normal.sum()
    # Labelled rows keep their identity and flags; only the hit measurements change.
    fixed = ["device_id", "ts", "epoch", "out_of_range", "low_battery", "missing_fields"]
    assert_frame_equal(out.select(fixed), kept.select(fixed), check_exact=True)


def test_labels_match_each_event(source: pl.DataFrame, injected: LabelledData) -> None:
    scales = {
        row[0]: dict(zip(MEASUREMENTS, row[1:], strict=True)) for row in feature_scales(source).iter_rows()
    }
    src = source.partition_by("device_id", as_dict=True)
    out = injected.readings.partition_by("device_id", as_dict=True)
    labelled_rows = 0
    for e in injected.events.iter_rows(named=True):
        key = (e["device_id"],)
        window = pl.col("ts").is_between(e["start_ts"], e["end_ts"])
        before = src[key].filter(window).sort("ts")
        after = out[key].filter(window).sort("ts")
        assert before.height == e["n_points"]
        if e["anomaly_type"] == "dropout":
            assert after.height == 0
            assert e["feature"] is None and e["magnitude"] is None
            following = out[key].filter(pl.col("ts") > e["end_ts"]).sort("ts").head(1)
            assert following["event_id"].to_list() == [e["event_id"]]
            assert following["anomaly_type"].to_list() == ["dropout"]
            assert_frame_equal(  # the reading after the gap carries the label, its values untouched
                following.select(list(LAKE_SCHEMA)),
                src[key].filter(pl.col("ts") > e["end_ts"]).sort("ts").head(1),
                check_exact=True,
            )
            labelled_rows += 1
            continue
        assert (after["label"] == 1).all()
        assert (after["event_id"] == e["event_id"]).all()
        assert (after["anomaly_type"] == e["anomaly_type"]).all()
        labelled_rows += after.height
        hit = e["feature"].split(",")
        for feature in MEASUREMENTS:
            if feature not in hit:
                assert after[feature].equals(before[feature])
                continue
            old, new = before[feature].to_numpy(), after[feature].to_numpy()
            step = (e["magnitude"] or 0.0) * scales[e["device_id"]][feature]
            check_change(e["anomaly_type"], old, new, step)
    assert injected.readings["label"].sum() == labelled_rows


def check_change(kind: str, old: np.ndarray, new: np.ndarray, step: float) -> None:
    delta = new - old
    if kind == "spike":
        assert np.all(np.abs(delta) >= step * (1 - 1e-9))
        assert np.unique(np.sign(delta)).size == 1
    elif kind == "stuck_at":
        assert np.all(new == old[0])
        assert old.size >= 20
    elif kind == "drift":
        size = np.abs(delta)
        assert np.all(np.diff(size) > 0)  # the offset grows every reading
        assert np.unique(np.sign(delta)).size == 1
        assert size[-1] == pytest.approx(step)
    elif kind == "noise_burst":
        assert delta.std() > 0.4 * step
        assert new.std() > old.std()
    elif kind == "bias":
        assert np.allclose(np.abs(delta), step)  # one offset for the whole stretch
        assert np.unique(np.sign(delta)).size == 1
        assert old.size >= 120
    elif kind == "noise_increase":
        half = delta.size // 2
        assert np.abs(delta[half:]).mean() > np.abs(delta[:half]).mean()  # the noise grows
        assert delta.std() > 0.2 * step
    else:
        raise AssertionError(kind)


def test_spike_magnitude_is_in_device_stds(source: pl.DataFrame, injected: LabelledData) -> None:
    spikes = injected.events.filter(pl.col("anomaly_type") == "spike")
    low, high = BUSY.spike_magnitude
    assert spikes["magnitude"].is_between(low, high).all()
    assert spikes["n_points"].is_between(*BUSY.spike_length).all()
    scales = feature_scales(source)
    assert (scales.select(MEASUREMENTS).to_numpy() > 0).all()


def test_events_never_overlap_on_a_device(injected: LabelledData) -> None:
    for (_,), events in injected.events.partition_by("device_id", as_dict=True).items():
        events = events.sort("start_ts")
        assert (events["start_ts"].to_numpy()[1:] > events["end_ts"].to_numpy()[:-1]).all()
    ids = injected.readings["event_id"].drop_nulls()
    dropouts = injected.events.filter(pl.col("anomaly_type") == "dropout")
    # One label per non-dropout point, one marker reading per dropout that has a next reading.
    assert (
        ids.len()
        == injected.events.filter(pl.col("anomaly_type") != "dropout")["n_points"].sum() + dropouts.height
    )


def test_out_of_range_rows_are_never_targeted(source: pl.DataFrame, injected: LabelledData) -> None:
    out = injected.readings
    assert out.filter(pl.col("out_of_range"))["label"].sum() == 0
    gone = source.filter(removed_by_dropouts(source, injected.events))
    assert not gone["out_of_range"].any()
    # Missing values are never hit either: the hit features of labelled rows are all present.
    for e in injected.events.filter(pl.col("feature").is_not_null()).iter_rows(named=True):
        rows = out.filter(pl.col("event_id") == e["event_id"])
        assert rows.select(e["feature"].split(",")).null_count().sum_horizontal().item() == 0


def test_deterministic_for_a_seed(source: pl.DataFrame, injected: LabelledData) -> None:
    again = inject_anomalies(source, BUSY, seed=1)
    assert_frame_equal(again.readings, injected.readings, check_exact=True)
    assert_frame_equal(again.events, injected.events, check_exact=True)
    other = inject_anomalies(source, BUSY, seed=2)
    assert not other.events.equals(injected.events)


def test_a_devices_events_do_not_depend_on_other_devices(
    source: pl.DataFrame, injected: LabelledData
) -> None:
    alone = inject_anomalies(source.filter(pl.col("device_id") == "mote-03"), BUSY, seed=1)
    expected = injected.events.filter(pl.col("device_id") == "mote-03")
    assert_frame_equal(alone.events.drop("event_id"), expected.drop("event_id"), check_exact=True)


def test_input_frame_is_not_changed(source: pl.DataFrame) -> None:
    copy = source.clone()
    inject_anomalies(source, BUSY, seed=3)
    assert_frame_equal(source, copy, check_exact=True)


def test_zero_rates_inject_nothing(source: pl.DataFrame) -> None:
    none = InjectionConfig(**{f"{kind}_rate": 0 for kind in ANOMALY_TYPES})
    result = inject_anomalies(source, none)
    assert result.events.height == 0
    assert result.readings["label"].sum() == 0
    assert_frame_equal(result.readings.select(list(LAKE_SCHEMA)), source, check_exact=True)


def test_a_crowded_device_still_gets_disjoint_events(source: pl.DataFrame) -> None:
    crowded = InjectionConfig(
        **{f"{kind}_rate": 0 for kind in ANOMALY_TYPES if kind != "stuck_at"}, stuck_at_rate=400.0
    )
    one = source.filter(pl.col("device_id") == "mote-02")
    result = inject_anomalies(one, crowded)
    events = result.events.sort("start_ts")
    assert events.height > 20  # it filled up and stopped, without overlapping
    assert (events["start_ts"].to_numpy()[1:] > events["end_ts"].to_numpy()[:-1]).all()
    assert result.readings["label"].sum() == events["n_points"].sum()


def test_only_the_configured_features_are_hit(source: pl.DataFrame) -> None:
    temperature_only = InjectionConfig(features=("temperature",), dropout_rate=0)
    result = inject_anomalies(source, temperature_only)
    assert set(result.events["feature"]) == {"temperature"}
    for feature in ("humidity", "light", "voltage"):
        assert result.readings[feature].equals(source[feature])


def test_rejects_bad_config_and_input(source: pl.DataFrame) -> None:
    with pytest.raises(ValueError):
        InjectionConfig(spike_rate=-1)
    with pytest.raises(ValueError):
        InjectionConfig(drift_length=(10, 5))
    with pytest.raises(ValueError, match=r"features \['pressure'\] are not features of the fleet schema"):
        inject_anomalies(source, InjectionConfig(features=("pressure",)))
    with pytest.raises(ValueError, match=r"max_features must be within 1\.\.4"):
        inject_anomalies(source, InjectionConfig(max_features=5))
    with pytest.raises(ValueError):
        InjectionConfig(features=("temperature",), max_features=2)
    with pytest.raises(ValueError):
        inject_anomalies(source.drop("out_of_range"))


def write_lake(rows: pl.DataFrame, root: Path) -> None:
    for (day,), part in rows.with_columns(d=pl.col("ts").dt.date()).partition_by("d", as_dict=True).items():
        (root / f"date={day}").mkdir(parents=True)
        part.drop("d").sort("ts", "device_id").write_parquet(root / f"date={day}" / "part-0.parquet")


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_labelled_set_is_written_beside_the_untouched_lake(source: pl.DataFrame, tmp_path: Path) -> None:
    lake, out = tmp_path / "lake", tmp_path / "labelled"
    write_lake(source, lake)
    before = digest(lake)
    days = ["2004-02-29", "2004-03-01", "2004-03-02"]

    result = inject_lake(lake, days, out, BUSY, seed=4)

    assert digest(lake) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [EVENTS_FILE, "_fleet", *(f"date={d}" for d in days)]
    )  # _fleet: its schema
    for d in days:
        assert [p.name for p in (out / f"date={d}").iterdir()] == ["part-0.parquet"]
        part = pl.read_parquet(out / f"date={d}" / "part-0.parquet")
        assert part.schema == pl.Schema(LABELLED_SCHEMA)
        assert (part["ts"].dt.date() == date.fromisoformat(d)).all()
    written = pl.read_parquet(out / "date=*" / "part-0.parquet", hive_partitioning=False)
    assert_frame_equal(
        written.sort("device_id", "ts"), result.readings.sort("device_id", "ts"), check_exact=True
    )
    assert_frame_equal(pl.read_parquet(out / EVENTS_FILE), result.events, check_exact=True)
    assert read_lake_days(lake, days)["ts"].dt.date().unique().sort().cast(pl.String).to_list() == days
    with pytest.raises(ValueError):
        inject_lake(lake, days, lake, BUSY)
    assert digest(lake) == before
